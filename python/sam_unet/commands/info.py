"""``sam-unet info``: what was compiled in and what this machine offers."""

from __future__ import annotations

import argparse
import json

EXAMPLES = """\
  sam-unet info          CUDA compiled in and visible, torch, ONNX Runtime, TensorRT versions
  sam-unet info --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from sam_unet import __version__
    from sam_unet._native import build_info

    info = {"sam_unet": __version__, "native": build_info()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        info["torch"] = None
    for name in ("onnx", "onnxruntime", "tensorrt", "cupy"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absence or a broken install both mean "not usable"
            info[name] = None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:12s} {v}")
    return 0

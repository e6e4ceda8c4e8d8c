"""``sam-unet export onnx``: a checkpoint -> ONNX (opset >= 17, dynamic batch, metadata).

    sam-unet export onnx --checkpoint CKPT [--variant res34] -o model.onnx [--verify]
    sam-unet export onnx --random-init --variant tiny -o tiny.onnx     # testing only
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx"], help="output format")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="SAM-UNet checkpoint (.pt)")
    src.add_argument(
        "--random-init",
        action="store_true",
        help="export a randomly initialised model (TESTING ONLY: its masks are meaningless)",
    )
    parser.add_argument("--variant", default=None,
                        help="res34 | res50 | tiny (default: from the checkpoint; res34 with "
                             "--random-init)")
    parser.add_argument("-o", "--output", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    parser.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"],
                        help="torch.onnx exporter (auto: torchscript, then dynamo)")
    parser.add_argument("--verify", action="store_true",
                        help="run the graph in ONNX Runtime (CPU) on random inputs and fail if "
                             "the logits differ from PyTorch by more than --rtol")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="relative error limit for --verify (max|diff|/max|ref|)")
    parser.add_argument("--verify-batches", default="1,3",
                        help="batch sizes --verify runs (comma separated; default 1,3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init and --verify")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"--verify-batches {text!r}: expected positive integers like 1,3,8")
    return values


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sam_unet.export.onnx import export_onnx, sha256_file, verify_onnx

    if args.opset < 17:
        raise ValueError(f"--opset {args.opset}: must be >= 17 (LayerNormalization)")
    batches = _batches(args.verify_batches)
    sha = None
    if args.random_init:
        from sam_unet.models.build import build_model

        torch.manual_seed(args.seed)
        variant = args.variant or "res34"
        model = build_model(variant)
        print(f"warning: exporting a RANDOMLY INITIALISED {variant} model (--random-init); "
              "its outputs are meaningless", file=sys.stderr)
    else:
        ckpt = Path(args.checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: checkpoint not found")
        from sam_unet.checkpoints import load_model

        model = load_model(ckpt, variant=args.variant, map_location="cpu")
        sha = sha256_file(ckpt)
    model = model.eval().float()
    t0 = time.perf_counter()
    out = export_onnx(model, args.output, checkpoint_sha256=sha, opset=args.opset,
                      exporter=args.exporter)
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB, {getattr(model, 'variant', '?')}) in "
          f"{time.perf_counter() - t0:.1f} s")
    if args.verify:
        try:
            report = verify_onnx(model, out, batch_sizes=batches, rtol=args.rtol, seed=args.seed)
        except Exception:
            # A graph that fails its check is not left behind as if it were good.
            out.unlink(missing_ok=True)
            raise
        print(f"verify: {report} -- OK")
    return 0

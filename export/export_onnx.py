#!/usr/bin/env python
"""Export a SAM-UNet checkpoint to ONNX and check it against PyTorch.

    python export/export_onnx.py CKPT model.onnx [--variant res34] [--no-verify]

The same as ``sam-unet export onnx --checkpoint CKPT -o model.onnx --verify``, as a script to
copy and adapt (it only calls :mod:`sam_unet.export.onnx`).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--variant", default=None)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-verify", action="store_true")
    args = p.parse_args(argv)

    from sam_unet.checkpoints import load_model
    from sam_unet.export.onnx import export_onnx, read_metadata, verify_onnx

    model = load_model(args.checkpoint, variant=args.variant)
    path = export_onnx(model, args.output, checkpoint=args.checkpoint, opset=args.opset)
    print(f"wrote {path}")
    for key, value in read_metadata(path).items():
        print(f"  {key}: {value}")
    if not args.no_verify:
        print(verify_onnx(model, path, batch_sizes=(1, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

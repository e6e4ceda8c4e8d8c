#!/usr/bin/env python
"""Export a SAM-UNet checkpoint to ONNX and check it against PyTorch in ONNX Runtime:
``sam-unet export onnx --checkpoint CKPT -o OUT.onnx --verify``.

    python export/export_onnx.py CKPT model.onnx [sam-unet export options, e.g. --opset 18]
"""

import sys

from sam_unet.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    checkpoint, output, *rest = sys.argv[1:]
    sys.exit(main(["export", "onnx", "--checkpoint", checkpoint, "-o", output, "--verify", *rest]))

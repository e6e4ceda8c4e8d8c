#!/usr/bin/env python
"""Build (or reuse) a TensorRT FP16 engine for an exported SAM-UNet ONNX file:
``sam-unet build-engine``. Needs TensorRT (``pip install "sam-unet[trt]"``) and a GPU.

    python export/build_engine.py model.onnx -o model.engine [--profiles 1:1:1,1:32:64]
        [--timing-cache trt.cache]          (any sam-unet build-engine option)

Time the engine with: sam-unet bench --parts model --configs tensorrt:fp16 --engine model.engine
"""

import sys

from sam_unet.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-engine", *sys.argv[1:]]))

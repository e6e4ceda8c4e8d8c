"""export: ONNX export with a parity check (onnx.py) and TensorRT engines (tensorrt.py).

Imported lazily: ``from sam_unet.export import export_onnx`` loads only the ONNX part, and
nothing here imports TensorRT until an engine is built or loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_onnx": "sam_unet.export.onnx",
    "verify_onnx": "sam_unet.export.onnx",
    "read_metadata": "sam_unet.export.onnx",
    "OnnxExportError": "sam_unet.export.onnx",
    "OnnxParityError": "sam_unet.export.onnx",
    "InvalidOnnxError": "sam_unet.export.onnx",
    "build_engine": "sam_unet.export.tensorrt",
    "build_or_reuse": "sam_unet.export.tensorrt",
    "load_engine": "sam_unet.export.tensorrt",
    "parse_profiles": "sam_unet.export.tensorrt",
    "EngineCache": "sam_unet.export.tensorrt",
    "EngineSpec": "sam_unet.export.tensorrt",
    "EngineMismatchError": "sam_unet.export.tensorrt",
    "TensorRTUnavailableError": "sam_unet.export.tensorrt",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sam_unet.export' has no attribute {name!r}")

"""export: ONNX export with a parity check (onnx.py) and the TensorRT engine builder
(tensorrt_build.py) with its engine cache (engine_cache.py); loading an engine is runtime's job
(sam_unet.runtime.tensorrt_engine).

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
    "build_engine": "sam_unet.export.tensorrt_build",
    "EngineBuildError": "sam_unet.export.tensorrt_build",
    "build_or_reuse": "sam_unet.export.engine_cache",
    "build_engine_cached": "sam_unet.export.engine_cache",
    "EngineCache": "sam_unet.export.engine_cache",
    "parse_profiles": "sam_unet.runtime.tensorrt_profiles",
    "EngineSpec": "sam_unet.runtime.tensorrt_sidecar",
    "EngineMismatchError": "sam_unet.runtime.tensorrt_sidecar",
    "TensorRTUnavailableError": "sam_unet.runtime.tensorrt_engine",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sam_unet.export' has no attribute {name!r}")

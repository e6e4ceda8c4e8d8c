"""The TensorRT export API in one import, kept for existing callers; new code imports from
the module that does the job:

- :mod:`sam_unet.export.tensorrt_build`: ONNX -> engine (``build_engine``, ``make_spec``)
- :mod:`sam_unet.export.engine_cache`: reuse by spec key (``build_or_reuse``,
  ``build_engine_cached``, ``EngineCache``)
- :mod:`sam_unet.export.profile_shapes`, :mod:`sam_unet.export.fp32_layers`: profiles and
  precision of the network being built
- :mod:`sam_unet.runtime.tensorrt_profiles`, :mod:`sam_unet.runtime.tensorrt_sidecar`,
  :mod:`sam_unet.runtime.tensorrt_engine`: batch ranges, an engine's identity and sidecar,
  loading an engine (runtime's job).
"""

from __future__ import annotations

from sam_unet.export.engine_cache import (
    EngineCache,
    build_engine_cached,
    build_or_reuse,
    default_cache_dir,
)
from sam_unet.export.tensorrt_build import EngineBuildError, build_engine, make_spec
from sam_unet.runtime.tensorrt_engine import TensorRTUnavailableError, import_tensorrt
from sam_unet.runtime.tensorrt_profiles import DEFAULT_PROFILES, format_profiles, parse_profiles
from sam_unet.runtime.tensorrt_sidecar import EngineMismatchError, EngineSpec, sidecar_path

__all__ = [
    "DEFAULT_PROFILES",
    "EngineBuildError",
    "EngineCache",
    "EngineMismatchError",
    "EngineSpec",
    "TensorRTUnavailableError",
    "build_engine",
    "build_engine_cached",
    "build_or_reuse",
    "default_cache_dir",
    "format_profiles",
    "import_tensorrt",
    "make_spec",
    "parse_profiles",
    "sidecar_path",
]

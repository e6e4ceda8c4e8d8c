"""Build an engine once, reuse it after: engines on disk named by their spec's key.

The key covers the ONNX file's sha256, the GPU name and compute capability, the TensorRT
version, the profiles and the precision (:meth:`EngineSpec.key`), so the same ONNX file on the
same GPU model with the same TensorRT and options maps to the same file. The cache folder is
``$SAM_UNET_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/sam_unet/engines`` (``~/.cache/...``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam_unet.export.tensorrt_build import build_engine, make_spec
from sam_unet.runtime.tensorrt_engine import current_gpu, import_tensorrt
from sam_unet.runtime.tensorrt_profiles import DEFAULT_PROFILES
from sam_unet.runtime.tensorrt_sidecar import DEFAULT_FP32_LAYER_TYPES, EngineSpec, read_sidecar

ENGINE_CACHE_ENV = "SAM_UNET_ENGINE_CACHE"


def default_cache_dir() -> Path:
    env = os.environ.get(ENGINE_CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sam_unet" / "engines"


@dataclass
class EngineCache:
    """Engines on disk under ``root``, named ``sam_unet-<key>.engine`` by
    :meth:`EngineSpec.key`, each with its sidecar."""

    root: Path = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def path_for(self, spec: EngineSpec) -> Path:
        return self.root / f"sam_unet-{spec.key()}.engine"

    def lookup(self, spec: EngineSpec) -> Path | None:
        """The cached engine for ``spec`` if it and a matching sidecar exist."""
        path = self.path_for(spec)
        if not path.is_file():
            return None
        try:
            recorded, _ = read_sidecar(path)
        except (FileNotFoundError, ValueError):
            return None
        return path if recorded == spec else None


def build_or_reuse(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    cache: EngineCache | None = None,
    force: bool = False,
    device: int = 0,
    **build_kwargs: Any,
) -> tuple[Path, EngineSpec, bool]:
    """Build the engine unless one for the same spec exists (at ``engine_path``, or in the
    engine cache when no path is given). Returns (path, spec, built).

    ``build_kwargs`` go to :func:`~sam_unet.export.tensorrt_build.build_engine`."""
    trt = import_tensorrt()
    spec = make_spec(
        onnx_path,
        gpu=current_gpu(device),
        tensorrt_version=trt.__version__,
        profiles=build_kwargs.get("profiles", DEFAULT_PROFILES),
        fp16=build_kwargs.get("fp16", True),
        fp32_layers=build_kwargs.get("fp32_layers", DEFAULT_FP32_LAYER_TYPES),
    )
    if engine_path is None:
        cache = cache or EngineCache()
        engine_path = cache.path_for(spec)
    engine_path = Path(engine_path)
    if not force and engine_path.is_file():
        try:
            recorded, _ = read_sidecar(engine_path)
        except (FileNotFoundError, ValueError):
            recorded = None
        if recorded == spec:
            return engine_path, spec, False
    built = build_engine(onnx_path, engine_path, device=device, **build_kwargs)
    return engine_path, built, True


def build_engine_cached(
    onnx_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: int = 0,
    **build_kwargs: Any,
) -> Path:
    """The engine for ``onnx_path`` on this GPU from the engine cache, built on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`; the timing cache is
    ``<cache_dir>/timing.cache`` unless ``timing_cache`` is given; ``build_kwargs`` go to
    :func:`~sam_unet.export.tensorrt_build.build_engine` (profiles, fp16, ...)."""
    cache = EngineCache(Path(cache_dir)) if cache_dir else EngineCache()
    if "timing_cache" not in build_kwargs:
        build_kwargs["timing_cache"] = cache.root / "timing.cache"
    path, _, _ = build_or_reuse(onnx_path, None, cache=cache, device=device, **build_kwargs)
    return path

"""ONNX -> TensorRT engine (TensorRT 10 Python API): parse, precision, profiles, timing cache,
build, then write the engine and its sidecar atomically.

The parts that decide what to build are plain Python in their own modules: batch ranges
(:mod:`sam_unet.runtime.tensorrt_profiles`), their shapes for each graph input
(:mod:`sam_unet.export.profile_shapes`), the layers kept in FP32
(:mod:`sam_unet.export.fp32_layers`) and the engine's identity and sidecar
(:mod:`sam_unet.runtime.tensorrt_sidecar`). Reusing engines: :mod:`sam_unet.export.engine_cache`.
``tensorrt`` is imported only when building; without it :func:`build_engine` raises
:class:`~sam_unet.runtime.tensorrt_engine.TensorRTUnavailableError` with the install hint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam_unet.export.fp32_layers import pin_fp32_layers
from sam_unet.export.onnx import sha256_file
from sam_unet.export.profile_shapes import add_optimization_profiles
from sam_unet.runtime.tensorrt_engine import current_gpu, import_tensorrt
from sam_unet.runtime.tensorrt_profiles import DEFAULT_PROFILES, Profile, parse_profiles
from sam_unet.runtime.tensorrt_sidecar import (
    DEFAULT_FP32_LAYER_TYPES,
    EngineSpec,
    GpuIdentity,
    write_sidecar,
)


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build the engine."""


def make_spec(
    onnx_path: str | os.PathLike,
    *,
    gpu: GpuIdentity,
    tensorrt_version: str,
    profiles: str | Sequence[Profile] = DEFAULT_PROFILES,
    fp16: bool = True,
    fp32_layers: Sequence[str] = DEFAULT_FP32_LAYER_TYPES,
    onnx_sha256: str | None = None,
) -> EngineSpec:
    """The spec an engine built from ``onnx_path`` with these options on ``gpu`` will have."""
    return EngineSpec(
        onnx_sha256=onnx_sha256 or sha256_file(onnx_path),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt_version=tensorrt_version,
        profiles=parse_profiles(profiles),
        fp16=fp16,
        fp32_layers=tuple(fp32_layers) if fp16 else (),
    )


def _network_flags(trt: Any) -> int:
    major = int(str(trt.__version__).split(".")[0])
    if major >= 10:
        return 0  # explicit batch is the only mode (the flag is deprecated)
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"{onnx_path}: TensorRT could not parse the ONNX file:\n  "
            + "\n  ".join(errors or ["(no error reported)"])
        )
    return network


def _set_fp16(trt: Any, config: Any, network: Any, fp32_layers: Sequence[str],
              fp32_name_patterns: Sequence[str]) -> list[str]:
    if not hasattr(trt.BuilderFlag, "FP16"):
        raise EngineBuildError(
            f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (weak typing removed); "
            "build with --no-fp16 or use TensorRT 10"
        )
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pin_fp32_layers(trt, network, fp32_layers, fp32_name_patterns)


def _attach_timing_cache(trt: Any, config: Any, logger: Any, path: Path | None) -> None:
    """Start from the cache file when there is one; a cache from another TensorRT version or
    GPU is replaced by a fresh one (it is rewritten after the build)."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        logger.log(trt.Logger.WARNING, f"timing cache {path} does not match; starting anew")
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _onnx_model_info(onnx_path: Path) -> str | None:
    """The ONNX file's ``sam_unet.model_info`` JSON, kept in the sidecar so that an engine
    knows how its model is fed after the ONNX file is gone."""
    from sam_unet.export.onnx import read_metadata
    from sam_unet.model_info import ONNX_METADATA_KEY

    try:
        return read_metadata(onnx_path).get(ONNX_METADATA_KEY)
    except (OSError, ValueError):
        return None


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    fp16: bool = True,
    profiles: str | Sequence[Profile] = DEFAULT_PROFILES,
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float | None = None,
    fp32_layers: Sequence[str] = DEFAULT_FP32_LAYER_TYPES,
    fp32_name_patterns: Sequence[str] = (),
    device: int = 0,
    verbose: bool = False,
) -> EngineSpec:
    """Parse ``onnx_path``, build a (FP16) engine with one optimisation profile per batch range
    (every graph input batch-first, other dims fixed), write it atomically to ``engine_path``
    with its sidecar, and update the timing cache file. Returns the spec."""
    from sam_unet.atomic import write_bytes_atomic

    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    profiles = parse_profiles(profiles)
    import torch

    gpu = current_gpu(device)
    torch.cuda.set_device(device)
    spec = make_spec(onnx_path, gpu=gpu, tensorrt_version=trt.__version__, profiles=profiles,
                     fp16=fp16, fp32_layers=fp32_layers)

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse_onnx(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    pinned = _set_fp16(trt, config, network, fp32_layers, fp32_name_patterns) if fp16 else []
    add_optimization_profiles(builder, network, config, profiles, source=str(onnx_path))
    cache_path = Path(timing_cache) if timing_cache else None
    _attach_timing_cache(trt, config, logger, cache_path)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"{onnx_path}: TensorRT failed to build the engine (see the TensorRT log above)"
        )
    write_bytes_atomic(engine_path, memoryview(plan))
    write_sidecar(
        engine_path,
        spec,
        onnx_path=str(onnx_path.resolve()),
        model_info=_onnx_model_info(onnx_path),
        workspace_gib=workspace_gib,
        fp32_pinned_layers=len(pinned),
        fp32_name_patterns=list(fp32_name_patterns) or None,
    )
    if cache_path is not None:
        write_bytes_atomic(cache_path, memoryview(config.get_timing_cache().serialize()))
    return spec

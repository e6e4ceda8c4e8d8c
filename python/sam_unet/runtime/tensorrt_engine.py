"""Load a serialised TensorRT engine: check its sidecar against this GPU and TensorRT, then
deserialise it (TensorRT 10 Python API, ``tensorrt`` imported lazily).

Without the ``tensorrt`` package, or without a CUDA device, the calls here raise
:class:`TensorRTUnavailableError` with the install hint. Building engines is
:mod:`sam_unet.export.tensorrt_build`'s job; running them is
:mod:`sam_unet.runtime.tensorrt_backend`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam_unet.runtime.tensorrt_profiles import Profile
from sam_unet.runtime.tensorrt_sidecar import (
    EngineMismatchError,
    EngineSpec,
    GpuIdentity,
    check_engine_file,
    rebuild_command,
)

INSTALL_HINT = 'pip install tensorrt   (or: pip install "sam-unet[trt]")'


class TensorRTUnavailableError(RuntimeError):
    """The ``tensorrt`` Python package (or a GPU for it) is not available."""


def import_tensorrt():
    """``import tensorrt``, or a :class:`TensorRTUnavailableError` that says how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"TensorRT is not available ({exc}). Install it with: {INSTALL_HINT}. "
            "It needs an NVIDIA GPU and driver; without it use the 'torch' or 'onnxruntime' "
            "backend."
        ) from exc
    return trt


def current_gpu(device: int | str = 0) -> GpuIdentity:
    """Name and compute capability of a CUDA device, as PyTorch sees it."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "no CUDA device is visible (torch.cuda.is_available() is False): TensorRT engines "
            "need an NVIDIA GPU; use the 'torch' or 'onnxruntime' backend on the CPU"
        )
    index = torch.device(device if not isinstance(device, int) else f"cuda:{device}").index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return GpuIdentity(torch.cuda.get_device_name(index), f"{major}.{minor}")


@dataclass
class LoadedEngine:
    """A deserialised engine with what its sidecar says and its I/O tensor names (in the
    engine's order)."""

    engine: Any
    runtime: Any
    spec: EngineSpec
    path: Path
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return self.spec.profiles


def load_engine(
    engine_path: str | os.PathLike, *, device: int = 0, verbose: bool = False
) -> LoadedEngine:
    """Check the sidecar against this GPU and TensorRT version, then deserialise the engine."""
    trt = import_tensorrt()
    spec = check_engine_file(engine_path, gpu=current_gpu(device), tensorrt_version=trt.__version__)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    data = Path(engine_path).read_bytes()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineMismatchError(
            f"{engine_path}: TensorRT {trt.__version__} could not deserialise the engine "
            f"(corrupt, or built by another TensorRT); rebuild it: "
            f"{rebuild_command(engine_path, spec, None)}"
        )
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if engine.num_optimization_profiles != len(spec.profiles):
        raise EngineMismatchError(
            f"{engine_path}: the engine has {engine.num_optimization_profiles} optimisation "
            f"profiles but its sidecar lists {len(spec.profiles)}; rebuild it"
        )
    return LoadedEngine(engine, runtime, spec, Path(engine_path), inputs, outputs)

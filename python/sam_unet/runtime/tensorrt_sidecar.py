"""What a TensorRT engine was built for: :class:`EngineSpec`, its JSON sidecar, and the check
that it may run on this GPU with this TensorRT.

Engines are only valid on the GPU model (name and compute capability) and the exact TensorRT
version that built them, so every engine ``X.engine`` has a sidecar ``X.engine.json`` with those
facts, the ONNX file's sha256, the profiles and the precision. The builder
(:mod:`sam_unet.export.tensorrt_build`) writes it; the loader
(:mod:`sam_unet.runtime.tensorrt_engine`) refuses an engine whose sidecar names another GPU or
TensorRT version and says how to rebuild it. Plain Python: nothing here needs TensorRT.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam_unet.runtime.tensorrt_profiles import Profile, format_profiles, parse_profiles

SIDECAR_FORMAT = 1

#: Layer types kept in FP32 in an FP16 engine: LayerNorm statistics, attention softmax and
#: reductions are where a ViT overflows or loses its dynamic range in FP16.
DEFAULT_FP32_LAYER_TYPES: tuple[str, ...] = ("NORMALIZATION", "SOFTMAX", "REDUCE")


class EngineMismatchError(RuntimeError):
    """An engine was built for another GPU, TensorRT version or ONNX file: rebuild it."""


@dataclass(frozen=True)
class GpuIdentity:
    """A GPU model as engines depend on it: its name and compute capability ("9.0")."""

    name: str
    compute_capability: str

    def __str__(self) -> str:
        return f"{self.name!r} (compute capability {self.compute_capability})"


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine depends on; :meth:`key` is its deterministic cache key."""

    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    profiles: tuple[Profile, ...]
    fp16: bool = True
    fp32_layers: tuple[str, ...] = DEFAULT_FP32_LAYER_TYPES

    def __post_init__(self) -> None:
        object.__setattr__(self, "profiles", parse_profiles(self.profiles))
        object.__setattr__(self, "fp32_layers", tuple(self.fp32_layers))

    @property
    def gpu(self) -> GpuIdentity:
        return GpuIdentity(self.gpu_name, self.compute_capability)

    def canonical(self) -> dict[str, Any]:
        """The spec as plain JSON values (what :meth:`key` hashes)."""
        return {
            "format": SIDECAR_FORMAT,
            "onnx_sha256": self.onnx_sha256,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "tensorrt_version": self.tensorrt_version,
            "profiles": [str(p) for p in self.profiles],
            "fp16": bool(self.fp16),
            "fp32_layers": list(self.fp32_layers),
        }

    def key(self) -> str:
        """32 hex digits of the sha256 of :meth:`canonical` (sorted keys, compact JSON)."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineSpec:
        try:
            return cls(
                onnx_sha256=str(d["onnx_sha256"]),
                gpu_name=str(d["gpu_name"]),
                compute_capability=str(d["compute_capability"]),
                tensorrt_version=str(d["tensorrt_version"]),
                profiles=parse_profiles(list(d["profiles"])),
                fp16=bool(d["fp16"]),
                fp32_layers=tuple(d.get("fp32_layers", DEFAULT_FP32_LAYER_TYPES)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"engine sidecar is missing or has a bad field: {exc}") from exc


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``X.engine`` -> ``X.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def write_sidecar(engine_path: str | os.PathLike, spec: EngineSpec, **extra: Any) -> Path:
    """Write ``<engine>.json`` (atomically) with the spec, its key and ``extra`` facts."""
    from sam_unet import __version__
    from sam_unet.atomic import write_bytes_atomic

    doc = spec.canonical()
    doc["key"] = spec.key()
    doc["sam_unet_version"] = __version__
    doc["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc.update({k: v for k, v in extra.items() if v is not None})
    path = sidecar_path(engine_path)
    write_bytes_atomic(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_sidecar(engine_path: str | os.PathLike) -> tuple[EngineSpec, dict[str, Any]]:
    """The spec recorded next to an engine, plus the whole JSON document."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no sidecar next to engine {engine_path}, so it cannot be checked against "
            f"this GPU and TensorRT version; rebuild it with: "
            f"sam-unet build-engine MODEL.onnx -o {engine_path}"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable engine sidecar ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: engine sidecar is not a JSON object")
    try:
        spec = EngineSpec.from_dict(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if "key" in doc and doc["key"] != spec.key():
        raise ValueError(
            f"{path}: recorded key {doc['key']} does not match its contents ({spec.key()}); "
            "the sidecar was edited or is from another sam_unet version: rebuild the engine"
        )
    return spec, doc


def rebuild_command(engine_path: str | os.PathLike, spec: EngineSpec, onnx_path: str | None) -> str:
    """The ``sam-unet build-engine`` command that makes this engine again on this machine."""
    cmd = (
        f"sam-unet build-engine {onnx_path or 'MODEL.onnx'} -o {engine_path} "
        f"--profiles {format_profiles(spec.profiles)}"
    )
    return cmd + (" --fp16" if spec.fp16 else " --no-fp16")


def check_compatible(
    spec: EngineSpec,
    *,
    gpu: GpuIdentity,
    tensorrt_version: str,
    engine_path: str | os.PathLike = "ENGINE",
    onnx_path: str | None = None,
) -> None:
    """Raise :class:`EngineMismatchError` if the engine was built for another GPU (name or compute
    capability) or another TensorRT version, naming both sides and the rebuild command."""
    problems = []
    if spec.gpu != gpu:
        problems.append(f"it was built for GPU {spec.gpu}, this machine has GPU {gpu}")
    if spec.tensorrt_version != tensorrt_version:
        problems.append(
            f"it was built with TensorRT {spec.tensorrt_version}, this is TensorRT "
            f"{tensorrt_version}"
        )
    if problems:
        raise EngineMismatchError(
            f"engine {engine_path} cannot run here: "
            + "; ".join(problems)
            + ". TensorRT engines are specific to the GPU model and TensorRT version; rebuild "
            f"it on this machine: {rebuild_command(engine_path, spec, onnx_path)}"
        )


def check_engine_file(
    engine_path: str | os.PathLike, *, gpu: GpuIdentity, tensorrt_version: str
) -> EngineSpec:
    """Read the engine's sidecar and :func:`check_compatible` it; returns the spec."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise FileNotFoundError(f"{engine_path}: no such engine file")
    spec, doc = read_sidecar(engine_path)
    check_compatible(
        spec,
        gpu=gpu,
        tensorrt_version=tensorrt_version,
        engine_path=engine_path,
        onnx_path=doc.get("onnx_path"),
    )
    return spec

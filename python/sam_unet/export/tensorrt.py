"""ONNX -> TensorRT engine: builder, optimisation profiles, timing cache and engine cache.

Everything that decides *what* to build and *whether an engine may be used* (profile parsing,
cache keys, sidecar files, GPU/TensorRT identity checks, which layers stay in FP32) is plain
Python and tested without TensorRT. The TensorRT calls themselves (TensorRT 10 Python API) live
in :func:`build_engine` and :func:`load_engine` and import ``tensorrt`` lazily; without it they
raise :class:`TensorRTUnavailableError` with the install hint.

Engines are only valid on the GPU model (name and compute capability) and the exact TensorRT
version that built them, so every engine ``X.engine`` has a JSON sidecar ``X.engine.json`` with
those facts; :func:`load_engine` refuses an engine whose sidecar names another GPU or TensorRT
version and says how to rebuild it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam_unet.export.onnx import sha256_file  # noqa: F401 - re-exported

INSTALL_HINT = 'pip install tensorrt   (or: pip install "sam-unet[trt]")'
SIDECAR_FORMAT = 1
ENGINE_CACHE_ENV = "SAM_UNET_ENGINE_CACHE"

#: Layer types kept in FP32 in an FP16 engine: LayerNorm statistics, attention softmax and
#: reductions are where a ViT overflows or loses its dynamic range in FP16.
DEFAULT_FP32_LAYER_TYPES: tuple[str, ...] = ("NORMALIZATION", "SOFTMAX", "REDUCE")


class TensorRTUnavailableError(RuntimeError):
    """The ``tensorrt`` Python package (or a GPU for it) is not available."""


class EngineMismatchError(RuntimeError):
    """An engine was built for another GPU, TensorRT version or ONNX file: rebuild it."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build the engine."""


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


# --------------------------------------------------------------------------------------------
# optimisation profiles


@dataclass(frozen=True)
class Profile:
    """A batch range for one optimisation profile: min <= opt <= max."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"profile {name}={v!r}: must be an integer")
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(
                f"profile {self}: needs 1 <= min <= opt <= max (got min={self.min}, "
                f"opt={self.opt}, max={self.max})"
            )

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


DEFAULT_PROFILES: tuple[Profile, ...] = (Profile(1, 1, 1), Profile(1, 32, 64))


def parse_profile(spec: str) -> Profile:
    """``"1:32:64"`` -> Profile(1, 32, 64); ``"8"`` -> Profile(8, 8, 8) (a fixed batch)."""
    text = spec.strip()
    parts = text.split(":")
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise ValueError(
            f"profile {spec!r}: expected MIN:OPT:MAX (e.g. 1:32:64) or a single batch size"
        )
    values = [int(p) for p in parts]
    if len(values) == 1:
        values *= 3
    return Profile(*values)


def parse_profiles(spec: str | Sequence[str] | Sequence[Profile]) -> tuple[Profile, ...]:
    """``"1:1:1,1:32:64"`` (or a list of such strings / Profiles) -> tuple of Profiles.

    Order is kept (it is the profile index in the engine); duplicates and an empty list are
    errors.
    """
    if isinstance(spec, str):
        items: list[Any] = [s for s in spec.split(",") if s.strip()]
    else:
        items = []
        for s in spec:
            items.extend([s] if isinstance(s, Profile) else [t for t in s.split(",") if t.strip()])
    profiles = tuple(p if isinstance(p, Profile) else parse_profile(p) for p in items)
    if not profiles:
        raise ValueError(f"profiles {spec!r}: at least one MIN:OPT:MAX is needed")
    if len(set(profiles)) != len(profiles):
        raise ValueError(f"profiles {format_profiles(profiles)}: duplicate profile")
    return profiles


def format_profiles(profiles: Iterable[Profile]) -> str:
    return ",".join(str(p) for p in profiles)


def select_profile(profiles: Sequence[Profile], batch: int) -> int:
    """Index of the profile to run ``batch`` with: the narrowest range containing it, then the
    one whose ``opt`` is closest. Raises ValueError when no profile contains it."""
    candidates = [i for i, p in enumerate(profiles) if p.contains(batch)]
    if not candidates:
        raise ValueError(
            f"batch {batch} is outside every optimisation profile of the engine "
            f"({format_profiles(profiles)}); split the batch or rebuild with --profiles"
        )
    return min(
        candidates,
        key=lambda i: (profiles[i].max - profiles[i].min, abs(profiles[i].opt - batch), i),
    )


def max_batch(profiles: Sequence[Profile]) -> int:
    return max(p.max for p in profiles)


# --------------------------------------------------------------------------------------------
# identity, cache keys and sidecars


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "9.0"

    def __str__(self) -> str:
        return f"{self.name!r} (compute capability {self.compute_capability})"


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
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def _atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    from sam_unet.atomic import write_bytes_atomic

    write_bytes_atomic(path, data)


def write_sidecar(engine_path: str | os.PathLike, spec: EngineSpec, **extra: Any) -> Path:
    """Write ``<engine>.json`` (atomically) with the spec, its key and ``extra`` facts."""
    from sam_unet import __version__

    doc = spec.canonical()
    doc["key"] = spec.key()
    doc["sam_unet_version"] = __version__
    doc["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc.update({k: v for k, v in extra.items() if v is not None})
    path = sidecar_path(engine_path)
    _atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
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


def default_cache_dir() -> Path:
    env = os.environ.get(ENGINE_CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sam_unet" / "engines"


@dataclass
class EngineCache:
    """Engines on disk under ``root``, named by :meth:`EngineSpec.key`.

    The same ONNX file (by content) on the same GPU model with the same TensorRT version,
    profiles and precision maps to the same file, so it is built once and reused.
    """

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
    return EngineSpec(
        onnx_sha256=onnx_sha256 or sha256_file(onnx_path),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt_version=tensorrt_version,
        profiles=parse_profiles(profiles),
        fp16=fp16,
        fp32_layers=tuple(fp32_layers) if fp16 else (),
    )


# --------------------------------------------------------------------------------------------
# precision constraints (pure selection, then the TensorRT calls)


def select_fp32_layers(
    layers: Iterable[tuple[str, str, bool]],
    layer_types: Sequence[str] = DEFAULT_FP32_LAYER_TYPES,
    name_patterns: Sequence[str] = (),
) -> list[str]:
    """Names of the layers to pin to FP32.

    ``layers`` yields ``(name, type_name, float_output)`` with the TensorRT ``LayerType`` member
    name (e.g. "NORMALIZATION"); a layer is pinned when its output is floating point and its type
    is in ``layer_types`` or its name matches one of the ``name_patterns`` (regular
    expressions, searched).
    """
    types = {t.upper() for t in layer_types}
    pats = [re.compile(p) for p in name_patterns]
    return [
        name
        for name, type_name, float_output in layers
        if float_output and (type_name.upper() in types or any(p.search(name) for p in pats))
    ]


def _layer_type_name(layer) -> str:
    t = layer.type
    return getattr(t, "name", str(t).rsplit(".", 1)[-1])


def pin_fp32_layers(
    trt, network, layer_types=DEFAULT_FP32_LAYER_TYPES, name_patterns=()
) -> list[str]:
    """Set ``layer.precision`` and every float output type to FP32 for the selected layers.

    Needs ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` on the config to be binding."""
    float_types = {trt.float32, trt.float16}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    info = []
    for layer in layers:
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        info.append(
            (layer.name, _layer_type_name(layer), any(o.dtype in float_types for o in outs))
        )
    chosen = set(select_fp32_layers(info, layer_types, name_patterns))
    pinned = []
    for layer in layers:
        if layer.name not in chosen:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in float_types:
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


# --------------------------------------------------------------------------------------------
# build and load (TensorRT 10 Python API)


def _network_flags(trt) -> int:
    major = int(str(trt.__version__).split(".")[0])
    if major >= 10:
        return 0  # explicit batch is the only mode (the flag is deprecated)
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _read_timing_cache(path: Path | None) -> bytes:
    if path is None or not path.is_file():
        return b""
    return path.read_bytes()


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
    """Parse ``onnx_path``, build a (FP16) engine with the given profiles, write it atomically to
    ``engine_path`` with its sidecar, and update the timing cache file. Returns the spec."""
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    profiles = parse_profiles(profiles)
    import torch

    gpu = current_gpu(device)
    torch.cuda.set_device(device)
    spec = make_spec(
        onnx_path,
        gpu=gpu,
        tensorrt_version=trt.__version__,
        profiles=profiles,
        fp16=fp16,
        fp32_layers=fp32_layers,
    )

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"{onnx_path}: TensorRT could not parse the ONNX file:\n  "
            + "\n  ".join(errors or ["(no error reported)"])
        )

    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    pinned: list[str] = []
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EngineBuildError(
                f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (weak typing removed); "
                "build with --no-fp16 or use TensorRT 10"
            )
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = pin_fp32_layers(trt, network, fp32_layers, fp32_name_patterns)

    for p in profiles:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            if any(d < 0 for d in rest):
                raise EngineBuildError(
                    f"{onnx_path}: input {tensor.name!r} has dynamic dims {tuple(tensor.shape)} "
                    "besides the batch; export with a fixed 256x256 input"
                )
            profile.set_shape(tensor.name, (p.min, *rest), (p.opt, *rest), (p.max, *rest))
        config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(_read_timing_cache(cache_path))
    if not config.set_timing_cache(cache, False):
        # A cache from another TensorRT version or GPU: start a fresh one (it is rewritten).
        logger.log(trt.Logger.WARNING, f"timing cache {cache_path} does not match; starting anew")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"{onnx_path}: TensorRT failed to build the engine (see the TensorRT log above)"
        )
    _atomic_write_bytes(engine_path, memoryview(plan))
    write_sidecar(
        engine_path,
        spec,
        onnx_path=str(onnx_path.resolve()),
        workspace_gib=workspace_gib,
        fp32_pinned_layers=len(pinned),
        fp32_name_patterns=list(fp32_name_patterns) or None,
    )
    if cache_path is not None:
        _atomic_write_bytes(cache_path, memoryview(config.get_timing_cache().serialize()))
    return spec


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
    engine cache when no path is given). Returns (path, spec, built)."""
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


@dataclass
class LoadedEngine:
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


__all__ = [
    "DEFAULT_FP32_LAYER_TYPES",
    "DEFAULT_PROFILES",
    "INSTALL_HINT",
    "EngineBuildError",
    "EngineCache",
    "EngineMismatchError",
    "EngineSpec",
    "GpuIdentity",
    "LoadedEngine",
    "Profile",
    "TensorRTUnavailableError",
    "build_engine",
    "build_engine_cached",
    "build_or_reuse",
    "check_compatible",
    "check_engine_file",
    "current_gpu",
    "default_cache_dir",
    "format_profiles",
    "import_tensorrt",
    "load_engine",
    "make_spec",
    "max_batch",
    "parse_profile",
    "parse_profiles",
    "pin_fp32_layers",
    "read_sidecar",
    "rebuild_command",
    "select_fp32_layers",
    "select_profile",
    "sidecar_path",
    "write_sidecar",
]


def build_engine_cached(
    onnx_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: int = 0,
    **build_kwargs: Any,
) -> Path:
    """The engine for ``onnx_path`` on this GPU from the engine cache, built on first use.

    ``cache_dir`` defaults to ``$SAM_UNET_ENGINE_CACHE`` or ``~/.cache/sam_unet/engines``;
    ``build_kwargs`` go to :func:`build_engine` (profiles, fp16, timing_cache, ...)."""
    cache = EngineCache(Path(cache_dir)) if cache_dir else EngineCache()
    if "timing_cache" not in build_kwargs:
        build_kwargs["timing_cache"] = cache.root / "timing.cache"
    path, _, _ = build_or_reuse(onnx_path, None, cache=cache, device=device, **build_kwargs)
    return path

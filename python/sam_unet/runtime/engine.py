"""The volume pipeline: ``Engine.segment(volume) -> uint8 mask``.

CPU: slabs of slices -> C++ preprocess into a float32 batch -> backend -> C++ postprocess
straight into the output volume.

CUDA, volume in host memory: each slab is gathered into a pinned host buffer, copied to the
device on a copy stream, preprocessed by the fused CUDA kernel, run through the backend,
postprocessed into a device uint8 slab and copied back on the copy stream; two sets of buffers
alternate so that copies overlap compute, and device memory is bounded by the slab size, never by
the number of slices. CUDA, volume already on the device (torch or CuPy): the ops read it in place
and write the mask in place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.model_info import ModelInfo
from sam_unet.runtime.prompts import SlicePlan, plan_slices
from sam_unet.runtime.volumes import as_volume, empty_mask_like, to_caller_kind
from sam_unet.transforms import check_window, resized_shape


@dataclass
class SegmentStats:
    """What the last ``segment`` call did: slices computed, backend calls, seconds."""

    slices: int = 0
    backend_calls: int = 0
    seconds: float = 0.0
    peak_device_bytes: int = 0
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else float("nan")


def _batches(plan: SlicePlan, batch: int) -> list[list[tuple[int, int, int]]]:
    """Group the plan's contiguous runs into batches of at most ``batch`` slices.

    Each batch is a list of (position_in_plan, first_slice, length) pieces.
    """
    out: list[list[tuple[int, int, int]]] = []
    cur: list[tuple[int, int, int]] = []
    used = 0
    for pos, start, length in plan.runs():
        while length > 0:
            take = min(length, batch - used)
            cur.append((pos, start, take))
            pos, start, length, used = pos + take, start + take, length - take, used + take
            if used == batch:
                out.append(cur)
                cur, used = [], 0
    if cur:
        out.append(cur)
    return out


class Engine:
    """Segment whole volumes with a backend (torch, onnxruntime or tensorrt).

    Build with :meth:`from_checkpoint`, :meth:`from_onnx` or :meth:`from_engine_file`.
    """

    def __init__(self, backend: Any, *, batch_size: int | None = None,
                 source: str | None = None, picked_because: str = "",
                 model_info: ModelInfo | None = None, load_report: Any = None) -> None:
        """``model_info``: how the model must be fed (None: unknown, the generic defaults
        apply); ``load_report``: the checkpoint's ``LoadReport`` (integrity check) if any."""
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.batch_size = int(batch_size or getattr(backend, "max_batch", 16) or 16)
        self.source = source
        self.picked_because = picked_because
        self.model_info = model_info
        self.load_report = load_report
        self.last_stats = SegmentStats()
        self._cleanup: Any = None  # weakref.finalize removing a private temporary export

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, backend: str = "auto", device: str | None = None,
                        precision: str | None = None, batch_size: int | None = None,
                        variant: str | None = None) -> Engine:
        """Engine from a SAM-UNet checkpoint. backend: "auto", "torch" or "onnxruntime".

        The weights are checked (content hash when the file has one, finite values); the
        checkpoint's model info becomes ``engine.model_info``. "onnxruntime" runs an ONNX export
        of the weights kept in the ONNX cache (``sam_unet.export.onnx_cache``): exported once
        per checkpoint content, never left in the temporary folder.
        """
        from sam_unet.checkpoints import load_model_with_report
        from sam_unet.runtime.backends import make_backend

        device = _resolve_device(device)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        model, report = load_model_with_report(path, variant=variant)
        reason = ""
        if backend == "auto":
            backend = "torch"
            reason = (f"torch on {device}: a checkpoint runs directly in PyTorch"
                      + (" (fp16 on CUDA)" if device.startswith("cuda") else " (fp32 on CPU)"))
        if backend in ("onnxruntime", "ort", "onnx"):
            engine = cls._from_model_via_onnx(model, report, device=device, precision=precision,
                                              batch_size=batch_size)
            engine.source = str(path)
            return engine
        precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
        b = make_backend(backend, model=model, device=device, precision=precision,
                         max_batch=batch_size or _default_batch(device))
        return cls(b, batch_size=batch_size, source=str(path), picked_because=reason,
                   model_info=report.model_info, load_report=report)

    @classmethod
    def _from_model_via_onnx(cls, model: Any, report: Any, *, device: str,
                             precision: str | None, batch_size: int | None) -> Engine:
        """ONNX Runtime engine for a loaded checkpoint through the ONNX cache; a cached file
        that cannot be used is exported again once."""
        import weakref

        from sam_unet.export.onnx import InvalidOnnxError
        from sam_unet.export.onnx_cache import cached_export, discard
        from sam_unet.model_info import ModelMismatchError

        for attempt in (0, 1):
            entry = cached_export(model, report.model_info)
            try:
                engine = cls.from_onnx(entry.path, backend="onnxruntime", device=device,
                                       precision=precision, batch_size=batch_size,
                                       weights_sha256=entry.weights_sha256)
            except (InvalidOnnxError, ModelMismatchError):
                discard(entry)
                if attempt:
                    raise
                continue
            if entry.temp_dir is not None:
                import shutil

                engine._cleanup = weakref.finalize(engine, shutil.rmtree, str(entry.temp_dir),
                                                   True)
            engine.load_report = report
            engine.picked_because = "onnxruntime: the checkpoint's ONNX export (cached)"
            return engine
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Release the backend and remove any private temporary export (also done when the
        engine is garbage-collected or the interpreter exits)."""
        if self._cleanup is not None:
            self._cleanup()
        self.backend = None

    @classmethod
    def from_onnx(cls, path: str | Path, *, backend: str = "auto", device: str | None = None,
                  precision: str | None = None, batch_size: int | None = None,
                  variant: str | None = None, checkpoint: str | Path | None = None,
                  weights_sha256: str | None = None, force: bool = False) -> Engine:
        """Engine from an exported ONNX file: TensorRT when it is installed and a GPU is
        there (engine built and cached), else ONNX Runtime.

        The file's model metadata (``sam_unet.model_info``) becomes ``engine.model_info``. A file
        without it, or one whose metadata names another model than expected (``variant``
        differs; weights other than those of ``checkpoint`` or of ``weights_sha256``), is
        refused with ``ModelMismatchError`` (a ValueError) unless ``force``. A file ONNX cannot
        read raises ``InvalidOnnxError`` (a ValueError).
        """
        from sam_unet.model_info import check_onnx_metadata
        from sam_unet.runtime.backends import make_backend

        device = _resolve_device(device)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        expected_from = "the expected weights"
        if checkpoint is not None:
            from sam_unet.checkpoints import load_model
            from sam_unet.checkpoints import weights_sha256 as model_weights_sha256

            weights_sha256 = model_weights_sha256(load_model(checkpoint, variant=variant))
            expected_from = f"checkpoint {checkpoint}"

        def checked(metadata: dict[str, str]) -> ModelInfo | None:
            return check_onnx_metadata(metadata, f"ONNX file {path}", variant=variant,
                                       weights_sha256=weights_sha256,
                                       expected_from=expected_from, force=force)

        reason = ""
        if backend == "auto":
            if device.startswith("cuda") and _tensorrt_available():
                from sam_unet.export.onnx import read_metadata
                from sam_unet.export.tensorrt import build_engine_cached

                info = checked(read_metadata(path))  # before a build of minutes
                engine_path = build_engine_cached(path)
                return cls.from_engine_file(engine_path, device=device, batch_size=batch_size,
                                            model_info=info)
            backend = "onnxruntime"
            reason = ("onnxruntime: TensorRT is not installed" if device.startswith("cuda")
                      else "onnxruntime on the CPU")
        b = make_backend(backend, onnx_path=path, device=device,
                         precision=precision or "fp32", max_batch=batch_size or
                         _default_batch(device))
        metadata = getattr(b, "metadata", None)
        if metadata is None:
            from sam_unet.export.onnx import read_metadata

            metadata = read_metadata(path)
        return cls(b, batch_size=batch_size, source=str(path), picked_because=reason,
                   model_info=checked(metadata))

    @classmethod
    def from_engine_file(cls, path: str | Path, *, device: str | None = None,
                         batch_size: int | None = None,
                         model_info: ModelInfo | None = None) -> Engine:
        """Engine from a serialised TensorRT engine (checked against this GPU and TensorRT).

        ``engine.model_info``: ``model_info`` if given, else what the engine's sidecar records
        (its own ``model_info`` entry, or the metadata of the ONNX file it was built from when
        that file is still there), else None."""
        from sam_unet.runtime.backends import make_backend

        device = _resolve_device(device or "cuda")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {path}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        b = make_backend("tensorrt", engine_path=path, device=device, precision="fp16",
                         max_batch=batch_size or _default_batch(device))
        if model_info is None:
            model_info = _engine_model_info(path)
        return cls(b, batch_size=batch_size, source=str(path), picked_because="tensorrt engine",
                   model_info=model_info)

    def describe(self) -> str:
        """One line: backend, device, precision, batch size, and why it was picked."""
        b = self.backend
        text = (f"backend={b.name} device={b.device} precision={b.precision} "
                f"batch={self.batch_size}")
        if self.source:
            text += f" source={self.source}"
        if self.picked_because:
            text += f" ({self.picked_because})"
        return text

    # ------------------------------------------------------------------ sessions, propagation
    def session(self, volume: Any, **options: Any) -> Any:
        """An interactive :class:`~sam_unet.runtime.session.Session` on ``volume``: image
        embeddings are cached (LRU, ``cache_bytes``), so a new box on a slice seen before runs
        only the decoder. Options: axis, window, normalize, cache_bytes, batch_size."""
        from sam_unet.runtime.session import Session

        return Session(self, volume, **options)

    def propagate(self, volume: Any, slice_index: int, box: Any, *, axis: int | None = None,
                  window: Any = None, normalize: str | None = None,
                  batch_size: int | None = None, **options: Any) -> Any:
        """Follow the structure boxed on one slice through the volume -> uint8 mask of the
        volume's shape and kind. ``box``: a 2D box (x0, y0, x1, y1) (x over the first remaining
        axis, DESIGN 8) or a 2D mask of the slice; options: margin (voxels, default 3),
        min_area (voxels, default 16), direction ("both", "forward", "backward"), lookahead.
        See :mod:`sam_unet.runtime.propagate`; ``engine.last_propagation`` is its report."""
        session = self.session(volume, axis=axis, window=window, normalize=normalize,
                               batch_size=batch_size, cache_bytes=0)
        mask = session.propagate(slice_index, box, **options)
        self.last_propagation = session.last_propagation
        return mask

    # ------------------------------------------------------------------ segmentation
    def segment(self, volume: Any, *, axis: int = -1, window: Any = None,
                normalize: str = "slice-minmax", boxes: Any = None, box_mask: Any = None,
                batch_size: int | None = None) -> Any:
        """Segment a 3D volume slice by slice.

        volume: (X, Y, Z) NumPy array, torch tensor or CuPy array of uint8, int16, uint16, int32,
            float32 or float64, any strides.
        axis: the slicing axis (default the last).
        window: optional (lo, hi) intensity window; normalize: "slice-minmax" or "window".
        boxes: None (full-slice box), a 3D box (x0, y0, z0, x1, y1, z1) in voxels, per-slice
            (S, 4) boxes (NaN rows skipped) or a dict {slice: box}, or a coarse mask volume.
        Returns a uint8 {0, 1} mask of the volume's shape, of the same array kind and device.
        """
        view = as_volume(volume)
        win = check_window(normalize, window)
        if axis < -3 or axis > 2:
            raise ValueError(f"axis must be in [-3, 2] for a 3D volume, got {axis}")
        axis = axis % 3
        if box_mask is not None:
            box_mask = _host(box_mask)
        elif boxes is not None and not isinstance(boxes, dict):
            boxes = _host(boxes)
        plan = plan_slices(view.shape, axis, boxes, box_mask=box_mask)
        batch = int(batch_size or self.batch_size)
        if batch < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch}")
        stats = SegmentStats()
        t0 = time.perf_counter()
        mask = empty_mask_like(view)
        if len(plan.indices):
            if self.backend.device.startswith("cuda"):
                from sam_unet.runtime.cuda_pipeline import run_cuda

                mask = run_cuda(self.backend, view, mask, plan, axis, normalize, win, batch,
                                stats)
            else:
                self._run_cpu(view, mask, plan, axis, normalize, win, batch, stats)
        stats.slices = len(plan.indices)
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return to_caller_kind(mask, view)

    def _run_cpu(self, view: Any, mask: Any, plan: SlicePlan, axis: int, normalize: str,
                 window: tuple[float, float] | None, batch: int, stats: SegmentStats) -> None:
        import torch

        from sam_unet import ops

        if view.on_cuda:
            raise ValueError(
                f"the volume is on {view.device} but the engine runs on the CPU; move the volume "
                "to the host (.cpu()) or build the engine with device='cuda'"
            )
        vol = view.array if view.kind == "numpy" else view.array.numpy()
        out = mask if isinstance(mask, np.ndarray) else mask.numpy()
        row_ax, col_ax = [a for a in range(3) if a != axis]
        height, width = vol.shape[row_ax], vol.shape[col_ax]
        resized = resized_shape(height, width)
        images = np.empty((batch, 3, 256, 256), dtype=np.float32)
        t_pre = t_net = t_post = 0.0
        for pieces in _batches(plan, batch):
            m = sum(p[2] for p in pieces)
            t = time.perf_counter()
            off = 0
            for _pos, start, length in pieces:
                ops.preprocess(vol, images[off:off + length], z0=start, n=length, axis=axis,
                               mode=normalize, window=window)
                off += length
            pos_idx = np.concatenate([np.arange(p, p + n) for p, _s, n in pieces])
            boxes = ops.scale_boxes(plan.boxes[pos_idx], (height, width), resized)
            t_pre += time.perf_counter() - t
            t = time.perf_counter()
            logits = self.backend.run(torch.from_numpy(images[:m]),
                                      torch.from_numpy(np.ascontiguousarray(boxes)))
            stats.backend_calls += 1
            t_net += time.perf_counter() - t
            t = time.perf_counter()
            logits_np = logits.detach().float().cpu().numpy()
            off = 0
            for _pos, start, length in pieces:
                ops.postprocess(logits_np[off:off + length], out, z0=start, n=length, axis=axis,
                                resized_hw=resized)
                off += length
            t_post += time.perf_counter() - t
        stats.stages = {"preprocess": t_pre, "model": t_net, "postprocess": t_post}


def _host(a: Any) -> Any:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return a


def _resolve_device(device: str | None) -> str:
    """Kept for callers of the old name: :func:`sam_unet.runtime.devices.resolve_device`."""
    from sam_unet.runtime.devices import resolve_device

    return resolve_device(device)


def _engine_model_info(engine_path: Path) -> ModelInfo | None:
    """The model info recorded for a TensorRT engine: its sidecar's "model_info" entry, else
    the metadata of the ONNX file it was built from (when still there), else None."""
    import json

    from sam_unet.model_info import ONNX_METADATA_KEY

    sidecar = engine_path.with_name(engine_path.name + ".json")
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    text = doc.get("model_info") if isinstance(doc, dict) else None
    if text is None and isinstance(doc, dict) and doc.get("onnx_path"):
        try:
            from sam_unet.export.onnx import read_metadata

            text = read_metadata(doc["onnx_path"]).get(ONNX_METADATA_KEY)
        except (OSError, ValueError):
            text = None
    if text is None:
        return None
    try:
        return ModelInfo.from_json(text) if isinstance(text, str) else ModelInfo.from_dict(text)
    except ValueError:
        return None


def _default_batch(device: str) -> int:
    return 32 if device.startswith("cuda") else 8


def _tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means unusable
        return False
    return True

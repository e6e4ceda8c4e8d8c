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
                 source: str | None = None, picked_because: str = "") -> None:
        self.backend = backend
        self.batch_size = int(batch_size or getattr(backend, "max_batch", 16) or 16)
        self.source = source
        self.picked_because = picked_because
        self.last_stats = SegmentStats()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, backend: str = "auto", device: str | None = None,
                        precision: str | None = None, batch_size: int | None = None,
                        variant: str | None = None) -> Engine:
        """Engine from a SAM-UNet checkpoint. backend: "auto", "torch" or "onnxruntime"."""
        from sam_unet.checkpoints import load_model
        from sam_unet.runtime.backends import make_backend

        device = _resolve_device(device)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        model = load_model(path, variant=variant)
        reason = ""
        if backend == "auto":
            backend = "torch"
            reason = (f"torch on {device}: a checkpoint runs directly in PyTorch"
                      + (" (fp16 on CUDA)" if device.startswith("cuda") else " (fp32 on CPU)"))
        if backend == "onnxruntime":
            import tempfile

            from sam_unet.export.onnx import export_onnx

            tmp = Path(tempfile.mkdtemp(prefix="sam_unet_")) / "model.onnx"
            export_onnx(model, tmp)
            return cls.from_onnx(tmp, device=device, batch_size=batch_size)
        precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
        b = make_backend(backend, model=model, device=device, precision=precision,
                         max_batch=batch_size or _default_batch(device))
        return cls(b, batch_size=batch_size, source=str(path), picked_because=reason)

    @classmethod
    def from_onnx(cls, path: str | Path, *, backend: str = "auto", device: str | None = None,
                  precision: str | None = None, batch_size: int | None = None) -> Engine:
        """Engine from an exported ONNX file: TensorRT when it is installed and a GPU is
        there (engine built and cached), else ONNX Runtime."""
        from sam_unet.runtime.backends import make_backend

        device = _resolve_device(device)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        reason = ""
        if backend == "auto":
            if device.startswith("cuda") and _tensorrt_available():
                from sam_unet.export.tensorrt import build_engine_cached

                engine_path = build_engine_cached(path)
                return cls.from_engine_file(engine_path, device=device, batch_size=batch_size)
            backend = "onnxruntime"
            reason = ("onnxruntime: TensorRT is not installed" if device.startswith("cuda")
                      else "onnxruntime on the CPU")
        b = make_backend(backend, onnx_path=path, device=device,
                         precision=precision or "fp32", max_batch=batch_size or
                         _default_batch(device))
        return cls(b, batch_size=batch_size, source=str(path), picked_because=reason)

    @classmethod
    def from_engine_file(cls, path: str | Path, *, device: str | None = None,
                         batch_size: int | None = None) -> Engine:
        """Engine from a serialised TensorRT engine (checked against this GPU and TensorRT)."""
        from sam_unet.runtime.backends import make_backend

        device = _resolve_device(device or "cuda")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {path}")
        b = make_backend("tensorrt", engine_path=path, device=device, precision="fp16",
                         max_batch=batch_size or _default_batch(device))
        return cls(b, batch_size=batch_size, source=str(path), picked_because="tensorrt engine")

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
    import torch

    if device is None or device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} was asked for but torch sees no CUDA device (CPU build of "
                "torch, or no driver); use --device cpu or install a CUDA build of torch"
            )
        index = int(device.split(":")[1])
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r}: only {torch.cuda.device_count()} visible")
    elif device != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def _default_batch(device: str) -> int:
    return 32 if device.startswith("cuda") else 8


def _tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means unusable
        return False
    return True

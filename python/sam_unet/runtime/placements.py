"""Placements: how a slab of slices is loaded into the model's image batch and how its result is
stored, for each place a volume can live. The pipeline's one loop (runtime/pipeline.py) calls

    images = placement.load(slab)              # preprocessed (n, 3, 256, 256) on the model's device
    result = placement.compute(fn)             # the model step, on the compute stream
    placement.store(slab, result)              # masks / labels written into the output volume

- :class:`HostPlacement`: host volume, CPU engine. The C++ ops read the volume in place and
  write the mask in place (slabs of dtypes they cannot read are converted first).
- ``DevicePlacement`` (placement_device.py): the volume is on the engine's GPU (torch or CuPy);
  the ops read and write it in place on the compute stream.
- ``PinnedPlacement`` (placement_pinned.py): host volume, GPU engine: pinned double buffers,
  separate upload and download streams.

Host output volumes (:func:`host_outputs`) are laid out in the input's memory order (a
Fortran-order NIfTI volume gets a Fortran-order mask), so writing them back is a row copy, never
a transpose. Every placement fills the same stage timings (:data:`STAGES`, seconds; 0 for a
stage it does not have), ``buffer_bytes`` (its slab buffers) and ``peak_device_bytes``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam_unet import ops
from sam_unet.runtime import slab_io
from sam_unet.runtime.plan import Plan, Slab, SliceGeometry

STAGES = ("gather", "upload", "preprocess", "model", "postprocess", "download", "scatter")


@dataclass
class SlabResult:
    """What the model step gives for a slab: ``logits`` (n, 1, 64, 64) float32 (one structure:
    the fused postprocess writes the mask), or ``labels`` (n, H, W) uint8 and optionally
    ``scores`` (n, H, W) float32 (several structures, already at slice resolution)."""

    logits: Any = None
    labels: Any = None
    scores: Any = None


@dataclass(frozen=True)
class Feed:
    """How slices are fed to the model: slice geometry, intensity mode and window, the dtype
    of the preprocessed image batch, and whether a float ``scores`` volume is written too."""

    geometry: SliceGeometry
    mode: str
    window: tuple[float, float] | None
    images_dtype: Any  # torch.float16 or torch.float32: what the preprocess op writes
    scores: bool = False


def preprocess_slab(src: Any, images: Any, slab: Slab, feed: Feed, *, in_place: bool,
                    stream: int = 0) -> None:
    """Preprocess the slab's slices into ``images[:n]``: from the volume itself (``in_place``,
    one op per contiguous run) or from a gathered (n, H, W) slab buffer."""
    if in_place:
        for off, first, m in slab.runs:
            ops.preprocess(src, images[off:off + m], z0=first, n=m, axis=feed.geometry.axis,
                           mode=feed.mode, window=feed.window, stream=stream)
    else:
        ops.preprocess(src[:slab.n], images[:slab.n], z0=0, n=slab.n, axis=0, mode=feed.mode,
                       window=feed.window, stream=stream)


def store_result(result: SlabResult, outputs: dict[str, Any], slab: Slab, feed: Feed, *,
                 in_place: bool, stream: int = 0) -> None:
    """Write a slab's result into ``outputs`` ({"mask": uint8, "scores": float32}): whole
    volumes (``in_place``, one op per run) or (n, H, W) slab buffers."""
    geo, n = feed.geometry, slab.n
    if result.logits is not None:
        if in_place:
            for off, first, m in slab.runs:
                ops.postprocess(result.logits[off:off + m], outputs["mask"], z0=first, n=m,
                                axis=geo.axis, resized_hw=geo.resized, stream=stream)
        else:
            ops.postprocess(result.logits[:n], outputs["mask"][:n], z0=0, n=n, axis=0,
                            resized_hw=geo.resized, stream=stream)
        return
    for name, value in (("mask", result.labels), ("scores", result.scores)):
        if name not in outputs:
            continue
        if in_place:
            for off, first, m in slab.runs:
                slab_io.scatter(_host_if_cpu(value[off:off + m]), outputs[name], z0=first, n=m,
                                axis=geo.axis)
        else:
            outputs[name][:n].copy_(value)


def _host_if_cpu(t: Any) -> Any:
    return t.numpy() if hasattr(t, "is_cuda") and not t.is_cuda else t


def host_outputs(volume: Any, shape: tuple[int, int, int], *, scores: bool) -> dict[str, Any]:
    """The host output volumes of ``shape`` in ``volume``'s memory order, page-aligned: "mask"
    uint8 zeros and, with ``scores``, "scores" float32 -inf."""
    order = slab_io.memory_order(slab_io.strides_of(volume), shape)
    outputs = {"mask": slab_io.empty_in_order(shape, order, np.uint8)}
    if scores:
        outputs["scores"] = slab_io.empty_in_order(shape, order, np.float32, -np.inf)
    return outputs


class Placement(ABC):
    """Shared state: the feed, stage timings, buffer and peak memory figures."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.buffer_bytes = 0
        self.peak_device_bytes = 0

    @abstractmethod
    def start(self, plan: Plan, slab_size: int) -> None:
        ...

    @abstractmethod
    def load(self, slab: Slab) -> Any:
        ...

    @abstractmethod
    def compute(self, fn: Callable[[], SlabResult]) -> SlabResult:
        ...

    @abstractmethod
    def store(self, slab: Slab, result: SlabResult) -> None:
        ...

    @abstractmethod
    def finish(self) -> dict[str, Any]:
        """Wait for everything queued; return the outputs ({"mask": ..., "scores": ...})."""

    def close(self) -> None:  # noqa: B027 - a no-op by default, not abstract
        """Called after success or failure: nothing queued may still use the buffers."""


class HostPlacement(Placement):
    """Host volume (NumPy or torch CPU), CPU engine: ops read the volume and write the mask in
    place; a dtype the ops cannot read is gathered and converted slab by slab."""

    def __init__(self, volume: Any, feed: Feed) -> None:
        super().__init__(feed)
        self.volume = volume
        self.in_place = slab_io.reads_natively(volume)

    def start(self, plan: Plan, slab_size: int) -> None:
        import torch

        geo = self.feed.geometry
        self.images = torch.empty((slab_size, 3, 256, 256), dtype=self.feed.images_dtype)
        self.outputs = host_outputs(self.volume, geo.shape, scores=self.feed.scores)
        self.buffer_bytes = self.images.numel() * self.images.element_size()
        if not self.in_place:
            self.scratch = np.empty((slab_size, geo.height, geo.width),
                                    dtype=slab_io.convert_dtype(self.volume.dtype))
            self.buffer_bytes += self.scratch.nbytes

    def load(self, slab: Slab) -> Any:
        t0 = time.perf_counter()
        src = self.volume
        if not self.in_place:
            for off, first, m in slab.runs:
                slab_io.gather(self.volume, self.scratch[off:off + m], z0=first, n=m,
                               axis=self.feed.geometry.axis)
            src = self.scratch
        t1 = time.perf_counter()
        preprocess_slab(src, self.images, slab, self.feed, in_place=self.in_place)
        self.stages["gather"] += t1 - t0
        self.stages["preprocess"] += time.perf_counter() - t1
        return self.images[:slab.n]

    def compute(self, fn: Callable[[], SlabResult]) -> SlabResult:
        t0 = time.perf_counter()
        result = fn()
        self.stages["model"] += time.perf_counter() - t0
        return result

    def store(self, slab: Slab, result: SlabResult) -> None:
        t0 = time.perf_counter()
        store_result(result, self.outputs, slab, self.feed, in_place=True)
        self.stages["postprocess"] += time.perf_counter() - t0

    def finish(self) -> dict[str, Any]:
        return self.outputs

"""The volume pipeline's one loop: slabs of a :class:`~sam_unet.runtime.plan.Plan` through a
placement and a model step.

    for slab in plan.slabs(batch):
        images = placement.load(slab)
        result = placement.compute(lambda: step(images, slab))
        placement.store(slab, result)

The placement (runtime/placements.py) decides where slices are read and masks written; the step
decides what the model does with a slab: :class:`WholeModelStep` (one structure: the whole model,
logits to the fused postprocess) or :class:`StructuresStep` (several structures: each slice
encoded once and decoded per structure where the backend can split, else the whole model per
structure; overlaps go to the higher logit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam_unet.runtime.placements import Feed, Placement, SlabResult
from sam_unet.runtime.plan import Plan, Slab, SliceGeometry
from sam_unet.runtime.volumes import VolumeView

NONFINITE_LOGITS = ("the model produced NaN/Inf logits: the weights may be damaged or the "
                    "precision overflows; try fp32")


@dataclass
class SegmentStats:
    """What the last ``segment`` call did.

    slices: slices computed; slabs: slabs run; backend_calls: backend run/encode/decode calls;
    seconds: wall time; stages: seconds per pipeline stage (see placements.STAGES; device stages
    timed with CUDA events); peak_device_bytes: torch's peak device allocation during the call
    (0 on the CPU); buffer_bytes: the slab buffers the placement allocated; placement: its name.
    """

    slices: int = 0
    slabs: int = 0
    backend_calls: int = 0
    seconds: float = 0.0
    peak_device_bytes: int = 0
    buffer_bytes: int = 0
    placement: str = ""
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else float("nan")


class FiniteGuard:
    """Raises ValueError (:data:`NONFINITE_LOGITS`) for NaN/Inf logits: at once for host
    logits; for device logits the check accumulates on the device and is read once at the end,
    so the compute stream is never stalled."""

    def __init__(self) -> None:
        self._ok: Any = None

    def check(self, logits: Any) -> None:
        import torch

        ok = torch.isfinite(logits).all()
        if logits.device.type == "cpu":
            if not bool(ok):
                raise ValueError(NONFINITE_LOGITS)
        else:
            self._ok = ok if self._ok is None else self._ok & ok

    def finish(self) -> None:
        if self._ok is not None and not bool(self._ok):
            raise ValueError(NONFINITE_LOGITS)


class WholeModelStep:
    """One structure: ``backend.run(images, boxes)`` -> logits for the fused postprocess."""

    def __init__(self, backend: Any, plan: Plan, guard: FiniteGuard, stats: SegmentStats
                 ) -> None:
        import torch

        self.backend, self.guard, self.stats = backend, guard, stats
        self.boxes = torch.from_numpy(np.ascontiguousarray(plan.boxes[0])).to(backend.device)

    def __call__(self, images: Any, slab: Slab) -> SlabResult:
        logits = self.backend.run(images, self.boxes[slab.positions])
        self.stats.backend_calls += 1
        self.guard.check(logits)
        return SlabResult(logits=logits)


def logit_map(logits: Any, geo: SliceGeometry) -> Any:
    """(m, 1, 64, 64) logits -> (m, H, W) float32 logits at slice resolution: the float map
    whose ``> 0`` is the mask (as ``transforms.postprocess_logits``: bilinear to 256, crop to
    (h', w'), bilinear to (H, W), align_corners=False, no antialias)."""
    import torch.nn.functional as F

    up = F.interpolate(logits.float(), size=(256, 256), mode="bilinear", align_corners=False)
    up = up[..., :geo.resized[0], :geo.resized[1]]
    return F.interpolate(up, size=(geo.height, geo.width), mode="bilinear",
                         align_corners=False)[:, 0]


class StructuresStep:
    """Several structures on one slab: the label of the structure with the highest logit where
    that logit is > 0, else 0. Bounded per slab: one running best-logit map and one label map
    of the slab's slices; a structure's logits are brought to slice resolution one at a time."""

    def __init__(self, backend: Any, plan: Plan, guard: FiniteGuard, stats: SegmentStats,
                 *, scores: bool) -> None:
        import torch

        self.backend, self.plan, self.guard, self.stats = backend, plan, guard, stats
        self.scores = scores
        self.device = torch.device(backend.device)
        self.boxes = torch.from_numpy(np.ascontiguousarray(plan.boxes)).to(self.device)
        self.split = bool(getattr(backend, "can_split", False))

    def __call__(self, images: Any, slab: Slab) -> SlabResult:
        import torch

        geo, n = self.plan.geometry, slab.n
        present = self.plan.present[:, slab.positions]
        if self.split:
            embeddings, features = self.backend.encode(images)
            self.stats.backend_calls += 1
        best = torch.full((n, geo.height, geo.width), float("-inf"), device=self.device)
        winner = torch.zeros((n, geo.height, geo.width), dtype=torch.uint8, device=self.device)
        for k, label in enumerate(self.plan.labels):
            pos = np.flatnonzero(present[k])
            if len(pos) == 0:
                continue
            sel = torch.from_numpy(pos).to(self.device)
            boxes = self.boxes[k, slab.start + sel]
            if self.split:
                logits = self.backend.decode(embeddings[sel], features[sel], boxes)
            else:
                logits = self.backend.run(images[sel], boxes)
            self.stats.backend_calls += 1
            self.guard.check(logits)
            full = logit_map(logits, geo)
            cur = best[sel]
            wins = full > cur  # strict: on a tie the earlier structure keeps the voxel
            best[sel] = torch.where(wins, full, cur)
            winner[sel] = torch.where(wins, torch.full_like(winner[sel], label), winner[sel])
        labels = torch.where(best > 0, winner, torch.zeros_like(winner))
        return SlabResult(labels=labels, scores=best if self.scores else None)


def make_placement(view: VolumeView, backend_device: str, feed: Feed) -> Placement:
    """The placement for a volume where it lives and an engine where it runs."""
    if not backend_device.startswith("cuda"):
        if view.on_cuda:
            raise ValueError(
                f"the volume is on {view.device} but the engine runs on the CPU; move the volume "
                "to the host (.cpu()) or build the engine with device='cuda'"
            )
        from sam_unet.runtime.placements import HostPlacement

        return HostPlacement(view.array, feed)
    from sam_unet.runtime.streams import TorchCudaDevice

    dev = TorchCudaDevice(backend_device)
    if view.on_cuda:
        if view.device != backend_device:
            raise ValueError(f"the volume is on {view.device} but the engine runs on "
                             f"{backend_device}; move the volume there or build the engine on "
                             f"{view.device}")
        from sam_unet.runtime.placement_device import DevicePlacement

        return DevicePlacement(dev, view.array, feed, cupy=view.kind == "cupy")
    from sam_unet.runtime.placement_pinned import PinnedPlacement

    return PinnedPlacement(dev, view.array, feed)


def run_plan(plan: Plan, placement: Placement, step: Any, guard: FiniteGuard, batch: int,
             stats: SegmentStats) -> dict[str, Any]:
    """Run every slab of ``plan``; fill ``stats``; return the placement's outputs."""
    t0 = time.perf_counter()
    slabs = plan.slabs(batch) if len(plan.indices) else []
    placement.start(plan, plan.slab_size(batch) if slabs else 1)
    try:
        for slab in slabs:
            images = placement.load(slab)
            result = placement.compute(lambda images=images, slab=slab: step(images, slab))
            placement.store(slab, result)
        outputs = placement.finish()
        guard.finish()
    finally:
        placement.close()
    stats.slices, stats.slabs = len(plan.indices), len(slabs)
    stats.seconds = time.perf_counter() - t0
    stats.stages = dict(placement.stages)
    stats.peak_device_bytes = placement.peak_device_bytes
    stats.buffer_bytes = placement.buffer_bytes
    stats.placement = type(placement).__name__
    return outputs

"""From one box to a 3D structure: follow it slice by slice.

``propagate(session, k, prompt)`` segments slice ``k`` with the prompt (a 2D box, or a 2D mask
whose bounding box is used), then walks to the neighbouring slices, forwards (increasing index)
and backwards: each next slice is prompted with the bounding box of the previous slice's mask
(all its foreground), grown by ``margin`` voxels on every side and clipped to the slice. A
direction stops at the volume's edge, or at the first slice whose mask has fewer than
``min_area`` voxels (that slice is left empty). Slices beyond the structure are never computed.

Cost: the two directions walk in lockstep, so each step decodes both next slices in one
decoder call; the encoder (the expensive half) runs ahead of the walk, one backend call of about
``lookahead`` slices shared by the directions still walking (``lookahead // 2`` ahead of each
while both walk; a direction at the volume's edge leaves its share to the other). Only the
decoder, which needs the previous slice's mask, runs step by step. Once a direction's mask has
shrunk under a tenth of the walk's largest (the structure is ending) it is encoded at most 2
slices ahead, so few slices are encoded and never used (they stay in a session's cache).
Backends that cannot split run the whole model step by step on the slices of that step.

Frames: the 2D box ``(x0, y0, x1, y1)`` has x over the first remaining volume axis
and y over the second (axial slices of an (X, Y, Z) volume: x over axis 0, y over axis 1),
inclusive voxel corners; a 2D mask prompt has the slice's shape in the same order.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DIRECTIONS = ("both", "forward", "backward")
DEFAULT_MARGIN = 3.0  # voxels added on every side of the previous slice's mask box
DEFAULT_MIN_AREA = 16  # voxels: a slice with a smaller mask ends the structure
DEFAULT_LOOKAHEAD = 8  # slices encoded per encoder call ahead of the walk
NEAR_END_FRACTION = 0.1  # a mask under this fraction of the walk's largest: near the end ...
NEAR_END_LOOKAHEAD = 2  # ... where batches this short are encoded


@dataclass
class PropagationReport:
    """What one propagation did.

    seed: the prompted slice; slices: the slices written (sorted); boxes: {slice: the 2D box
    (x0, y0, x1, y1) it was decoded with}, for each written slice; stopped: per direction,
    why the walk ended; encoded: slices encoded by this call (cache hits excluded); unused:
    encoded ahead but never decoded; encoder_calls / decoder_calls: backend calls;
    seconds: wall time.
    """

    seed: int
    slices: list[int] = field(default_factory=list)
    boxes: dict[int, list[float]] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    encoded: int = 0
    unused: int = 0
    encoder_calls: int = 0
    decoder_calls: int = 0
    seconds: float = 0.0

    @property
    def extent(self) -> tuple[int, int] | None:
        """(first, last) slice written, or None."""
        return (self.slices[0], self.slices[-1]) if self.slices else None


def _check_options(margin: float, min_area: int, direction: str, lookahead: int) -> None:
    if not np.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a number of voxels >= 0, got {margin!r}")
    if isinstance(min_area, bool) or int(min_area) != min_area or min_area < 1:
        raise ValueError(f"min_area must be an integer number of voxels >= 1, got {min_area!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if isinstance(lookahead, bool) or int(lookahead) != lookahead or lookahead < 1:
        raise ValueError(f"lookahead must be an integer >= 1, got {lookahead!r}")


def mask_extent(mask2d: Any) -> tuple[int, np.ndarray | None]:
    """(foreground voxel count, slice-frame box (x0, y0, x1, y1) of all foreground or None)."""
    m = mask2d.detach().cpu().numpy() if hasattr(mask2d, "detach") else (
        mask2d.get() if type(mask2d).__module__.startswith("cupy") else np.asarray(mask2d))
    fg = m != 0
    area = int(np.count_nonzero(fg))
    if area == 0:
        return 0, None
    xs = np.flatnonzero(fg.any(axis=1))
    ys = np.flatnonzero(fg.any(axis=0))
    return area, np.array([xs[0], ys[0], xs[-1], ys[-1]], dtype=np.float64)


def grow_box(box: np.ndarray, margin: float, shape: tuple[int, int]) -> np.ndarray:
    """``box`` grown by ``margin`` on every side, clipped to a slice of ``shape``."""
    h, w = shape
    b = np.asarray(box, dtype=np.float64) + np.array([-margin, -margin, margin, margin])
    return np.clip(b, 0, [h - 1, w - 1, h - 1, w - 1])


def seed_box(session: Any, k: int, prompt: Any) -> np.ndarray:
    """The slice-frame box of a prompt: a 2D box (4 numbers) or a 2D mask of the slice's
    shape (its foreground's bounding box)."""
    arr = prompt
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    elif type(arr).__module__.startswith("cupy"):
        arr = arr.get()
    arr = np.asarray(arr)
    if arr.ndim == 2:
        if arr.shape != session.slice_shape:
            raise ValueError(f"mask prompt has shape {arr.shape}, slice {k} along axis "
                             f"{session.axis} has shape {session.slice_shape}")
        _, box = mask_extent(arr)
        if box is None:
            raise ValueError(f"mask prompt for slice {k} is empty: draw the structure, or give "
                             "a box (x0, y0, x1, y1)")
        return box
    return session.check_box(arr, k)


class _Front:
    """One direction of the walk: the next slice ``k``, the box of the last mask, and the
    embeddings encoded ahead of it (``queue`` of (slice, entry))."""

    def __init__(self, step: int, k: int, box: np.ndarray) -> None:
        self.step, self.k, self.box = step, k, box
        self.name = "forward" if step > 0 else "backward"
        self.queue: deque = deque()
        self.near_end = False

    def wanted(self, size: int, n_slices: int) -> list[int]:
        """The slices to encode so that ``size`` are queued ahead (inside the volume)."""
        nxt = self.queue[-1][0] + self.step if self.queue else self.k
        count = max(0, size - len(self.queue))
        return [j for j in (nxt + i * self.step for i in range(count)) if 0 <= j < n_slices]


def _refill(session: Any, fronts: list[_Front], lookahead: int, seed: int | None = None) -> Any:
    """One encoder call that tops up the fronts' queues: ``lookahead`` slices (at least one
    per front) shared between them, after the seed if given (encoded first and returned). A
    front that can take less than its share (near the volume's edge, or near its structure's
    end) leaves the rest to the others."""
    extra = [] if seed is None else [seed]
    n = session.n_slices
    left = max(len(fronts), lookahead - len(extra))

    def limit(f: _Front, share: int) -> int:
        return min(share, NEAR_END_LOOKAHEAD) if f.near_end else share

    wanted: dict[int, list[int]] = {}
    order = sorted(fronts, key=lambda f: len(f.wanted(limit(f, left), n)))
    for i, f in enumerate(order):
        ks = f.wanted(limit(f, max(1, left // (len(order) - i))), n)
        wanted[f.step] = ks
        left -= len(ks)
    entries = iter(session.encode(extra + [k for f in fronts for k in wanted[f.step]]))
    first = next(entries) if extra else None
    for f in fronts:
        f.queue.extend((k, next(entries)) for k in wanted[f.step])
    return first


def propagate(
    session: Any,
    slice_index: int,
    prompt: Any,
    *,
    margin: float = DEFAULT_MARGIN,
    min_area: int = DEFAULT_MIN_AREA,
    direction: str = "both",
    lookahead: int | None = None,
) -> Any:
    """Segment the structure prompted on one slice through the whole volume.

    session: a :class:`~sam_unet.runtime.session.Session` (``engine.propagate`` makes one).
    slice_index: the prompted slice along the session's axis.
    prompt: a 2D box ``(x0, y0, x1, y1)`` (see the module docstring for the frame) or a 2D
        mask of the slice's shape (its foreground's bounding box is the prompt).
    margin: voxels added on every side of the previous slice's mask box (default 3).
    min_area: a slice whose mask has fewer voxels ends that direction (default 16); the seed
        slice is kept whatever its area, but the walk starts only if it reaches ``min_area``.
    direction: "both" (default), "forward" (increasing slice index) or "backward".
    lookahead: slices per encoder call ahead of the walk, shared by the directions still
        walking (default min(8, session batch)).

    Returns a uint8 {0, 1} mask of the volume's shape and array kind. The session's
    ``last_propagation`` holds a :class:`PropagationReport`.
    """
    t_start = time.perf_counter()
    if lookahead is None:
        lookahead = min(DEFAULT_LOOKAHEAD, session.batch_size)
    _check_options(float(margin), min_area, direction, lookahead)
    k0 = session.check_slice(slice_index)
    box0 = seed_box(session, k0, prompt)
    stats = session.stats
    before = (stats.encoded_slices, stats.encoder_calls, stats.decoder_calls + stats.full_runs)
    report = PropagationReport(seed=k0)
    out = session.new_mask()
    shape = session.slice_shape
    fronts = [_Front(s, k0 + s, box0) for s, name in ((1, "forward"), (-1, "backward"))
              if direction in ("both", name)]
    used: dict[int, list[float]] = {}

    def step(ks: list[int], boxes: list[np.ndarray], entries: list[Any] | None) -> list[Any]:
        """Decode slices ``ks`` with slice-frame ``boxes`` in one call; write their masks;
        (area, box) of each."""
        for k, b in zip(ks, boxes, strict=True):
            used[k] = [float(v) for v in b]
        mboxes = np.stack([session.model_box(b) for b in boxes])
        if entries is not None:
            logits = session.decode_batch(entries, mboxes)
        else:
            logits = session.run_full_batch(ks, mboxes)
        extents = []
        for i, k in enumerate(ks):
            session.write_slice(logits[i:i + 1], out, k)
            extents.append(mask_extent(session.slice_of(out, k)))
        return extents

    seed_entry = _refill(session, fronts, lookahead, seed=k0) if session.can_split else None
    ((area, box),) = step([k0], [box0], None if seed_entry is None else [seed_entry])
    written = [k0] if area else []
    largest = area
    if area < min_area:
        why = "empty" if area == 0 else f"{area} voxels < min_area {min_area}"
        for f in fronts:
            report.stopped[f.name] = f"the seed slice's mask is {why}"
        fronts, stopped = [], list(fronts)
    else:
        for f in fronts:
            f.box = box
        stopped = []
    while fronts:
        for f in [f for f in fronts if not 0 <= f.k < session.n_slices]:
            report.stopped[f.name] = f"reached the volume's edge after slice {f.k - f.step}"
            fronts.remove(f)
            stopped.append(f)
        if not fronts:
            break
        if session.can_split and any(not f.queue for f in fronts):
            _refill(session, fronts, lookahead)
        entries = None
        if session.can_split:
            entries = []
            for f in fronts:
                j, entry = f.queue.popleft()
                assert j == f.k, (j, f.k)
                entries.append(entry)
        ks = [f.k for f in fronts]
        results = step(ks, [grow_box(f.box, margin, shape) for f in fronts], entries)
        for f, (a, b) in zip(list(fronts), results, strict=True):
            if a < min_area:
                if a:
                    session.slice_of(out, f.k)[...] = 0
                report.stopped[f.name] = f"slice {f.k}: mask of {a} voxels < min_area {min_area}"
                fronts.remove(f)
                stopped.append(f)
                continue
            written.append(f.k)
            largest = max(largest, a)
            f.near_end = a < NEAR_END_FRACTION * largest
            f.box, f.k = b, f.k + f.step
    report.slices = sorted(written)
    report.boxes = {k: used[k] for k in report.slices}
    report.unused = sum(len(f.queue) for f in stopped)
    report.encoded = stats.encoded_slices - before[0]
    report.encoder_calls = stats.encoder_calls - before[1]
    report.decoder_calls = stats.decoder_calls + stats.full_runs - before[2]
    report.seconds = time.perf_counter() - t_start
    session.last_propagation = report
    from sam_unet.runtime.volumes import to_caller_kind

    return to_caller_kind(out, session.view)


@dataclass(frozen=True)
class SeedPrompt:
    """A propagation prompt: a 2D ``box`` (x0, y0, x1, y1) on slice ``slice_index`` along the
    slicing axis, and the walk's options (see :func:`propagate`). In the frame of the volume it
    is applied to (see :func:`seed_to_canonical` for a file's own voxel frame)."""

    slice_index: int
    box: tuple[float, float, float, float]
    margin: float = DEFAULT_MARGIN
    min_area: int = DEFAULT_MIN_AREA
    direction: str = "both"

    def options(self) -> dict[str, Any]:
        return {"margin": self.margin, "min_area": self.min_area, "direction": self.direction}


def seed_to_canonical(volume: Any, axis: int, seed: SeedPrompt) -> SeedPrompt:
    """A seed given in a file's own voxel frame (``slice_index`` along the file axis that
    becomes the canonical slicing ``axis``, the box over the two other file axes in increasing
    order) -> the same seed on ``volume.data`` (a :class:`sam_unet.io.volume.Volume`). A
    reorientation that reverses the slicing axis swaps "forward" and "backward"."""
    k = int(seed.slice_index)
    mapped, _ = volume.prompts_to_canonical(axis, boxes={k: seed.box})
    ((k2, box2),) = mapped.items()
    direction = seed.direction
    if direction != "both" and volume.transform[volume.file_axis(axis), 1] < 0:
        direction = "backward" if direction == "forward" else "forward"
    return SeedPrompt(int(k2), tuple(float(v) for v in box2), seed.margin, seed.min_area,
                      direction)


def walked_structures(engine: Any, volume: Any, structures: list[Any], **feed: Any) -> list[Any]:
    """``structures`` (StructurePrompt) with each ``propagate`` seed replaced by the per-slice
    boxes its walk decoded with, so ``segment_structures`` gives the same mask for it as
    ``engine.propagate`` and resolves overlaps with the others by logit. ``feed``: axis,
    window, normalize, batch_size."""
    import dataclasses

    out = []
    for s in structures:
        seed = getattr(s, "propagate", None)
        if seed is None:
            out.append(s)
            continue
        engine.propagate(volume, seed.slice_index, seed.box, **feed, **seed.options())
        boxes = engine.last_propagation.boxes
        if not boxes:
            raise ValueError(f"structure {s.name!r}: the seed box on slice {seed.slice_index} "
                             "gives an empty mask; draw the box around the structure")
        out.append(dataclasses.replace(s, boxes=boxes, propagate=None))
    return out

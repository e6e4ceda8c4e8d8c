"""Volume prompts -> the slices to compute and one model-frame box per slice.

A prompt for a volume is one of:

- ``None``: every slice is computed with the full-slice box (models trained with full boxes);
- a 3D box ``(x0, y0, z0, x1, y1, z1)`` in voxel indices of the volume's axes 0, 1, 2
  (inclusive corners); slices along ``axis`` outside the box are not computed and stay 0, and
  inside it the slice's box is the 3D box's extent on the two remaining axes;
- per-slice 2D boxes: an array (S, 4) with one ``(x0, y0, x1, y1)`` per slice along ``axis``
  (NaN rows mean "not computed"), or a dict ``{slice_index: (x0, y0, x1, y1)}``;
- a coarse mask volume of the volume's shape: each slice with foreground gets the bounding box
  of its largest 8-connected component; empty slices are not computed.

2D boxes: ``x`` runs over the first of the two remaining array axes and ``y`` over
the second, corners inclusive: on axial slices of an (X, Y, Z) volume x is axis 0 and y axis 1,
the same letters as the 3D box. A mask covering only voxel ``vol[i, j, k]`` has the 2D box
(i, j, i, j) on slice k. The engine converts to the model's frame (x = image column) itself.

A :class:`StructurePrompt` is one named structure's prompt for ``Engine.segment_structures``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam_unet.runtime.plan import SliceGeometry


@dataclass(frozen=True)
class StructurePrompt:
    """One structure to segment: its ``name``, its ``label`` value (1..255) in the label map,
    and its prompt (``boxes`` / ``box_mask`` as for ``Engine.segment``, in the volume's voxel
    frame; both None: the full-slice box on every slice), or ``propagate``: a
    :class:`~sam_unet.runtime.propagate.SeedPrompt` (one box on one slice, followed through the
    volume; the structure is then decoded with the boxes of that walk)."""

    name: str
    label: int
    boxes: Any = None
    box_mask: Any = None
    propagate: Any = None


def mask_slice_box(mask2d: np.ndarray) -> np.ndarray | None:
    """Slice-frame ``(x0, y0, x1, y1)`` (x over the slice's first axis) of the largest
    8-connected component of a 2D mask, or None when it is empty."""
    from sam_unet.data.prompts import mask_box

    box = mask_box(mask2d)  # (col0, row0, col1, row1)
    return None if box is None else box[[1, 0, 3, 2]]


def _check_box2d(box: np.ndarray, k: int, geo: SliceGeometry) -> None:
    if box.shape != (4,):
        raise ValueError(f"box for slice {k} must have 4 numbers (x0, y0, x1, y1), got {box.size}")
    if not np.all(np.isfinite(box)):
        raise ValueError(f"box for slice {k} is not finite: {box.tolist()}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box for slice {k} has x1 < x0 or y1 < y0: {box.tolist()}")
    if x0 < 0 or y0 < 0 or x1 > geo.height - 1 or y1 > geo.width - 1:
        raise ValueError(
            f"box for slice {k} {box.tolist()} lies outside the slice (x over axis "
            f"{geo.row_axis} in [0, {geo.height - 1}], y over axis {geo.col_axis} in "
            f"[0, {geo.width - 1}])"
        )


def _is_mask_volume(boxes: object, shape: tuple[int, int, int]) -> bool:
    return hasattr(boxes, "shape") and np.ndim(boxes) == 3 and tuple(boxes.shape) == shape


def slice_prompts(geo: SliceGeometry, boxes: object = None, *, box_mask: object = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Turn a prompt into the slices to compute and their boxes in the model's frame.

    Returns (indices int64 (N,) sorted, boxes float32 (N, 4) in the 256 frame). ``boxes`` is
    None, a 3D box (6 numbers), per-slice boxes ((S, 4) array or dict), or a mask volume of the
    volume's shape (also accepted as ``box_mask``; nonzero = foreground). Raises ValueError
    naming the problem for boxes outside the volume or of the wrong shape.
    """
    n_slices = geo.n_slices
    if boxes is None and box_mask is None:
        idx = np.arange(n_slices, dtype=np.int64)
        return idx, np.tile(geo.full_slice_box(), (n_slices, 1))

    if box_mask is not None or _is_mask_volume(boxes, geo.shape):
        mask = np.asarray(box_mask if box_mask is not None else boxes)
        if mask.shape != geo.shape:
            raise ValueError(f"prompt mask has shape {mask.shape}, the volume has {geo.shape}")
        moved = np.moveaxis(mask, geo.axis, 0)
        found = [(k, mask_slice_box(moved[k])) for k in range(n_slices)]
        idx_list = [k for k, b in found if b is not None]
        return _to_model(geo, idx_list, [b for _, b in found if b is not None])

    if isinstance(boxes, Mapping):
        items = sorted((int(k), np.asarray(v, dtype=np.float64).reshape(-1))
                       for k, v in boxes.items())
        for k, b in items:
            if not 0 <= k < n_slices:
                raise ValueError(f"box given for slice {k}, but axis {geo.axis} has {n_slices} "
                                 "slices")
            _check_box2d(b, k, geo)
        return _to_model(geo, [k for k, _ in items], [b for _, b in items])

    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape == (6,):
        lo, hi = arr[:3], arr[3:]
        if np.any(~np.isfinite(arr)) or np.any(hi < lo):
            raise ValueError(f"3D box must be finite with x1>=x0, y1>=y0, z1>=z0: {arr.tolist()}")
        limits = np.asarray(geo.shape, dtype=np.float64) - 1
        if np.any(lo < 0) or np.any(hi > limits):
            raise ValueError(
                f"3D box {arr.tolist()} lies outside the volume of shape {geo.shape} "
                f"(voxel indices 0..{[int(v) for v in limits]})"
            )
        a0, a1 = int(np.floor(lo[geo.axis])), int(np.ceil(hi[geo.axis]))
        idx = np.arange(a0, a1 + 1, dtype=np.int64)
        r, c = geo.row_axis, geo.col_axis
        box2d = np.array([lo[r], lo[c], hi[r], hi[c]])
        return _to_model(geo, idx, [box2d] * len(idx))
    if arr.ndim == 2 and arr.shape[1] == 4:
        if arr.shape[0] != n_slices:
            raise ValueError(
                f"per-slice boxes have {arr.shape[0]} rows, axis {geo.axis} has {n_slices} slices"
            )
        idx = np.flatnonzero(~np.isnan(arr).any(axis=1))
        for k in idx:
            _check_box2d(arr[k], int(k), geo)
        return _to_model(geo, idx, arr[idx])
    raise ValueError(
        "boxes must be None, a 3D box (x0, y0, z0, x1, y1, z1), per-slice boxes of shape "
        f"({n_slices}, 4) or a dict, or a mask volume of shape {geo.shape}; got an array of "
        f"shape {arr.shape}"
    )


def _to_model(geo: SliceGeometry, idx: Any, boxes: Any) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if len(idx) == 0:
        return idx, np.zeros((0, 4), np.float32)
    return idx, geo.to_model_frame(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def check_structures(structures: Any) -> list[StructurePrompt]:
    """Validate a sequence of :class:`StructurePrompt`: at least one, labels 1..255, distinct
    names and labels. Returns them as a list."""
    items = list(structures)
    if not items:
        raise ValueError("structures is empty: give at least one StructurePrompt")
    for s in items:
        if not isinstance(s, StructurePrompt):
            raise TypeError(f"structures must hold StructurePrompt, got {type(s).__name__}")
        if isinstance(s.label, bool) or not isinstance(s.label, (int, np.integer)) \
                or not 1 <= int(s.label) <= 255:
            raise ValueError(f"structure {s.name!r}: label must be an integer in 1..255 (0 is "
                             f"the background), got {s.label!r}")
    for attr in ("name", "label"):
        values = [getattr(s, attr) for s in items]
        dup = sorted({v for v in values if values.count(v) > 1}, key=str)
        if dup:
            raise ValueError(f"structures share a {attr}: {dup}; each needs its own")
    return items

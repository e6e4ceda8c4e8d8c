"""Volume prompts -> one 2D box per computed slice.

A prompt for a volume is one of:

- ``None``: every slice is computed with the full-slice box (models trained with full boxes);
- a 3D box ``(x0, y0, z0, x1, y1, z1)`` in voxel indices of the volume's axes 0, 1, 2
  (inclusive corners); slices along ``axis`` outside ``[a0, a1]`` are not computed and stay 0,
  and inside it the in-slice box is the box's extent on the two remaining axes;
- per-slice 2D boxes: an array (S, 4) with one ``(x0, y0, x1, y1)`` per slice along ``axis``
  (NaN rows mean "not computed"), or a dict ``{slice_index: (x0, y0, x1, y1)}``;
- a coarse mask volume of the volume's shape: each slice with foreground gets the bounding box
  of its largest connected component; empty slices are not computed.

2D boxes are in slice pixel coordinates: ``x`` indexes columns (W, the second remaining axis)
and ``y`` rows (H, the first remaining axis), corners inclusive, as a mask's bounding box.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlicePlan:
    """Which slices to compute and with which box.

    indices: int64 (N,) sorted slice indices along the slicing axis.
    boxes: float32 (N, 4) ``(x0, y0, x1, y1)`` in original slice pixels, inclusive corners.
    """

    indices: np.ndarray
    boxes: np.ndarray

    def runs(self) -> list[tuple[int, int, int]]:
        """Contiguous runs as ``(position_in_plan, first_slice, length)``."""
        out: list[tuple[int, int, int]] = []
        start = 0
        for i in range(1, len(self.indices) + 1):
            if i == len(self.indices) or self.indices[i] != self.indices[i - 1] + 1:
                if i > start:
                    out.append((start, int(self.indices[start]), i - start))
                start = i
        return out


def full_slice_box(height: int, width: int) -> np.ndarray:
    """The box covering a whole (height, width) slice, in slice pixels.

    Chosen so that after scaling by (w'/W, h'/H) it is exactly the training full-slice box
    ``(0, 0, w' - 1, h' - 1)`` of the 256 frame (see sam_unet.data.prompts.full_box).
    """
    from sam_unet.transforms import resized_shape

    h2, w2 = resized_shape(height, width)
    return np.array([0.0, 0.0, (w2 - 1.0) * width / w2, (h2 - 1.0) * height / h2],
                    dtype=np.float32)


def _slice_axes(axis: int) -> tuple[int, int]:
    rest = [a for a in range(3) if a != axis]
    return rest[0], rest[1]  # (row axis H, column axis W)


def largest_component_box(mask2d: np.ndarray) -> np.ndarray | None:
    """Inclusive ``(x0, y0, x1, y1)`` of the largest 8-connected component, or None if empty."""
    from scipy import ndimage

    fg = np.asarray(mask2d) != 0
    if not fg.any():
        return None
    labels, count = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(np.argmax(sizes))
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def _check_box2d(box: np.ndarray, k: int, height: int, width: int) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    if not np.all(np.isfinite(box)):
        raise ValueError(f"box for slice {k} is not finite: {box.tolist()}")
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box for slice {k} has x1 < x0 or y1 < y0: {box.tolist()}")
    if x0 < 0 or y0 < 0 or x1 > width - 1 or y1 > height - 1:
        raise ValueError(
            f"box for slice {k} {box.tolist()} lies outside the slice "
            f"(x in [0, {width - 1}], y in [0, {height - 1}])"
        )


def plan_slices(shape: tuple[int, int, int], axis: int, boxes: object = None,
                *, box_mask: object = None) -> SlicePlan:
    """Turn a prompt into a :class:`SlicePlan` for a volume of ``shape`` sliced along ``axis``.

    ``boxes`` is None, a 3D box (6 numbers), per-slice boxes ((S, 4) array or dict), or a mask
    volume of ``shape`` (any dtype; nonzero = foreground). Raises ValueError naming the problem
    for boxes outside the volume or of the wrong shape.
    """
    if axis < -3 or axis > 2:
        raise ValueError(f"axis must be in [-3, 2] for a 3D volume, got {axis}")
    axis = axis % 3
    n_slices = shape[axis]
    row_ax, col_ax = _slice_axes(axis)
    height, width = shape[row_ax], shape[col_ax]

    if boxes is None and box_mask is None:
        idx = np.arange(n_slices, dtype=np.int64)
        return SlicePlan(idx, np.tile(full_slice_box(height, width), (n_slices, 1)))

    if box_mask is not None or (hasattr(boxes, "shape") and tuple(boxes.shape) == tuple(shape)
                                and len(shape) == 3 and np.ndim(boxes) == 3):
        mask = np.asarray(box_mask if box_mask is not None else boxes)
        if mask.shape != tuple(shape):
            raise ValueError(f"prompt mask has shape {mask.shape}, the volume has {tuple(shape)}")
        idx_list, box_list = [], []
        moved = np.moveaxis(mask, axis, 0)
        for k in range(n_slices):
            b = largest_component_box(moved[k])
            if b is not None:
                idx_list.append(k)
                box_list.append(b)
        return SlicePlan(np.asarray(idx_list, dtype=np.int64),
                         np.asarray(box_list, dtype=np.float32).reshape(-1, 4))

    if isinstance(boxes, Mapping):
        items = sorted((int(k), np.asarray(v, dtype=np.float64).reshape(-1)) for k, v in
                       boxes.items())
        idx_list, box_list = [], []
        for k, b in items:
            if not 0 <= k < n_slices:
                raise ValueError(f"box given for slice {k}, but axis {axis} has {n_slices} slices")
            if b.shape != (4,):
                raise ValueError(f"box for slice {k} must have 4 numbers, got {b.size}")
            _check_box2d(b, k, height, width)
            idx_list.append(k)
            box_list.append(b)
        return SlicePlan(np.asarray(idx_list, dtype=np.int64),
                         np.asarray(box_list, dtype=np.float32).reshape(-1, 4))

    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape == (6,):
        lo, hi = arr[:3], arr[3:]
        if np.any(~np.isfinite(arr)) or np.any(hi < lo):
            raise ValueError(f"3D box must be finite with x1>=x0, y1>=y0, z1>=z0: {arr.tolist()}")
        limits = np.asarray(shape, dtype=np.float64) - 1
        if np.any(lo < 0) or np.any(hi > limits):
            raise ValueError(
                f"3D box {arr.tolist()} lies outside the volume of shape {tuple(shape)} "
                f"(voxel indices 0..{[int(v) for v in limits]})"
            )
        a0, a1 = int(np.floor(lo[axis])), int(np.ceil(hi[axis]))
        idx = np.arange(a0, a1 + 1, dtype=np.int64)
        box2d = np.array([lo[col_ax], lo[row_ax], hi[col_ax], hi[row_ax]], dtype=np.float32)
        return SlicePlan(idx, np.tile(box2d, (len(idx), 1)))
    if arr.ndim == 2 and arr.shape[1] == 4:
        if arr.shape[0] != n_slices:
            raise ValueError(
                f"per-slice boxes have {arr.shape[0]} rows, axis {axis} has {n_slices} slices"
            )
        keep = ~np.isnan(arr).any(axis=1)
        idx = np.flatnonzero(keep).astype(np.int64)
        for k in idx:
            _check_box2d(arr[k], int(k), height, width)
        return SlicePlan(idx, arr[keep].astype(np.float32))
    raise ValueError(
        "boxes must be None, a 3D box (x0, y0, z0, x1, y1, z1), per-slice boxes of shape "
        f"({n_slices}, 4) or a dict, or a mask volume of shape {tuple(shape)}; got an array of "
        f"shape {arr.shape}"
    )

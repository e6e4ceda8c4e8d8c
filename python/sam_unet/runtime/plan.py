"""The plan of a segmentation: slice geometry computed once, the slices to compute, and each
slice's box already in the model's 256 frame; cut into slabs of at most B slices.

Slice geometry: a volume of shape (X, Y, Z) sliced along ``axis`` gives 2D slices whose rows
run along the first remaining axis (H) and columns along the second (W):
``axis=2`` gives ``vol[:, :, k]`` with H = X, W = Y. The model sees each slice resized so its
longest side is 256: (h', w') = ``transforms.resized_shape(H, W)``. This module is the only place
that computes these numbers for the engine.

Box frames: a 2D prompt box ``(x0, y0, x1, y1)`` names the remaining array axes in increasing
order (x over the row axis, y over the column axis), inclusive voxel corners. The model's frame
names the image column first: ``(column0, row0, column1, row1)`` scaled by (w'/W, h'/H).
:meth:`SliceGeometry.to_model_frame` is the one conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam_unet.transforms import resized_shape, scale_boxes


@dataclass(frozen=True)
class SliceGeometry:
    """How a volume of ``shape`` is cut into slices along ``axis`` (normalised to 0..2).

    row_axis, col_axis: the array axes of the slice's rows (H) and columns (W).
    resized: (h', w') of every slice in the model's frame.
    """

    shape: tuple[int, int, int]
    axis: int
    row_axis: int
    col_axis: int
    n_slices: int
    height: int
    width: int
    resized: tuple[int, int]

    @classmethod
    def of(cls, shape: tuple[int, ...], axis: int) -> SliceGeometry:
        """Geometry of a 3D ``shape`` sliced along ``axis`` in [-3, 2] (ValueError otherwise)."""
        if len(shape) != 3:
            raise ValueError(f"expected a 3D shape, got {tuple(shape)}")
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
                or not -3 <= int(axis) <= 2:
            raise ValueError(f"axis must be an integer in [-3, 2] for a 3D volume, got {axis!r}")
        axis = int(axis) % 3
        row_axis, col_axis = (a for a in range(3) if a != axis)
        shape = tuple(int(s) for s in shape)
        height, width = shape[row_axis], shape[col_axis]
        return cls(shape, axis, row_axis, col_axis, shape[axis], height, width,  # type: ignore
                   resized_shape(height, width))

    def full_slice_box(self) -> np.ndarray:
        """The whole resized slice in the model frame, ``(0, 0, w' - 1, h' - 1)`` float32: the
        box full-slice models were trained with (padding excluded)."""
        h2, w2 = self.resized
        return np.array([0.0, 0.0, w2 - 1.0, h2 - 1.0], dtype=np.float32)

    def to_model_frame(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) slice-frame boxes ``(x0, y0, x1, y1)`` (x over the row axis) -> float32 (N, 4)
        model-frame boxes ``(col0, row0, col1, row1)`` scaled by (w'/W, h'/H)."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return scale_boxes(b[:, [1, 0, 3, 2]], (self.height, self.width), self.resized)


@dataclass(frozen=True)
class Slab:
    """Positions ``[start, start + n)`` of a plan: ``runs`` are (offset in the slab, first
    slice, length) of its contiguous slice runs."""

    start: int
    n: int
    runs: tuple[tuple[int, int, int], ...]

    @property
    def positions(self) -> slice:
        return slice(self.start, self.start + self.n)


@dataclass(frozen=True)
class Plan:
    """What to compute.

    geometry: the slice geometry.
    indices: int64 (N,) sorted, distinct slice indices along the slicing axis.
    boxes: float32 (K, N, 4) model-frame boxes of K structures (``segment``: K = 1); a NaN row
        means structure k does not need slice ``indices[i]``.
    labels: the K structures' output labels (``segment``: (1,)).
    """

    geometry: SliceGeometry
    indices: np.ndarray
    boxes: np.ndarray
    labels: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if self.boxes.shape != (len(self.labels), len(self.indices), 4):
            raise ValueError(f"plan boxes {self.boxes.shape} do not match {len(self.labels)} "
                             f"structures x {len(self.indices)} slices")

    @property
    def present(self) -> np.ndarray:
        """bool (K, N): structure k is computed on slice ``indices[i]``."""
        return ~np.isnan(self.boxes[..., 0])

    def slab_size(self, batch: int) -> int:
        """Slices per slab: ``batch``, but never more than the plan holds (buffers are sized
        by the slices at hand, not by the batch asked for)."""
        if int(batch) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch}")
        return max(1, min(int(batch), len(self.indices)))

    def slabs(self, batch: int) -> list[Slab]:
        """Consecutive groups of at most ``slab_size(batch)`` planned slices."""
        size = self.slab_size(batch)
        out = []
        for start in range(0, len(self.indices), size):
            idx = self.indices[start:start + size]
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            firsts = np.concatenate([[0], breaks])
            lengths = np.diff(np.concatenate([firsts, [len(idx)]]))
            runs = tuple((int(o), int(idx[o]), int(m)) for o, m in zip(firsts, lengths,
                                                                         strict=True))
            out.append(Slab(start, len(idx), runs))
        return out


def merge_prompts(geometry: SliceGeometry, prompts: list[tuple[np.ndarray, np.ndarray]],
                  labels: tuple[int, ...]) -> Plan:
    """One plan from K (indices (Nk,), model-frame boxes (Nk, 4)) prompts: the union of their
    slices, each structure's boxes at its own slices and NaN elsewhere."""
    union = np.unique(np.concatenate([np.asarray(i, np.int64) for i, _ in prompts]
                                     + [np.zeros(0, np.int64)]))
    boxes = np.full((len(prompts), len(union), 4), np.nan, dtype=np.float32)
    for k, (idx, b) in enumerate(prompts):
        boxes[k, np.searchsorted(union, idx)] = b
    return Plan(geometry, union, boxes, tuple(int(v) for v in labels))

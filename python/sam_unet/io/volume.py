"""A loaded volume, whatever file format it came from, and the mapping of its voxel frame.

A file stores voxels in its own axis order (its *voxel frame*); segmentation runs on the same
voxels reoriented to the closest canonical (RAS+) order. :class:`Volume` holds the canonical
array and what is needed to go back and forth: arrays with :meth:`Volume.to_canonical` /
:meth:`Volume.to_original`, and prompts (3D boxes, per-slice 2D boxes, mask volumes) given in the
file's voxel frame with :meth:`Volume.prompts_to_canonical`. NIfTI files (``io/nifti.py``) and
DICOM series load into this one class.

Frames (x, y, z name array axes 0, 1, 2): a 3D box is ``(x0, y0, z0, x1, y1, z1)`` over axes
0, 1, 2, corners inclusive; a 2D box on a slice is ``(a0, b0, a1, b1)`` over the two remaining
axes in increasing order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PromptError", "Volume"]


class PromptError(ValueError):
    """A prompt that does not fit the volume it was given with (message says why)."""


@dataclass
class Volume:
    """A volume in closest-canonical (RAS+) orientation plus what is needed to undo it.

    path: the file (or series folder) it was read from, or None.
    data: (X, Y, Z) array in canonical RAS+ order; often a view (flipped/transposed, possibly a
        read-only memory map) of the file's array, so read it, never write it. Its dtype is the
        stored one (any integer or float type, either byte order) unless the file scales its
        values (then float32, or float64 where float32 would lose precision).
    affine: (4, 4) float64, the file's voxel (i, j, k) -> world (RAS mm) transform.
    header: the format's header (nibabel Nifti1Header / Nifti2Header), or None.
    canonical_affine: (4, 4) float64, the canonical voxels -> world transform.
    transform: (3, 2) nibabel orientation transform, file voxel axes -> canonical axes: file
        axis ``i`` becomes canonical axis ``transform[i, 0]``, reversed when
        ``transform[i, 1] == -1``. ``inverse_transform`` goes back.
    original_shape: the file's 3D voxel shape (X, Y, Z) in its own axis order.
    file_shape: the shape as stored (e.g. (X, Y, Z, 1) for a 4D file with one volume, (X, Y)
        for a 2D image); outputs are written with this shape.
    zooms: voxel sizes (mm) of the file's axes 0, 1, 2.
    source_format: "nifti" (or "dicom" for a series).
    """

    path: Path | None
    data: np.ndarray
    affine: np.ndarray
    header: Any
    canonical_affine: np.ndarray
    transform: np.ndarray
    original_shape: tuple[int, ...]
    inverse_transform: np.ndarray
    zooms: tuple[float, ...] = field(default=())
    file_shape: tuple[int, ...] = field(default=())
    source_format: str = "nifti"

    def __post_init__(self) -> None:
        if not self.file_shape:
            self.file_shape = tuple(self.original_shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """The canonical (X, Y, Z) shape."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def axcodes(self) -> tuple[str, ...]:
        """Orientation codes of the file's voxel axes (e.g. ('L', 'P', 'S'))."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))

    def _where(self) -> str:
        return f" of {self.path}" if self.path else ""

    # ------------------------------------------------------------------ arrays
    def to_original(self, array: np.ndarray) -> np.ndarray:
        """An array in canonical order (shape ``data.shape``) -> the file's voxel order (3D)."""
        import nibabel as nib

        array = np.asarray(array)
        if array.shape[:3] != self.shape[:3]:
            raise ValueError(
                f"array of shape {array.shape} does not match the canonical volume shape "
                f"{self.shape}{self._where()}"
            )
        out = nib.orientations.apply_orientation(array, self.inverse_transform)
        return np.ascontiguousarray(out)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """An array in the file's voxel order (shape ``original_shape``) -> canonical order."""
        import nibabel as nib

        array = np.asarray(array)
        if array.shape[:3] != tuple(self.original_shape[:3]):
            raise ValueError(
                f"array of shape {array.shape} does not match the file's shape "
                f"{self.original_shape}{self._where()}"
            )
        return np.ascontiguousarray(nib.orientations.apply_orientation(array, self.transform))

    def to_file_shape(self, array: np.ndarray) -> np.ndarray:
        """An array in canonical order -> the file's voxel order and stored shape."""
        return self.to_original(array).reshape(self.file_shape)

    # ------------------------------------------------------------------ axes and prompts
    def canonical_axis(self, file_axis: int) -> int:
        """The canonical axis that the file's voxel axis ``file_axis`` becomes."""
        return int(self.transform[file_axis % 3, 0])

    def file_axis(self, canonical_axis: int) -> int:
        """The file's voxel axis that becomes canonical axis ``canonical_axis``."""
        want = canonical_axis % 3
        return int(np.flatnonzero(self.transform[:, 0] == want)[0])

    def _interval_to_canonical(self, file_axis: int, lo: float, hi: float
                               ) -> tuple[int, float, float]:
        """File-frame inclusive interval [lo, hi] on ``file_axis`` -> (canonical axis, lo, hi)."""
        n = self.original_shape[file_axis]
        cax = int(self.transform[file_axis, 0])
        if self.transform[file_axis, 1] < 0:
            lo, hi = (n - 1) - hi, (n - 1) - lo
        return cax, float(lo), float(hi)

    def box3d_to_canonical(self, box: Any) -> np.ndarray:
        """A 3D box (x0, y0, z0, x1, y1, z1) in file voxels -> the same voxels' box in canonical
        voxels (float64 (6,)). Raises PromptError when the box is not finite, reversed or
        outside the file's voxel grid."""
        arr = np.asarray(box, dtype=np.float64).reshape(-1)
        if arr.shape != (6,):
            raise PromptError(f"a 3D box has 6 numbers (x0 y0 z0 x1 y1 z1), got {arr.size}; "
                              "give all 6")
        lo, hi = arr[:3], arr[3:]
        if not np.all(np.isfinite(arr)) or np.any(hi < lo):
            raise PromptError(f"3D box {arr.tolist()} must be finite with x1>=x0, y1>=y0, "
                              "z1>=z0; give the low corner first")
        limits = np.asarray(self.original_shape[:3], dtype=np.float64) - 1
        if np.any(lo < 0) or np.any(hi > limits):
            raise PromptError(
                f"3D box {arr.tolist()} lies outside the file's voxel grid "
                f"{tuple(self.original_shape)}; give voxel indices within "
                f"0..{[int(v) for v in limits]} on the file's axes 0, 1, 2 (as stored)"
            )
        out = np.empty(6, dtype=np.float64)
        for fax in range(3):
            cax, clo, chi = self._interval_to_canonical(fax, lo[fax], hi[fax])
            out[cax], out[3 + cax] = clo, chi
        return out

    def box2d_to_canonical(self, box: Any, file_axis: int) -> np.ndarray:
        """A 2D box (a0, b0, a1, b1) on a slice across file axis ``file_axis`` (over the two other
        file axes in increasing order) -> the box over the two other canonical axes in
        increasing order (float64 (4,))."""
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        fa, fb = [a for a in range(3) if a != file_axis]
        ca, a0, a1 = self._interval_to_canonical(fa, b[0], b[2])
        cb, b0, b1 = self._interval_to_canonical(fb, b[1], b[3])
        if ca < cb:
            return np.array([a0, b0, a1, b1])
        return np.array([b0, a0, b1, a1])

    def prompts_to_canonical(self, axis: int, boxes: Any = None, box_mask: Any = None
                             ) -> tuple[Any, Any]:
        """Map prompts given in the file's voxel frame to the canonical frame.

        axis: the slicing axis of the canonical volume (as passed to ``Engine.segment``).
        boxes: None; a 3D box (6 numbers) in file voxels; per-slice 2D boxes as a dict
            ``{k: (a0, b0, a1, b1)}`` or an (S, 4) array (NaN rows: no box) where ``k`` indexes
            the file axis that becomes ``axis`` and each box spans the two other file axes in
            increasing order; or a mask volume of the file's 3D shape.
        box_mask: a mask volume of the file's 3D shape (nonzero = structure).
        Returns ``(boxes, box_mask)`` for ``Engine.segment`` on :attr:`data`: a canonical 3D box
        (float64 (6,)), a dict of canonical per-slice boxes, or a canonical mask volume.
        Raises PromptError (a ValueError) for prompts that do not fit the file.
        """
        if box_mask is not None:
            return None, self._mask_to_canonical(box_mask)
        if boxes is None:
            return None, None
        if hasattr(boxes, "detach"):
            boxes = boxes.detach().cpu().numpy()
        if isinstance(boxes, Mapping):
            return self._slice_boxes_to_canonical(axis, boxes), None
        arr = np.asarray(boxes)
        if arr.ndim == 3:
            return None, self._mask_to_canonical(arr)
        arr = arr.astype(np.float64)
        if arr.size == 6 and arr.ndim == 1:
            return self.box3d_to_canonical(arr), None
        if arr.ndim == 2 and arr.shape[1] == 4:
            fax = self.file_axis(axis)
            if arr.shape[0] != self.original_shape[fax]:
                raise PromptError(
                    f"per-slice boxes have {arr.shape[0]} rows, but file axis {fax} (the one "
                    f"that becomes slicing axis {axis % 3}) has {self.original_shape[fax]} "
                    "slices; give one row per slice"
                )
            rows = {int(k): arr[k] for k in np.flatnonzero(~np.isnan(arr).any(axis=1))}
            return self._slice_boxes_to_canonical(axis, rows), None
        raise PromptError(
            "boxes must be a 3D box (x0, y0, z0, x1, y1, z1), per-slice boxes ({slice: box} or "
            f"an (S, 4) array) or a mask volume of the file's shape {tuple(self.original_shape)}; "
            f"got an array of shape {arr.shape}; give one of these forms"
        )

    def _mask_to_canonical(self, mask: Any) -> np.ndarray:
        if hasattr(mask, "detach"):
            mask = mask.detach().cpu().numpy()
        mask = np.asarray(mask)
        if mask.shape != tuple(self.original_shape[:3]):
            raise PromptError(
                f"prompt mask has shape {mask.shape}, the file's voxel grid is "
                f"{tuple(self.original_shape[:3])}; give a mask of the file's shape"
            )
        return self.to_canonical(mask)

    def _slice_boxes_to_canonical(self, axis: int, boxes: Mapping) -> dict[int, np.ndarray]:
        fax = self.file_axis(axis)
        n = self.original_shape[fax]
        fa, fb = [a for a in range(3) if a != fax]
        out: dict[int, np.ndarray] = {}
        for key, value in boxes.items():
            k = int(key)
            if not 0 <= k < n:
                raise PromptError(
                    f"box given for slice {k}, but file axis {fax} (the one that becomes slicing "
                    f"axis {axis % 3}) has {n} slices; give slice indices 0..{n - 1}"
                )
            b = np.asarray(value, dtype=np.float64).reshape(-1)
            if b.shape != (4,):
                raise PromptError(f"box for slice {k} must have 4 numbers, got {b.size}; "
                                  "give (a0, b0, a1, b1)")
            if not np.all(np.isfinite(b)) or b[2] < b[0] or b[3] < b[1]:
                raise PromptError(f"box for slice {k} {b.tolist()} must be finite with a1>=a0, "
                                  "b1>=b0; give the low corner first")
            wa, wb = self.original_shape[fa] - 1, self.original_shape[fb] - 1
            if b[0] < 0 or b[1] < 0 or b[2] > wa or b[3] > wb:
                raise PromptError(
                    f"box for slice {k} {b.tolist()} lies outside the slice (file axis {fa}: "
                    f"0..{wa}, file axis {fb}: 0..{wb}); give a box within the slice"
                )
            _, ck, _ = self._interval_to_canonical(fax, k, k)
            out[int(ck)] = self.box2d_to_canonical(b, fax)
        return out

"""Per-structure statistics of a label map: voxel count, volume, intensity, bounding box.

``structure_statistics`` returns a JSON-ready dict::

    {
      "input": "scan.nii.gz",
      "voxel_size_mm": [0.8, 0.8, 2.0],     # lengths of the affine's columns (file axes 0..2)
      "voxel_volume_mm3": 1.28,             # |det| of the affine's 3x3 part
      "intensity": "HU",                    # "HU" for CT series, else "stored value (scaled)"
      "structures": {
        "liver": {"label": 1, "voxels": 1200, "volume_mm3": 1536.0, "volume_ml": 1.536,
                  "intensity_mean": 54.2, "intensity_std": 11.9,
                  "bbox": [x0, y0, z0, x1, y1, z1]}
      }
    }

Intensities are the input's values after its scaling (NIfTI scl_slope/inter, DICOM rescale:
Hounsfield units for CT). The standard deviation is the population one (ddof 0), computed in
float64 around the mean. ``bbox`` is inclusive, in the input's own voxel frame (its array axes
as stored); ``null`` with mean and std for a structure without voxels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.io.volume import Volume

__all__ = ["structure_statistics", "write_statistics"]


def _bbox(mask: np.ndarray) -> list[int] | None:
    if not mask.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]))
    return lo + hi


def _intensity_kind(volume: Volume) -> str:
    series = getattr(volume, "series", None)
    if getattr(series, "modality", "") == "CT":
        return "HU"
    return "stored value (scaled)"


def structure_statistics(labels: np.ndarray, volume: Volume, label_names: Mapping[int, str],
                         *, canonical: bool = True) -> dict[str, Any]:
    """Statistics of every named structure (and of any unnamed label present).

    labels: uint8 label map, canonical (shape ``volume.shape``) or with ``canonical=False``
        in the input's voxel frame (``volume.original_shape``).
    volume: the input it was computed on (its ``data`` gives the intensities, its ``affine``
        the voxel volume).
    label_names: {label value: name}; unnamed values present get ``label <value>``.
    """
    labels = np.asarray(labels)
    if canonical:
        if labels.shape != volume.shape:
            raise ValueError(f"label map of shape {labels.shape} does not match the volume "
                             f"{volume.shape}")
        canon = labels
    else:
        canon = volume.to_canonical(labels)
    file_labels = volume.to_original(canon) if canonical else labels
    rzs = np.asarray(volume.affine, dtype=np.float64)[:3, :3]
    voxel_mm3 = float(abs(np.linalg.det(rzs)))
    names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
    present = {int(v) for v in np.unique(canon) if v != 0}
    names.update({v: f"label {v}" for v in sorted(present - set(names))})
    data = volume.data
    out: dict[str, Any] = {}
    for value in sorted(names):
        mask = canon == value
        count = int(mask.sum())
        entry: dict[str, Any] = {"label": value, "voxels": count,
                                 "volume_mm3": count * voxel_mm3,
                                 "volume_ml": count * voxel_mm3 / 1000.0}
        if count:
            values = np.asarray(data[mask], dtype=np.float64)
            mean = float(values.mean())
            entry["intensity_mean"] = mean
            entry["intensity_std"] = float(np.sqrt(np.mean((values - mean) ** 2)))
        else:
            entry["intensity_mean"] = entry["intensity_std"] = None
        entry["bbox"] = _bbox(file_labels == value)
        out[names[value]] = entry
    return {
        "input": str(volume.path) if volume.path is not None else None,
        "voxel_size_mm": [float(v) for v in np.sqrt((rzs ** 2).sum(axis=0))],
        "voxel_volume_mm3": voxel_mm3,
        "intensity": _intensity_kind(volume),
        "structures": out,
    }


def write_statistics(path: str | os.PathLike, stats: Mapping[str, Any]) -> Path:
    """Write statistics as indented JSON, atomically; returns the path."""
    from sam_unet.atomic import write_text_atomic

    return write_text_atomic(Path(path), json.dumps(stats, indent=2) + "\n")

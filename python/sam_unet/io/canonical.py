"""Build a :class:`~sam_unet.io.volume.Volume` from an array and its affine (any format).

Readers other than NIfTI (a DICOM series, SimpleITK images, an in-memory nibabel image) end
with an array in their own voxel frame and a voxel -> RAS mm affine; :func:`volume_from_array`
reorients it to the closest canonical (RAS+) order exactly as ``load_nifti`` does, so every
format segments the same voxels the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.io.volume import Volume

# LPS (DICOM, ITK) <-> RAS (NIfTI, this project): negate the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """A voxel -> LPS mm affine (4, 4) -> the voxel -> RAS mm affine (float64)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def volume_from_array(data: np.ndarray, affine: np.ndarray, *, path: Path | None = None,
                      header: Any = None, source_format: str = "nifti",
                      cls: type[Volume] = Volume, **extra: Any) -> Volume:
    """A volume whose file frame is ``data`` (3D, (X, Y, Z)) with voxel -> RAS ``affine``.

    The canonical data is a view of ``data`` in the closest RAS+ order (nibabel's
    ``io_orientation``); ``cls`` and ``extra`` let a format attach its own fields (a subclass
    of :class:`Volume`). ValueError for a non-3D array or a non-finite / singular affine.
    """
    import nibabel as nib

    data = np.asarray(data)
    if data.ndim != 3 or 0 in data.shape:
        raise ValueError(f"{path or 'volume'}: expected a non-empty 3D array, got shape "
                         f"{data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{path or 'volume'}: the affine must be a finite 4x4 matrix")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{path or 'volume'}: the affine is singular (a zero voxel size or "
                         "parallel axes)")
    shape = tuple(int(s) for s in data.shape)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    original = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(original, ras)
    inverse = nib.orientations.ornt_transform(ras, original)
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return cls(
        path=path,
        data=nib.orientations.apply_orientation(data, transform),
        affine=affine,
        header=header,
        canonical_affine=affine @ nib.orientations.inv_ornt_aff(transform, shape),
        transform=transform,
        original_shape=shape,
        inverse_transform=inverse,
        zooms=zooms,
        file_shape=shape,
        source_format=source_format,
        **extra,
    )

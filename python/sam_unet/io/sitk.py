"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) in, through SimpleITK (the ``sitk`` extra).

SimpleITK gives an image's geometry in LPS (origin, spacing, direction, whatever space the file
declares); the volume's affine maps its voxel indices (x, y, z as SimpleITK numbers them, the
file's own order) to RAS mm: ``RAS = diag(-1, -1, 1) @ [direction * spacing | origin]``. The
voxels load into the same :class:`~sam_unet.io.volume.Volume` as a NIfTI file, so a NRRD and its
NIfTI conversion segment identically. Outputs are NIfTI label maps with that affine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam_unet.io.canonical import lps_to_ras, volume_from_array
from sam_unet.io.volume import Volume

__all__ = ["SITK_EXTRA", "SITK_SUFFIXES", "SitkError", "is_sitk_path", "load_sitk",
           "sitk_geometry", "sitk_stem"]

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SITK_EXTRA = "pip install 'sam-unet[sitk]'"


class SitkError(ValueError):
    """A NRRD/MetaImage file that cannot be read as one 3D volume; the message says the fix."""


def is_sitk_path(path: str | os.PathLike) -> bool:
    """True for a name ending in .nrrd, .nhdr, .mha or .mhd (any case)."""
    return os.fspath(path).lower().endswith(SITK_SUFFIXES)


def sitk_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in SITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _sitk(path: Path):
    try:
        import SimpleITK
    except ImportError as exc:
        raise SitkError(f"{path}: reading {path.suffix} files needs SimpleITK; install it: "
                        f"{SITK_EXTRA} (or convert the file to NIfTI, e.g. with 3D Slicer or "
                        "c3d)") from exc
    return SimpleITK


def _affine(size: int, origin, spacing, direction) -> np.ndarray:
    """RAS affine (4, 4) of a 2D/3D SimpleITK geometry (2D grows a unit third axis)."""
    d = np.eye(3)
    d[:size, :size] = np.asarray(direction, dtype=np.float64).reshape(size, size)
    sp = np.ones(3)
    sp[:size] = spacing
    lps = np.eye(4)
    lps[:3, :3] = d * sp
    lps[:size, 3] = origin
    return lps_to_ras(lps)


def _reader(path: Path):
    sitk = _sitk(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise SitkError(f"{path}: cannot read the image header ({first}); the file is damaged "
                        "or not an image") from exc
    dim = reader.GetDimension()
    if dim not in (2, 3) and not (dim == 4 and reader.GetSize()[3] == 1):
        raise SitkError(f"{path}: a {dim}D image of size {reader.GetSize()}; segment one 3D "
                        "volume at a time")
    if reader.GetNumberOfComponents() != 1:
        raise SitkError(f"{path}: {reader.GetNumberOfComponents()} components per voxel (a "
                        "vector or colour image); give one gray channel")
    return reader


def sitk_geometry(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape (X, Y, Z), RAS affine) from the header alone."""
    path = Path(path)
    r = _reader(path)
    size = min(r.GetDimension(), 3)
    shape = tuple(int(s) for s in r.GetSize()[:size]) + (1,) * (3 - size)
    dim = r.GetDimension()
    direction = np.asarray(r.GetDirection()).reshape(dim, dim)[:size, :size]
    return shape, _affine(size, r.GetOrigin()[:size], r.GetSpacing()[:size], direction)


def load_sitk(path: str | os.PathLike) -> Volume:
    """Read a NRRD / MetaImage volume into a :class:`Volume` (canonical data, RAS affine).

    The stored voxel type is kept (any integer or float type); complex and vector images are
    refused. A 2D image is (X, Y, 1). Raises FileNotFoundError, or SitkError naming the file
    and the fix (including the extra to install when SimpleITK is absent).
    """
    path = Path(path)
    reader = _reader(path)
    sitk = _sitk(path)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise SitkError(f"{path}: cannot read the image data ({first}); the file is truncated "
                        "or damaged") from exc
    shape, affine = sitk_geometry(path)
    arr = sitk.GetArrayFromImage(img)  # NumPy order: ([t,] [z,] y, x)
    if arr.dtype.kind not in "iuf":
        raise SitkError(f"{path}: voxel type {arr.dtype} is not a real intensity; store it as "
                        "an integer or float type")
    data = arr.T.reshape(shape)  # (x, y, z), a view
    return volume_from_array(data, affine, path=path, source_format="sitk")

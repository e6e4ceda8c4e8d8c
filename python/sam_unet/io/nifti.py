"""NIfTI read/write with nibabel and orientation handling.

``load_nifti`` reads a ``.nii`` / ``.nii.gz`` file and reorients its data to the closest
canonical (RAS+) orientation, keeping what is needed to undo it; ``save_label_nifti`` writes a
uint8 label volume back with the input's affine and a header fit for labels, atomically
(temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam_unet.atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiError",
    "NiftiVolume",
    "is_nifti_path",
    "list_nifti",
    "load_nifti",
    "save_label_nifti",
]


class NiftiError(ValueError):
    """A NIfTI file that cannot be read or written; the message names the path."""


def is_nifti_path(path: str | os.PathLike) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_nifti(folder: str | os.PathLike) -> list[Path]:
    """The NIfTI files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti_path(p))


@dataclass
class NiftiVolume:
    """A volume in closest-canonical (RAS+) orientation plus what is needed to undo it.

    ``data`` has shape (X, Y, Z) in RAS+ orientation; ``affine`` and ``header`` are the file's;
    ``canonical_affine`` maps the voxels of ``data`` to world coordinates; ``transform`` is the
    nibabel orientation transform from the file's voxel axes to the canonical ones.
    """

    path: Path | None
    data: np.ndarray
    affine: np.ndarray
    header: object
    canonical_affine: np.ndarray
    transform: np.ndarray
    original_shape: tuple[int, ...]
    inverse_transform: np.ndarray
    zooms: tuple[float, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def axcodes(self) -> tuple[str, ...]:
        """Orientation codes of the file's voxel axes (e.g. ('L', 'P', 'S'))."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """An array in canonical orientation (shape ``data.shape``) -> the file's voxel order."""
        import nibabel as nib

        array = np.asarray(array)
        if array.shape[:3] != self.data.shape[:3]:
            raise ValueError(
                f"array of shape {array.shape} does not match the canonical volume shape "
                f"{self.data.shape}" + (f" of {self.path}" if self.path else "")
            )
        out = nib.orientations.apply_orientation(array, self.inverse_transform)
        return np.ascontiguousarray(out)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """An array in the file's voxel order -> canonical (RAS+) orientation."""
        import nibabel as nib

        array = np.asarray(array)
        if array.shape[:3] != tuple(self.original_shape[:3]):
            raise ValueError(
                f"array of shape {array.shape} does not match the file's shape "
                f"{self.original_shape}" + (f" of {self.path}" if self.path else "")
            )
        return np.ascontiguousarray(nib.orientations.apply_orientation(array, self.transform))


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise NiftiError(f"{path}: is a folder, expected a NIfTI file (.nii or .nii.gz)")
    if not is_nifti_path(path):
        raise NiftiError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    # Trailing singleton dimensions (e.g. (X, Y, Z, 1)) are dropped; anything else is an error.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    if 0 in data.shape:
        raise NiftiError(f"{path}: empty axis in shape {tuple(data.shape)}")
    return data


def load_nifti(
    path: str | os.PathLike, *, canonical: bool = True, dtype: np.dtype | None = None
) -> NiftiVolume:
    """Read a NIfTI file; data in closest-canonical orientation (unless ``canonical=False``).

    The stored integer type is kept when the file has no intensity scaling (scl_slope 1 or
    unset, scl_inter 0 or unset); otherwise the scaled values are returned as float32.
    ``dtype`` forces a type. Missing or unreadable files raise FileNotFoundError / NiftiError
    naming the path.
    """
    import nibabel as nib

    path = Path(path)
    _check_readable(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for corrupt files
        raise NiftiError(f"{path}: cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(f"{path}: not a NIfTI image ({type(img).__name__})")
    try:
        proxy = img.dataobj
        slope = getattr(proxy, "slope", 1.0)
        inter = getattr(proxy, "inter", 0.0)
        if (slope is None or slope == 1.0) and (inter is None or inter == 0.0):
            data = np.asanyarray(proxy)
        else:
            data = img.get_fdata(dtype=np.float32)
        if dtype is not None:
            data = np.asarray(data).astype(dtype, copy=False)
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short file, ...
        raise NiftiError(
            f"{path}: cannot read the image data ({type(exc).__name__}: {exc})") from exc
    data = _squeeze_to_3d(np.asarray(data), path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise NiftiError(f"{path}: affine has NaN/Inf entries")
    original_shape = tuple(int(s) for s in data.shape)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    if canonical:
        original = nib.orientations.io_orientation(affine)
        transform = nib.orientations.ornt_transform(original, ras)
        inverse = nib.orientations.ornt_transform(ras, original)
    else:
        transform = inverse = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    data_c = np.ascontiguousarray(nib.orientations.apply_orientation(data, transform))
    canonical_affine = affine @ nib.orientations.inv_ornt_aff(transform, original_shape)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    vol = NiftiVolume(
        path=path,
        data=data_c,
        affine=affine,
        header=img.header.copy(),
        canonical_affine=canonical_affine,
        transform=transform,
        original_shape=original_shape,
        inverse_transform=inverse,
        zooms=zooms,
    )
    return vol


def _label_header(like: NiftiVolume | None, mask: np.ndarray):
    import nibabel as nib

    if like is not None and isinstance(like.header, nib.Nifti1Header):
        header = like.header.copy()
        klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    else:
        header = nib.Nifti1Header()
        klass = nib.Nifti1Image
    header.set_data_shape(mask.shape)
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header.set_intent("label", (), name="labels")
    header["cal_min"] = 0
    header["cal_max"] = float(mask.max()) if mask.size else 0.0
    header["glmin"] = 0
    header["glmax"] = int(mask.max()) if mask.size else 0
    header["descrip"] = b"sam-unet labels"
    return header, klass


def save_label_nifti(
    path: str | os.PathLike,
    mask: np.ndarray,
    like: NiftiVolume | None = None,
    *,
    canonical: bool = True,
    affine: np.ndarray | None = None,
) -> Path:
    """Write ``mask`` as a uint8 label NIfTI, atomically.

    With ``like`` (the volume the mask was computed from) and ``canonical=True`` the mask is in
    canonical orientation (shape ``like.data.shape``) and is put back into the file's voxel
    order; the output has the input's affine (sform/qform and their codes) and header, with
    dtype uint8, scl_slope 1 / scl_inter 0, intent "label", cal_min 0 / cal_max max label.
    ``canonical=False`` means the mask is already in the file's voxel order. Without ``like``,
    ``affine`` (default identity) is used. The file is written to a temporary name in the same
    folder and renamed over ``path``; on any failure nothing is left behind.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        raise NiftiError(f"{path}: output name must end with .nii or .nii.gz")
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.ndim != 3:
        raise ValueError(f"{path}: label volume must be 3D, got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.dtype.kind not in "iuf" or (mask.size and (mask.min() < 0 or mask.max() > 255)):
            raise ValueError(f"{path}: labels must fit uint8, got dtype {mask.dtype}")
        if mask.dtype.kind == "f" and mask.size and not np.all(mask == np.round(mask)):
            raise ValueError(f"{path}: labels must be integers, got non-integer {mask.dtype}")
        mask = mask.astype(np.uint8)
    if like is not None:
        if canonical:
            mask = like.to_original(mask)
        elif mask.shape != tuple(like.original_shape):
            raise ValueError(
                f"{path}: mask shape {mask.shape} differs from the input's shape "
                f"{like.original_shape}"
            )
        out_affine = like.affine
    else:
        out_affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    header, klass = _label_header(like, mask)
    img = klass(mask, out_affine, header=header)
    if like is not None and isinstance(like.header, nib.Nifti1Header):
        qcode = int(like.header["qform_code"])
        scode = int(like.header["sform_code"])
        img.set_qform(out_affine, code=qcode if qcode > 0 else 1)
        img.set_sform(out_affine, code=scode if scode > 0 else (0 if qcode > 0 else 1))
    else:
        img.set_qform(out_affine, code=1)
        img.set_sform(out_affine, code=1)
    # Explicit identity scaling (nibabel would otherwise store NaN, "no scaling").
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: output folder {parent} does not exist")
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    try:
        with atomic_path(path, suffix=f".tmp{suffix}") as tmp:
            nib.save(img, str(tmp))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
    except (OSError, ValueError, RuntimeError) as exc:
        raise NiftiError(f"{path}: cannot write label NIfTI ({type(exc).__name__}: {exc})") \
            from exc
    return path

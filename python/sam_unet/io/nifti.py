"""NIfTI-1 and NIfTI-2 read/write with nibabel.

``load_nifti`` reads a ``.nii`` / ``.nii.gz`` file into a :class:`~sam_unet.io.volume.Volume`
whose data is in the closest canonical (RAS+) orientation, keeping what is needed to undo it;
``save_label_nifti`` writes a uint8 label volume back in the input's voxel order, shape, sform,
qform and codes, with a header fit for labels, atomically (temporary file in the same folder, then
``os.replace``).

Accepted voxel types: every integer (int8 .. uint64) and float (float32, float64) type NIfTI
stores, in either byte order. Complex, RGB, 1-bit and float128 files are refused with a message
that says how to convert them.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from sam_unet.atomic import atomic_path
from sam_unet.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")

# The one class for loaded volumes; the name the project has always used for it.
NiftiVolume = Volume

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiError",
    "NiftiVolume",
    "is_nifti_path",
    "list_nifti",
    "load_nifti",
    "nifti_geometry",
    "nifti_stem",
    "nifti_suffix",
    "save_label_nifti",
]

# NIfTI datatype codes nibabel cannot hold as a real intensity array, with the fix to offer.
_UNREADABLE_CODES = {
    1: "1-bit binary data (NIfTI datatype 1), which nibabel cannot read; store it as uint8",
    1536: "float128 data (NIfTI datatype 1536), which nibabel cannot read here; store it as "
          "float64",
    2048: "complex256 data (NIfTI datatype 2048), not an intensity image; store its magnitude "
          "as float64",
}


def _exc_text(exc: BaseException, path: Path | None = None) -> str:
    """``Class: message`` on one line (library messages may span several); ``path``, which
    the caller's message names already, is said as "it"."""
    text = " ".join(str(exc).split())
    if path is not None:
        for quoted in (f'"{path}"', f"'{path}'", str(path)):
            text = text.replace(quoted, "it")
    return f"{type(exc).__name__}: {text}"


class NiftiError(ValueError):
    """A NIfTI file that cannot be read or written; the message names the path and the fix."""


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True when the name ends in .nii or .nii.gz (any case)."""
    name = os.fspath(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def nifti_suffix(path: str | os.PathLike) -> str:
    """``".nii.gz"`` or ``".nii"`` (lower case) for a NIfTI name; ValueError otherwise."""
    name = os.fspath(path).lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_nifti(folder: str | os.PathLike) -> list[Path]:
    """The NIfTI files directly inside ``folder``, sorted by name.

    Hidden files (names starting with ".": leftovers of interrupted writes, macOS ``._*``
    metadata files) are never listed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.is_file() and is_nifti_path(p))


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise NiftiError(f"{path}: is a folder; give a NIfTI file (.nii or .nii.gz)")
    if not is_nifti_path(path):
        raise NiftiError(f"{path}: not a NIfTI file name; rename it to .nii or .nii.gz if it is "
                         "one")


def _raw_datatype(path: Path) -> int | None:
    """The datatype code of a NIfTI-1/2 header read by hand (None if unreadable)."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            head = fh.read(16)
    except Exception:  # noqa: BLE001 - zlib.error, EOFError, OSError: not a readable header
        return None
    if len(head) < 16:
        return None
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348:
            try:
                with opener(path, "rb") as fh:
                    fh.seek(70)
                    return struct.unpack(order + "h", fh.read(2))[0]
            except Exception:  # noqa: BLE001
                return None
        if size == 540:
            return struct.unpack(order + "h", head[12:14])[0]
    return None


def _compression_mismatch(path: Path) -> str:
    """What is wrong when the name and the gzip compression disagree ("" when they agree)."""
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as fh:
            head = fh.read(4)
    except Exception:  # noqa: BLE001 - unreadable either way: not a naming problem
        return ""
    sizes = struct.unpack("<i", head) + struct.unpack(">i", head) if len(head) == 4 else ()
    if 348 not in sizes and 540 not in sizes:
        return ""  # not a NIfTI header under either name: renaming would not help
    named_gz = path.name.lower().endswith(".gz")
    if gzipped and not named_gz:
        return f"gzip-compressed although named .nii; rename it to {path.name}.gz"
    if named_gz and not gzipped:
        return (f"not gzip-compressed although named .nii.gz; rename it to "
                f"{path.name[:-3]}")
    return ""


def _reads_natively(array: np.ndarray) -> bool | None:
    """``sam_unet.ops.reads_natively(array)``, or None where the ops do not say."""
    try:
        from sam_unet import ops
    except Exception:  # noqa: BLE001 - no native module: the caller decides
        return None
    fn = getattr(ops, "reads_natively", None)
    return None if fn is None else bool(fn(array))


def _byte_order_for_engine(data: np.ndarray) -> np.ndarray:
    """Big-endian data stays as stored where the native ops read it in place (or the pipeline
    converts it per slab); it is swapped in place when the array is ours anyway (no copy), and
    copied to native order only where nothing else can read it."""
    if data.dtype.isnative or data.dtype.itemsize == 1:
        return data
    native = data.dtype.newbyteorder("=")
    owned = not isinstance(data, np.memmap) and not isinstance(data.base, np.ndarray)
    if owned and data.flags.writeable:  # read into memory (.nii.gz): swap where it lies
        return data.byteswap(inplace=True).view(native)
    if _reads_natively(data) is not None:
        return data  # the engine reads it in place or converts it per slab
    return data.astype(native)


def _scaled_dtype(stored: np.dtype) -> np.dtype:
    """float32 when it holds every stored value exactly (8/16-bit integers, float32), else
    float64 (32/64-bit integers, float64)."""
    if stored.kind in "iu" and stored.itemsize <= 2:
        return np.dtype(np.float32)
    if stored.kind == "f" and stored.itemsize <= 4:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """The 3D voxel grid of a stored array: (X, Y) -> (X, Y, 1); trailing singleton axes of
    4D/5D files are dropped (they come back on output)."""
    shape = tuple(int(s) for s in data.shape)
    if 0 in shape:
        raise NiftiError(f"{path}: an axis has size 0 in shape {shape}; the file holds no voxels")
    if data.ndim == 2:
        return data[:, :, np.newaxis]
    if data.ndim < 2:
        raise NiftiError(f"{path}: expected a 3D volume, got shape {shape}; it is not an image")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        extra = int(np.prod(shape[3:]))
        raise NiftiError(
            f"{path}: expected a 3D volume, got shape {shape} ({extra} volumes); segment one 3D "
            "volume at a time (split the series, e.g. nibabel's four_to_three or fslsplit)"
        )
    return data


def load_nifti(
    path: str | os.PathLike, *, canonical: bool = True, dtype: np.dtype | None = None
) -> Volume:
    """Read a NIfTI-1/2 file; data in closest-canonical orientation (unless ``canonical=False``).

    The stored type (any integer or float type, either byte order) is kept when the file has no
    intensity scaling (scl_slope 1 or unset, scl_inter 0 or unset); scaled values come back as
    float32 where that holds them exactly (8/16-bit stored integers, float32) and float64
    otherwise. ``data`` is a view (no copy) of the stored array in canonical order: a memory map
    for ``.nii`` files. ``dtype`` forces a type. A 2D image is (X, Y, 1); trailing singleton
    axes (X, Y, Z, 1) are dropped from ``data`` and kept in ``file_shape``. Missing or unreadable
    files raise FileNotFoundError / NiftiError naming the path and the fix.
    """
    import nibabel as nib

    path = Path(path)
    _check_readable(path)
    try:
        with nib.imageglobals.LoggingOutputSuppressor():
            img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for corrupt files
        code = _raw_datatype(path)
        if code in _UNREADABLE_CODES:
            raise NiftiError(f"{path}: {_UNREADABLE_CODES[code]}") from exc
        misnamed = _compression_mismatch(path)
        if misnamed:
            raise NiftiError(f"{path}: {misnamed}") from exc
        raise NiftiError(
            f"{path}: cannot read the NIfTI header ({_exc_text(exc, path)}); the file is "
            "not a NIfTI-1/2 image or is damaged: export or copy it again"
        ) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(f"{path}: a {type(img).__name__} file, not a NIfTI-1/2 volume; give "
                         "a 3D NIfTI image")
    stored = np.dtype(img.get_data_dtype())
    if stored.fields is not None:
        raise NiftiError(f"{path}: RGB color data ({len(stored.fields)} channels per voxel); "
                         "convert it to one gray channel (e.g. float32) and segment that")
    if stored.kind == "c":
        raise NiftiError(f"{path}: complex-valued data ({stored.name}) is not an intensity "
                         "image; save its magnitude (abs) as float32 and segment that")
    if stored.kind not in "iuf":
        raise NiftiError(f"{path}: unsupported voxel type {stored}; store it as an integer or "
                         "float type")
    try:
        proxy = img.dataobj
        slope = getattr(proxy, "slope", 1.0)
        inter = getattr(proxy, "inter", 0.0)
        if (slope is None or slope == 1.0) and (inter is None or inter == 0.0):
            data = _byte_order_for_engine(np.asanyarray(proxy))
        else:
            data = img.get_fdata(dtype=_scaled_dtype(stored))
        if dtype is not None:
            data = np.asarray(data).astype(dtype, copy=False)
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short file, ...
        raise NiftiError(
            f"{path}: cannot read the image data ({_exc_text(exc, path)}); the file is "
            "truncated or damaged: export or copy it again") from exc
    file_shape = tuple(int(s) for s in img.shape)
    data = _to_3d(data, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise NiftiError(f"{path}: the affine (sform/qform) has NaN/Inf entries; fix the "
                         "header's geometry")
    original_shape = tuple(int(s) for s in data.shape)
    if canonical:
        original = nib.orientations.io_orientation(affine)
        ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
        transform = nib.orientations.ornt_transform(original, ras)
        inverse = nib.orientations.ornt_transform(ras, original)
    else:
        transform = inverse = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    data_c = nib.orientations.apply_orientation(data, transform)
    canonical_affine = affine @ nib.orientations.inv_ornt_aff(transform, original_shape)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))
    return Volume(
        path=path,
        data=data_c,
        affine=affine,
        header=img.header.copy(),
        canonical_affine=canonical_affine,
        transform=transform,
        original_shape=original_shape,
        inverse_transform=inverse,
        zooms=zooms,
        file_shape=file_shape,
        source_format="nifti",
    )


def nifti_geometry(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """(stored shape, affine) from a NIfTI header alone (no voxel data is read)."""
    import nibabel as nib

    with nib.imageglobals.LoggingOutputSuppressor():
        img = nib.load(str(path))
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)


def _qform_fits(affine: np.ndarray) -> bool:
    """True when a qform (rotation, zooms, one flip: no shear) represents ``affine`` exactly."""
    rzs = affine[:3, :3]
    zooms = np.sqrt((rzs**2).sum(axis=0))
    if np.any(zooms == 0):
        return False
    rot = rzs / zooms
    return bool(np.allclose(rot.T @ rot, np.eye(3), atol=1e-6))


def _label_header(like: Volume | None, shape: tuple[int, ...], affine: np.ndarray | None,
                  max_label: int):
    """(header, image class) for a uint8 label volume of the stored ``shape``."""
    import nibabel as nib

    if like is not None and isinstance(like.header, nib.Nifti1Header):
        header = like.header.copy()
        if header.endianness != "<":
            header = header.as_byteswapped("<")  # little-endian: what every reader expects
        klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        header.extensions.clear()  # the input's extensions do not describe a label map
    else:
        out_affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if like is not None:
            out_affine = like.affine
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_sform(out_affine, code=1)
        header.set_qform(out_affine, code=1 if _qform_fits(out_affine) else 0)
        zooms = np.sqrt((out_affine[:3, :3] ** 2).sum(axis=0))
        header.set_zooms(tuple(zooms[: min(3, len(shape))]) + (1.0,) * max(0, len(shape) - 3))
        header.set_xyzt_units("mm")
        klass = nib.Nifti1Image
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header.set_intent("label", (), name="labels")
    header["cal_min"] = 0
    header["cal_max"] = float(max_label)
    if "glmin" in header.keys():  # NIfTI-1 only (unused by readers)
        header["glmin"] = 0
        header["glmax"] = int(max_label)
    header["descrip"] = b"sam-unet labels"
    return header, klass


def _as_labels(mask: np.ndarray, path: Path) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if mask.dtype == np.uint8:
        return mask
    if mask.dtype.kind not in "iuf" or (mask.size and (mask.min() < 0 or mask.max() > 255)):
        raise ValueError(f"{path}: labels must fit uint8 (0..255), got dtype {mask.dtype}")
    if mask.dtype.kind == "f" and mask.size and not np.all(mask == np.round(mask)):
        raise ValueError(f"{path}: labels must be integers, got non-integer {mask.dtype}")
    return mask.astype(np.uint8)


def save_label_nifti(
    path: str | os.PathLike,
    mask: np.ndarray,
    like: Volume | None = None,
    *,
    canonical: bool = True,
    affine: np.ndarray | None = None,
) -> Path:
    """Write ``mask`` as a uint8 label NIfTI (NIfTI-2 when ``like`` came from one), atomically.

    With ``like`` (the volume the mask was computed from) and ``canonical=True`` the mask is in
    canonical orientation (shape ``like.shape``) and is put back into the file's voxel order
    and stored shape (a 4D input with one volume gives a 4D output, a 2D input a 2D output).
    ``canonical=False`` means the mask is already in the file's voxel order. The output keeps
    the input header's sform, qform and their codes exactly (no qform is invented for a sheared
    sform with qform_code 0), pixdim and units; it gets dtype uint8, scl_slope 1 / scl_inter 0,
    intent "label", cal_min 0 / cal_max = the largest label, little-endian byte order. Without
    a NIfTI ``like``, the affine (``like.affine``, else ``affine``, else identity) goes into the
    sform (code 1) and into the qform (code 1) where a qform can hold it exactly (code 0
    otherwise). The file is written to a temporary name in the same folder and renamed over
    ``path``; on any failure nothing is left behind.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise NiftiError(f"{path}: output name must end with .nii or .nii.gz")
    mask = _as_labels(mask, path)
    if mask.ndim != 3:
        raise ValueError(f"{path}: label volume must be 3D, got shape {mask.shape}")
    if like is not None:
        if canonical:
            mask = like.to_file_shape(mask)
        elif mask.shape != tuple(like.original_shape):
            raise ValueError(
                f"{path}: mask shape {mask.shape} differs from the input's shape "
                f"{like.original_shape}"
            )
        else:
            mask = mask.reshape(like.file_shape)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    max_label = int(mask.max()) if mask.size else 0
    header, klass = _label_header(like, mask.shape, affine, max_label)
    img = klass(mask, None, header=header)  # geometry straight from the header, untouched
    img.header["scl_slope"] = 1.0  # explicit identity scaling (nibabel would store NaN)
    img.header["scl_inter"] = 0.0

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: output folder {parent} does not exist; create it")
    suffix = nifti_suffix(path)
    try:
        with atomic_path(path, suffix=f".tmp{suffix}") as tmp:
            import nibabel as nib

            nib.save(img, str(tmp))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
    except (OSError, ValueError, RuntimeError) as exc:
        raise NiftiError(
            f"{path}: cannot write the label NIfTI ({_exc_text(exc, path)}); "
            + _write_fix(exc)) from exc
    return path


def _write_fix(exc: BaseException) -> str:
    import errno

    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "free space on the output disk (or raise the file size limit) and run again"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a writable output folder"
    return "check the output folder and run again"

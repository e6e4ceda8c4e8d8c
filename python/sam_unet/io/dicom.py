"""DICOM series in (pydicom): a folder (searched recursively), a zip file, or one file.

A series loads into the same :class:`~sam_unet.io.volume.Volume` as a NIfTI file, so a series
and its NIfTI conversion segment identically. Its voxel frame is (column, row, slice): ``data``
of the file frame is ``(Columns, Rows, slices)`` with ``[i, j, k]`` = pixel (row ``j``, column
``i``) of the k-th image along the slice normal. The affine maps (i, j, k) to RAS millimetres:

    LPS(i, j, k) = P0 + i * dc * F_row + j * dr * F_col + k * S
    RAS = diag(-1, -1, 1) @ LPS

where ``F_row``/``F_col`` are the two direction cosines of ImageOrientationPatient (along a row:
increasing column index; along a column), ``dr, dc = PixelSpacing``, ``P0`` the
ImagePositionPatient of the first image and ``S`` the step from one image to the next.

Rules (each refusal is a :class:`DicomError` naming the input, the reason and the fix):

- Images are ordered by their position along the slice normal (the cross product of the two
  ImageOrientationPatient directions), never by file name or InstanceNumber.
- Pixel values are the modality values: RescaleSlope/RescaleIntercept applied per image
  (Hounsfield units for CT). The stored integer type is kept when no image rescales; integer
  slopes and intercepts give int16 (int32 where int16 cannot hold the range); anything else
  float32.
- Enhanced multi-frame CT/MR (and other multi-frame images with per-frame functional groups):
  each frame's position from PerFrameFunctionalGroupsSequence, orientation, pixel measures and
  rescale from the per-frame or the shared functional groups.
- Compressed transfer syntaxes decode through pydicom's plugins: RLE always, 8-bit JPEG and
  JPEG 2000 through Pillow, JPEG-LS through pyjpegls (a highdicom dependency); 12-bit JPEG and
  JPEG lossless need the ``dicom-compressed`` extra (pylibjpeg): the error says so.
- Gantry tilt (slice positions stepping off the normal by a constant in-plane shift) is kept
  exactly, with a sheared affine (stored in the NIfTI sform; :attr:`DicomVolume.tilt_degrees`
  says by how much). Missing slices, irregular spacing, images sharing a position (several
  echoes, phases or time points in one series) and mixed orientations or sizes are refused.
- Files that are not DICOM images with a geometry (DICOMDIR, structured reports, RT files,
  DICOM SEG, localizers, presentation states, README files, ...) are skipped; a file that
  claims to be DICOM but cannot be parsed is an error (it may be a missing slice).
- Several image series in one input: refused with a list of their UIDs and descriptions,
  unless ``series_uid`` names one (``--series`` on the command line); :func:`list_dicom_series`
  lists them.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.io.canonical import lps_to_ras, volume_from_array
from sam_unet.io.volume import Volume

__all__ = [
    "COMPRESSED_EXTRA",
    "DICOM_EXTRA",
    "DicomError",
    "DicomVolume",
    "SeriesInfo",
    "SourceImage",
    "dicom_geometry",
    "dicom_stem",
    "is_dicom_input",
    "list_dicom_series",
    "load_dicom_series",
]

DICOM_EXTRA = "pip install 'sam-unet[dicom]'"
COMPRESSED_EXTRA = "pip install 'sam-unet[dicom-compressed]'"

# SOP classes that carry pixels and a geometry but are not images to segment.
_NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "DICOM SEG",
    "1.2.840.10008.5.1.4.1.1.66.7": "label map SEG",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT dose",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT image",
}
# CT, MR and PET image classes (single-frame, enhanced, legacy converted): a file of one of
# these whose header ends before its pixel data is truncated, not a non-image to skip.
_VOLUME_CLASSES = {"1.2.840.10008.5.1.4.1.1." + c for c in
                   ("2", "2.1", "2.2", "4", "4.1", "4.4", "128", "128.1", "130")}
_DICM_OFFSET = 128
# Positions in DICOM are decimal strings often rounded to 0.01 mm or so.
_POS_TOL_MM = 0.02
_REL_TOL = 0.01


class DicomError(ValueError):
    """A DICOM input that cannot be read as one volume; the message names it, why and the fix."""


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in an input."""

    uid: str
    number: int | None
    description: str
    modality: str
    images: int  # 2D images (frames of multi-frame instances counted one by one)

    def describe(self) -> str:
        """``UID (#3 MR 'T1 axial', 176 images)``."""
        num = f"#{self.number} " if self.number is not None else ""
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid} ({num}{self.modality or '?'}{desc}, {self.images} images)"


@dataclass(frozen=True)
class SourceImage:
    """The DICOM image behind one slice of a series volume.

    instance: index into :attr:`DicomVolume.instances`; frame: 0-based frame of a multi-frame
    instance (None for a single-frame one); position: ImagePositionPatient (LPS mm), float64 (3,).
    """

    name: str
    sop_instance_uid: str
    instance: int
    frame: int | None
    position: np.ndarray


@dataclass
class DicomVolume(Volume):
    """A DICOM series as a :class:`Volume` (file frame (column, row, slice)).

    series: what was read; slices: the source image of each slice k (file frame axis 2);
    instances: the instances' headers (pydicom Datasets without pixel data), for DICOM SEG;
    tilt_degrees: gantry tilt kept in the affine's shear (0 for an orthogonal series).
    """

    series: SeriesInfo | None = None
    slices: list[SourceImage] = field(default_factory=list)
    instances: list[Any] = field(default_factory=list)
    tilt_degrees: float = 0.0


# ------------------------------------------------------------------------------ sources
def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is in the dicom extra
        raise DicomError(f"reading DICOM needs pydicom; install it: {DICOM_EXTRA}") from exc
    return pydicom


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICM_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


class _Source:
    """The files of an input (folder, zip or single file), each opened as a binary stream."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> _Source:
        if _is_zip(self.path):
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (OSError, zipfile.BadZipFile) as exc:
                raise DicomError(f"{self.path}: cannot open the zip file ({exc}); copy it "
                                 "again") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._zip is not None:
            self._zip.close()

    def names(self) -> list[str]:
        if self._zip is not None:
            return sorted(i.filename for i in self._zip.infolist()
                          if not i.is_dir() and not _hidden_name(i.filename))
        if self.path.is_file():
            return [str(self.path)]
        out = []
        for root, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
        return out

    @contextmanager
    def open(self, name: str) -> Iterator[Any]:
        if self._zip is not None:
            yield io.BytesIO(self._zip.read(name))
        else:
            with open(name, "rb") as fh:
                yield fh

    def display(self, name: str) -> str:
        return f"{self.path}:{name}" if self._zip is not None else name


def _hidden_name(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


# ------------------------------------------------------------------------------ headers
@dataclass
class _Image:
    """One 2D image (a single-frame instance, or one frame of a multi-frame instance)."""

    name: str
    instance: int
    frame: int | None
    sop_uid: str
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    shape: tuple[int, int]  # (Rows, Columns)
    slope: float
    intercept: float
    thickness: float | None


@dataclass
class _Series:
    uid: str
    headers: list[Any] = field(default_factory=list)  # one Dataset per instance
    names: list[str] = field(default_factory=list)
    images: list[_Image] = field(default_factory=list)


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _first(seq_holder: Any, name: str) -> Any:
    if seq_holder is None or name not in seq_holder:
        return None
    seq = seq_holder[name].value
    return seq[0] if seq else None


def _rescale(item: Any) -> tuple[float, float]:
    slope = getattr(item, "RescaleSlope", None) if item is not None else None
    inter = getattr(item, "RescaleIntercept", None) if item is not None else None
    return (float(slope) if slope not in (None, "") else 1.0,
            float(inter) if inter not in (None, "") else 0.0)


def _thickness(item: Any) -> float | None:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        value = getattr(item, key, None) if item is not None else None
        if value not in (None, ""):
            try:
                v = abs(float(value))
            except (TypeError, ValueError):
                continue
            if v > 0:
                return v
    return None


def _images_of(ds: Any, name: str, instance: int) -> tuple[list[_Image] | None, str]:
    """The 2D images of one instance header, or (None, why it is skipped)."""
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class in _NOT_IMAGES:
        return None, _NOT_IMAGES[sop_class]
    if "Rows" not in ds or "Columns" not in ds:
        return None, "not an image"
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    if "LOCALIZER" in image_type:
        return None, "localizer"
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        return None, "colour image"
    shape = (int(ds.Rows), int(ds.Columns))
    sop_uid = str(getattr(ds, "SOPInstanceUID", ""))
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        frames = ds.PerFrameFunctionalGroupsSequence
        images = []
        for f, item in enumerate(frames):
            pos = _first(item, "PlanePositionSequence")
            ori = _first(item, "PlaneOrientationSequence") or _first(shared,
                                                                     "PlaneOrientationSequence")
            meas = _first(item, "PixelMeasuresSequence") or _first(shared,
                                                                   "PixelMeasuresSequence")
            trans = (_first(item, "PixelValueTransformationSequence")
                     or _first(shared, "PixelValueTransformationSequence"))
            p = _floats(getattr(pos, "ImagePositionPatient", None), 3) if pos else None
            o = _floats(getattr(ori, "ImageOrientationPatient", None), 6) if ori else None
            s = _floats(getattr(meas, "PixelSpacing", None), 2) if meas else None
            if p is None or o is None or s is None:
                return None, "multi-frame image without per-frame geometry"
            slope, inter = _rescale(trans if trans is not None else ds)
            images.append(_Image(name, instance, f, sop_uid, p, o, (s[0], s[1]), shape, slope,
                                 inter, _thickness(meas)))
        return images, ""
    p = _floats(getattr(ds, "ImagePositionPatient", None), 3)
    o = _floats(getattr(ds, "ImageOrientationPatient", None), 6)
    s = _floats(getattr(ds, "PixelSpacing", None), 2)
    if p is None or o is None or s is None:
        return None, "image without patient geometry"
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        return None, "multi-frame image without per-frame geometry"
    slope, inter = _rescale(ds)
    return [_Image(name, instance, None, sop_uid, p, o, (s[0], s[1]), shape, slope, inter,
                   _thickness(ds))], ""


def _scan(src: _Source) -> tuple[dict[str, _Series], Counter]:
    """Read every header once (no pixel data); group the images by SeriesInstanceUID."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    series: dict[str, _Series] = {}
    skipped: Counter = Counter()
    for name in src.names():
        try:
            with src.open(name) as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
                at_end = not fh.read(1)
        except InvalidDicomError:
            skipped["not DICOM"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
            raise DicomError(
                f"{src.display(name)}: cannot read this DICOM file "
                f"({type(exc).__name__}: {' '.join(str(exc).split())}); it may be a slice of "
                "the series: copy or export it again, or remove it if it is not") from exc
        if str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10":
            skipped["DICOMDIR"] += 1
            continue
        sop_class = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")
                        or getattr(ds, "SOPClassUID", ""))
        if at_end and sop_class in _VOLUME_CLASSES:
            raise DicomError(f"{src.display(name)}: the file ends before its pixel data "
                             "(truncated); copy or export it again")
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        entry = series.setdefault(uid, _Series(uid))
        images, why = _images_of(ds, name, len(entry.headers))
        if images is None:
            skipped[why] += 1
            if not entry.headers:
                del series[uid]
            continue
        entry.headers.append(ds)
        entry.names.append(name)
        entry.images.extend(images)
    return series, skipped


def _info(s: _Series) -> SeriesInfo:
    ds = s.headers[0]
    number = getattr(ds, "SeriesNumber", None)
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return SeriesInfo(uid=s.uid, number=number,
                      description=str(getattr(ds, "SeriesDescription", "") or ""),
                      modality=str(getattr(ds, "Modality", "") or ""), images=len(s.images))


def _check_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; check the path")


def list_dicom_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """The image series in a DICOM folder, zip or file, sorted by series number then UID."""
    path = Path(path)
    _check_path(path)
    with _Source(path) as src:
        series, _ = _scan(src)
    infos = [_info(s) for s in series.values()]
    return sorted(infos, key=lambda i: (i.number if i.number is not None else 1 << 30, i.uid))


def _skipped_text(skipped: Counter) -> str:
    if not skipped:
        return "no files"
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))


def _choose(path: Path, series: dict[str, _Series], skipped: Counter,
            series_uid: str | None) -> _Series:
    if not series:
        raise DicomError(f"{path}: no DICOM image series with a patient geometry found "
                         f"(skipped: {_skipped_text(skipped)}); give a folder or zip of CT/MR/PET "
                         "image files")
    infos = sorted((_info(s) for s in series.values()),
                   key=lambda i: (i.number if i.number is not None else 1 << 30, i.uid))
    listing = "; ".join(i.describe() for i in infos)
    if series_uid is not None:
        if series_uid not in series:
            raise DicomError(f"{path}: no image series with UID {series_uid}; the input holds: "
                             f"{listing}")
        return series[series_uid]
    if len(series) > 1:
        raise DicomError(f"{path}: holds {len(series)} image series; choose one with --series "
                         f"UID (Python: series_uid=...): {listing}")
    return next(iter(series.values()))


# ------------------------------------------------------------------------------ geometry
@dataclass
class _Geometry:
    order: list[int]  # indices into the series' images, in slice order
    affine_lps: np.ndarray
    tilt_degrees: float


def _same(values: list[np.ndarray], atol: float) -> bool:
    return all(np.allclose(v, values[0], atol=atol) for v in values[1:])


def _geometry(where: str, images: list[_Image]) -> _Geometry:
    shapes = Counter(im.shape for im in images)
    if len(shapes) > 1:
        sizes = ", ".join(f"{n} of {r}x{c}" for (r, c), n in shapes.most_common())
        raise DicomError(f"{where}: images of different sizes in one series ({sizes}); export "
                         "the series again or choose another one")
    orients = [im.orientation for im in images]
    if not _same(orients, 1e-4):
        kinds = Counter(tuple(np.round(o, 3)) for o in orients)
        raise DicomError(
            f"{where}: images with {len(kinds)} different orientations (ImageOrientationPatient) "
            "in one series (a localizer or a multi-planar series?); export each plane as its "
            "own series")
    spacings = [np.asarray(im.spacing) for im in images]
    if not _same(spacings, 1e-4):
        raise DicomError(f"{where}: images with different PixelSpacing in one series; export "
                         "the series again")
    row_cos, col_cos = orients[0][:3], orients[0][3:]
    if (abs(np.linalg.norm(row_cos) - 1) > 1e-2 or abs(np.linalg.norm(col_cos) - 1) > 1e-2
            or abs(row_cos @ col_cos) > 1e-2):
        raise DicomError(f"{where}: ImageOrientationPatient {orients[0].tolist()} is not two "
                         "orthogonal unit vectors; the header is damaged")
    row_cos, col_cos = row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    positions = np.stack([im.position for im in images])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth, positions = depth[order], positions[order]
    n = len(images)
    dr, dc = float(spacings[0][0]), float(spacings[0][1])
    if dr <= 0 or dc <= 0:
        raise DicomError(f"{where}: PixelSpacing {[dr, dc]} must be positive; the header is "
                         "damaged")
    if n == 1:
        step = normal * (images[0].thickness or 1.0)
        tilt = 0.0
    else:
        gaps = np.diff(depth)
        dup = np.flatnonzero(gaps < 1e-3)
        if len(dup):
            raise DicomError(
                f"{where}: {len(dup) + 1} or more images share a slice position (e.g. "
                f"{depth[dup[0]]:.2f} mm along the normal): several echoes, phases or time points "
                "in one series; split them into separate series (one volume each)")
        typical = float(np.median(gaps))
        tol = _POS_TOL_MM + _REL_TOL * typical
        bad = np.flatnonzero(np.abs(gaps - typical) > tol)
        if len(bad):
            k = int(bad[0])
            ratio = gaps[k] / typical
            if all(abs(gaps[b] / typical - round(gaps[b] / typical)) * typical <= tol
                   and gaps[b] > typical for b in bad):
                missing = int(sum(round(gaps[b] / typical) - 1 for b in bad))
                raise DicomError(
                    f"{where}: {missing} slice(s) missing: the gap between slices {k} and "
                    f"{k + 1} (in position order) is {gaps[k]:.3f} mm, {ratio:.1f} times the "
                    f"spacing {typical:.3f} mm; copy or export the whole series again")
            raise DicomError(
                f"{where}: irregular slice spacing: gaps from {gaps.min():.3f} to "
                f"{gaps.max():.3f} mm (median {typical:.3f} mm); resample the series to a "
                "regular grid (e.g. convert it with dcm2niix) first")
        step = (positions[-1] - positions[0]) / (n - 1)
        residual = positions - (positions[0] + np.arange(n)[:, None] * step)
        if np.abs(residual).max() > tol:
            raise DicomError(
                f"{where}: slice positions do not lie on one line (off by up to "
                f"{np.abs(residual).max():.3f} mm); resample the series (e.g. dcm2niix) first")
        along = float(step @ normal)
        across = float(np.linalg.norm(step - along * normal))
        if across * (n - 1) > tol:  # gantry tilt: keep the true step (a sheared affine)
            tilt = float(np.degrees(np.arctan2(across, along)))
        else:  # rounding of the positions only: the step is along the normal
            step, tilt = normal * along, 0.0
    affine = np.eye(4)
    affine[:3, 0] = row_cos * dc
    affine[:3, 1] = col_cos * dr
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return _Geometry([int(i) for i in order], affine, tilt)


# ------------------------------------------------------------------------------ pixels
def _decode(ds: Any, name: str) -> np.ndarray:
    """The stored pixel values of a full dataset, (frames, rows, columns) or (rows, columns)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(f"{name}: the image has no pixel data; export the series again")
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom's plugins raise many types
        reason = " ".join(str(exc).split())
        if tsuid is not None and tsuid.is_compressed:
            plugins = _decoder_plugins(tsuid)
            if not plugins:
                raise DicomError(
                    f"{name}: pixel data compressed as {tsuid.name}, and no installed decoder "
                    f"reads it; install the decoders: {COMPRESSED_EXTRA}") from exc
            raise DicomError(
                f"{name}: cannot decode pixel data compressed as {tsuid.name} with the "
                f"installed decoders ({', '.join(plugins)}: {reason}); install more decoders "
                f"({COMPRESSED_EXTRA}) or, if they are installed, the file is damaged: export "
                "it again") from exc
        raise DicomError(f"{name}: cannot read the pixel data ({type(exc).__name__}: {reason});"
                         " the file is truncated or damaged: copy or export it again") from exc


def _decoder_plugins(tsuid: Any) -> tuple[str, ...]:
    """Names of the installed pydicom plugins that decode ``tsuid`` (empty if none)."""
    try:
        from pydicom.pixels import get_decoder

        return tuple(get_decoder(tsuid).available_plugins)
    except Exception:  # noqa: BLE001 - no decoder class at all for this transfer syntax
        return ()


def _result_dtype(stored: np.dtype, images: list[_Image], lo: float, hi: float) -> np.dtype:
    slopes = np.array([im.slope for im in images])
    inters = np.array([im.intercept for im in images])
    if stored.kind in "iu" and np.all(slopes == np.round(slopes)) and \
            np.all(inters == np.round(inters)):
        candidates = [(lo * s + b, hi * s + b) for s, b in zip(slopes, inters, strict=True)]
        vmin = min(min(a, b) for a, b in candidates)
        vmax = max(max(a, b) for a, b in candidates)
        for dt in (np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= vmin and vmax <= info.max:
                return np.dtype(dt)
    return np.dtype(np.float32)


def _read_pixels(src: _Source, series: _Series, order: list[int]) -> np.ndarray:
    """The slices' modality values, stacked (n, rows, columns) in slice order."""
    pydicom = _pydicom()
    images = [series.images[i] for i in order]
    by_instance: dict[int, list[int]] = {}
    for k, im in enumerate(images):
        by_instance.setdefault(im.instance, []).append(k)
    raw: np.ndarray | None = None
    for inst, ks in by_instance.items():
        name = series.names[inst]
        shown = src.display(name)
        try:
            with src.open(name) as fh:
                ds = pydicom.dcmread(fh)
        except Exception as exc:  # noqa: BLE001 - damaged after the header pass
            raise DicomError(f"{shown}: cannot read this DICOM file ({type(exc).__name__}: "
                             f"{exc}); copy or export it again") from exc
        if "ModalityLUTSequence" in ds:
            raise DicomError(f"{shown}: the image maps its values through a Modality LUT, which "
                             "is not supported; convert the series (e.g. dcm2niix) first")
        pixels = _decode(ds, shown)
        for k in ks:
            im = images[k]
            frame = pixels if im.frame is None else (pixels if pixels.ndim == 2
                                                     else pixels[im.frame])
            if frame.shape != im.shape:
                raise DicomError(f"{shown}: pixel data of shape {frame.shape} does not match "
                                 f"Rows x Columns {im.shape}; the file is damaged")
            if raw is None:  # native byte order: what every later step reads fastest
                raw = np.empty((len(images), *im.shape), dtype=frame.dtype.newbyteorder("="))
            elif frame.dtype != raw.dtype:
                raw = raw.astype(np.result_type(raw.dtype, frame.dtype))
            raw[k] = frame
    assert raw is not None
    if all(im.slope == 1 and im.intercept == 0 for im in images):
        return raw
    dtype = _result_dtype(raw.dtype, images, float(raw.min()), float(raw.max()))
    out = np.empty(raw.shape, dtype=dtype)
    compute = np.float64 if dtype.kind == "f" else np.int64
    for k, im in enumerate(images):
        if dtype.kind == "f":
            out[k] = raw[k].astype(compute) * im.slope + im.intercept
        else:
            out[k] = raw[k].astype(compute) * int(round(im.slope)) + int(round(im.intercept))
    return out


def _unique(images: list[_Image]) -> list[_Image]:
    """The same image listed twice (a copied file) counts once."""
    seen: set[tuple[str, int | None]] = set()
    out = []
    for im in images:
        key = (im.sop_uid, im.frame)
        if im.sop_uid and key in seen:
            continue
        seen.add(key)
        out.append(im)
    return out


# ------------------------------------------------------------------------------ public
def load_dicom_series(path: str | os.PathLike, *, series_uid: str | None = None
                      ) -> DicomVolume:
    """Read one DICOM image series (a folder, a zip or a single file) into a volume.

    series_uid: the SeriesInstanceUID to read when the input holds several image series
        (otherwise refused with the list of series).
    Returns a :class:`DicomVolume`: ``data`` in canonical RAS+ order (a view of the file-frame
    array of shape (Columns, Rows, slices)), ``affine`` from (column, row, slice) indices to RAS
    mm, modality values (rescale applied; see the module docstring for the dtype rules).
    Raises FileNotFoundError for a missing path and DicomError for anything that is not one
    regular image series.
    """
    path = Path(path)
    _check_path(path)
    with _Source(path) as src:
        series_map, skipped = _scan(src)
        series = _choose(path, series_map, skipped, series_uid)
        series.images = _unique(series.images)
        where = f"{path} (series {series.uid})" if len(series_map) > 1 else str(path)
        geom = _geometry(where, series.images)
        stack = _read_pixels(src, series, geom.order)
    data = stack.transpose(2, 1, 0)  # (n, rows, cols) -> (cols, rows, n): (column, row, slice)
    slices = [SourceImage(name=src.display(series.names[im.instance]),
                          sop_instance_uid=im.sop_uid, instance=im.instance, frame=im.frame,
                          position=im.position.copy())
              for im in (series.images[i] for i in geom.order)]
    return volume_from_array(data, lps_to_ras(geom.affine_lps), path=path, header=None,
                             source_format="dicom", cls=DicomVolume, series=_info(series),
                             slices=slices, instances=list(series.headers),
                             tilt_degrees=geom.tilt_degrees)


def dicom_geometry(path: str | os.PathLike, *, series_uid: str | None = None
                   ) -> tuple[tuple[int, int, int], np.ndarray]:
    """((Columns, Rows, slices), RAS affine) of a series from its headers (no pixel data)."""
    path = Path(path)
    _check_path(path)
    with _Source(path) as src:
        series_map, skipped = _scan(src)
        series = _choose(path, series_map, skipped, series_uid)
    images = _unique(series.images)
    geom = _geometry(str(path), images)
    rows, cols = images[0].shape
    return (cols, rows, len(images)), lps_to_ras(geom.affine_lps)


def is_dicom_input(path: str | os.PathLike, *, probe: int = 64) -> bool:
    """True for a zip file, a file with the DICOM preamble, or a folder holding DICOM files
    (searched recursively, at most ``probe`` files looked at) and no NIfTI file directly in it."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    if path.is_file():
        return _is_zip(path) or _has_dicm_magic(path)
    if not path.is_dir():
        return False
    try:
        for entry in path.iterdir():
            low = entry.name.lower()
            if entry.is_file() and (low.endswith(".nii") or low.endswith(".nii.gz")):
                return False
        looked = 0
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.startswith("."):
                    continue
                if f.upper() == "DICOMDIR" or _has_dicm_magic(Path(root) / f):
                    return True
                looked += 1
                if looked >= probe:
                    return False
    except OSError:
        return False
    return False


def dicom_stem(path: str | os.PathLike) -> str:
    """The name outputs of a DICOM input derive from: the folder name, or the file name without
    ``.zip`` / ``.dcm``."""
    path = Path(path)
    name = path.name
    for suffix in (".zip", ".dcm", ".dicom"):
        if path.is_file() and name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name

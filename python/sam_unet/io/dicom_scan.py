"""DICOM inputs, first pass: find the files of a folder, zip or single file, read every header
(no pixel data) and group the 2D images by series; choose the series to read.

What is skipped and why (non-DICOM files, DICOMDIR, SEG, RT, localizers, colour images, images
without a patient geometry) is counted, and said when nothing is left. A CT/MR/PET file whose
header ends before its pixel data is truncated: an error, never skipped, since it may be a slice
of the series.
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


# ------------------------------------------------------------------------------ sources
def import_pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is in the dicom extra
        raise DicomError(f"reading DICOM needs pydicom; install it: {DICOM_EXTRA}") from exc
    return pydicom


def has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICM_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


class Source:
    """The files of an input (folder, zip or single file), each opened as a binary stream."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> Source:
        if is_zip(self.path):
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
class ImageHeader:
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
class SeriesFiles:
    uid: str
    headers: list[Any] = field(default_factory=list)  # one Dataset per instance
    names: list[str] = field(default_factory=list)
    images: list[ImageHeader] = field(default_factory=list)


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


def _images_of(ds: Any, name: str, instance: int) -> tuple[list[ImageHeader] | None, str]:
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
            images.append(ImageHeader(name, instance, f, sop_uid, p, o, (s[0], s[1]), shape, slope,
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
    return [ImageHeader(name, instance, None, sop_uid, p, o, (s[0], s[1]), shape, slope, inter,
                   _thickness(ds))], ""


def scan(src: Source) -> tuple[dict[str, SeriesFiles], Counter]:
    """Read every header once (no pixel data); group the images by SeriesInstanceUID."""
    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    series: dict[str, SeriesFiles] = {}
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
        entry = series.setdefault(uid, SeriesFiles(uid))
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


def series_info(s: SeriesFiles) -> SeriesInfo:
    ds = s.headers[0]
    number = getattr(ds, "SeriesNumber", None)
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return SeriesInfo(uid=s.uid, number=number,
                      description=str(getattr(ds, "SeriesDescription", "") or ""),
                      modality=str(getattr(ds, "Modality", "") or ""), images=len(s.images))


def check_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; check the path")


def _skipped_text(skipped: Counter) -> str:
    if not skipped:
        return "no files"
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))


def choose_series(path: Path, series: dict[str, SeriesFiles], skipped: Counter,
            series_uid: str | None) -> SeriesFiles:
    if not series:
        raise DicomError(f"{path}: no DICOM image series with a patient geometry found "
                         f"(skipped: {_skipped_text(skipped)}); give a folder or zip of CT/MR/PET "
                         "image files")
    infos = sorted((series_info(s) for s in series.values()),
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


def unique_images(images: list[ImageHeader]) -> list[ImageHeader]:
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

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

The work is split: ``dicom_scan.py`` (files and headers, series), ``dicom_geometry.py`` (order
and checks, affine), ``dicom_pixels.py`` (decoding, rescale); this module puts them together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.io.canonical import lps_to_ras, volume_from_array
from sam_unet.io.dicom_geometry import series_geometry
from sam_unet.io.dicom_pixels import read_pixels
from sam_unet.io.dicom_scan import (
    COMPRESSED_EXTRA,
    DICOM_EXTRA,
    DicomError,
    SeriesInfo,
    Source,
    check_path,
    choose_series,
    has_dicm_magic,
    is_zip,
    scan,
    series_info,
    unique_images,
)
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


def list_dicom_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """The image series in a DICOM folder, zip or file, sorted by series number then UID."""
    path = Path(path)
    check_path(path)
    with Source(path) as src:
        series, _ = scan(src)
    infos = [series_info(s) for s in series.values()]
    return sorted(infos, key=lambda i: (i.number if i.number is not None else 1 << 30, i.uid))


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
    check_path(path)
    with Source(path) as src:
        series_map, skipped = scan(src)
        series = choose_series(path, series_map, skipped, series_uid)
        series.images = unique_images(series.images)
        where = f"{path} (series {series.uid})" if len(series_map) > 1 else str(path)
        geom = series_geometry(where, series.images)
        stack = read_pixels(src, series, geom.order)
    data = stack.transpose(2, 1, 0)  # (n, rows, cols) -> (cols, rows, n): (column, row, slice)
    slices = [SourceImage(name=src.display(series.names[im.instance]),
                          sop_instance_uid=im.sop_uid, instance=im.instance, frame=im.frame,
                          position=im.position.copy())
              for im in (series.images[i] for i in geom.order)]
    return volume_from_array(data, lps_to_ras(geom.affine_lps), path=path, header=None,
                             source_format="dicom", cls=DicomVolume, series=series_info(series),
                             slices=slices, instances=list(series.headers),
                             tilt_degrees=geom.tilt_degrees)


def dicom_geometry(path: str | os.PathLike, *, series_uid: str | None = None
                   ) -> tuple[tuple[int, int, int], np.ndarray]:
    """((Columns, Rows, slices), RAS affine) of a series from its headers (no pixel data)."""
    path = Path(path)
    check_path(path)
    with Source(path) as src:
        series_map, skipped = scan(src)
        series = choose_series(path, series_map, skipped, series_uid)
    images = unique_images(series.images)
    geom = series_geometry(str(path), images)
    rows, cols = images[0].shape
    return (cols, rows, len(images)), lps_to_ras(geom.affine_lps)


def is_dicom_input(path: str | os.PathLike, *, probe: int = 64) -> bool:
    """True for a zip file, a file with the DICOM preamble, or a folder holding DICOM files
    (searched recursively, at most ``probe`` files looked at) and no NIfTI file directly in it."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    if path.is_file():
        return is_zip(path) or has_dicm_magic(path)
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
                if f.upper() == "DICOMDIR" or has_dicm_magic(Path(root) / f):
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

"""Inputs of any supported format: what counts as one, its name, its geometry, reading it.

Each format is an :class:`InputFormat` in :data:`FORMATS` (NIfTI, NRRD/MetaImage through
SimpleITK, a DICOM series folder, zip or file); a new format is one more entry, and every
caller (``segment_file``, the CLI's folder listing, ``--continue``) picks it up through the
functions below.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_unet.io.volume import Volume


@dataclass(frozen=True)
class InputFormat:
    """One input format.

    matches(path): whether ``path`` (file or folder) is an input of this format.
    stem(path): the name outputs are derived from (``<stem>_seg.nii.gz``).
    label_suffix(path): the suffix of its label map (``.nii`` or ``.nii.gz``).
    read(path): the volume (:class:`Volume`, canonical data).
    geometry(path): (stored shape, (4, 4) affine), cheaply (no voxel data).
    """

    name: str
    matches: Callable[[Path], bool]
    stem: Callable[[Path], str]
    label_suffix: Callable[[Path], str]
    read: Callable[[Path], Volume]
    geometry: Callable[[Path], tuple[tuple[int, ...], np.ndarray]]


def _nifti_format() -> InputFormat:
    from sam_unet.io import nifti

    return InputFormat(
        name="nifti",
        matches=lambda p: p.is_file() and nifti.is_nifti_path(p),
        stem=nifti.nifti_stem,
        label_suffix=nifti.nifti_suffix,
        read=lambda p: nifti.load_nifti(p),
        geometry=nifti.nifti_geometry,
    )


def _sitk_format() -> InputFormat:
    from sam_unet.io import sitk

    return InputFormat(
        name="sitk",
        matches=lambda p: p.is_file() and sitk.is_sitk_path(p),
        stem=sitk.sitk_stem,
        label_suffix=lambda p: ".nii.gz",
        read=lambda p: sitk.load_sitk(p),
        geometry=sitk.sitk_geometry,
    )


def _dicom_format() -> InputFormat:
    from sam_unet.io import dicom

    return InputFormat(
        name="dicom",
        matches=dicom.is_dicom_input,
        stem=dicom.dicom_stem,
        label_suffix=lambda p: ".nii.gz",
        read=lambda p: dicom.load_dicom_series(p),
        geometry=dicom.dicom_geometry,
    )


# NIfTI and SimpleITK formats by name first; a DICOM series (folder, zip, file) by content.
FORMATS: list[InputFormat] = [_nifti_format(), _sitk_format(), _dicom_format()]


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def input_format(path: str | os.PathLike) -> InputFormat | None:
    """The format ``path`` is an input of, or None."""
    path = Path(path)
    for fmt in FORMATS:
        if fmt.matches(path):
            return fmt
    return None


def is_input(path: str | os.PathLike) -> bool:
    """True for a non-hidden file (or series folder) of a supported format."""
    path = Path(path)
    return not _hidden(path) and input_format(path) is not None


def list_inputs(folder: str | os.PathLike) -> list[Path]:
    """The inputs directly inside ``folder``, sorted by name.

    Hidden entries (leftovers of interrupted writes ``.<name>.samtmp-*``, macOS ``._*`` files)
    are never inputs.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if is_input(p))


def _format_of(path: Path) -> InputFormat:
    fmt = input_format(path)
    if fmt is None:
        from sam_unet.io.nifti import NiftiError

        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file; check the path")
        raise NiftiError(f"{path}: not a supported input (expected a .nii or .nii.gz file, "
                         "a .nrrd/.mha/.mhd file, or a DICOM series folder or zip); convert it "
                         "to NIfTI")
    return fmt


def input_stem(path: str | os.PathLike) -> str:
    """The name outputs of ``path`` are derived from (file name without its format suffix)."""
    path = Path(path)
    fmt = input_format(path)
    if fmt is None:
        from sam_unet.io.nifti import nifti_stem

        return nifti_stem(path)
    return fmt.stem(path)


def label_suffix(path: str | os.PathLike) -> str:
    """Suffix of the label map written for input ``path`` (keeps .nii vs .nii.gz)."""
    path = Path(path)
    fmt = input_format(path)
    return fmt.label_suffix(path) if fmt is not None else ".nii.gz"


def read_volume(path: str | os.PathLike) -> Volume:
    """Read an input of any supported format into a :class:`Volume` (canonical data)."""
    path = Path(path)
    return _format_of(path).read(path)


def read_geometry(path: str | os.PathLike, *, series_uid: str | None = None
                  ) -> tuple[tuple[int, ...], np.ndarray]:
    """(stored shape, affine) of an input, without reading its voxels; ``series_uid`` picks
    one series of a DICOM input that holds several (as ``--series`` does)."""
    path = Path(path)
    if series_uid is not None:
        from sam_unet.io import dicom

        if dicom.is_dicom_input(path):
            return dicom.dicom_geometry(path, series_uid=series_uid)
    return _format_of(path).geometry(path)

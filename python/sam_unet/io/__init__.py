"""Volumes in and out: NIfTI (nibabel) today; DICOM series, DICOM SEG and SimpleITK formats beside it.

Each format lives in its own module (``nifti.py``, ...); this package re-exports the public names.
"""

from sam_unet.io.nifti import (
    NIFTI_SUFFIXES,
    NiftiError,
    NiftiVolume,
    is_nifti_path,
    list_nifti,
    load_nifti,
    nifti_stem,
    save_label_nifti,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiError",
    "NiftiVolume",
    "is_nifti_path",
    "list_nifti",
    "load_nifti",
    "nifti_stem",
    "save_label_nifti",
]

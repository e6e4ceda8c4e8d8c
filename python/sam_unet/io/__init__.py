"""Volumes in and out: NIfTI (nibabel) today; DICOM series, DICOM SEG, SimpleITK formats beside it.

Each format lives in its own module (``nifti.py``, ...); a loaded volume of any format is a
:class:`~sam_unet.io.volume.Volume` (also named ``NiftiVolume``); ``inputs.py`` finds and reads
inputs whatever their format. This package re-exports the public names.
"""

from sam_unet.io.inputs import input_stem, is_input, list_inputs, read_geometry, read_volume
from sam_unet.io.nifti import (
    NIFTI_SUFFIXES,
    NiftiError,
    NiftiVolume,
    is_nifti_path,
    list_nifti,
    load_nifti,
    nifti_stem,
    nifti_suffix,
    save_label_nifti,
)
from sam_unet.io.volume import PromptError, Volume

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiError",
    "NiftiVolume",
    "PromptError",
    "Volume",
    "input_stem",
    "is_input",
    "is_nifti_path",
    "list_inputs",
    "list_nifti",
    "load_nifti",
    "nifti_stem",
    "nifti_suffix",
    "read_geometry",
    "read_volume",
    "save_label_nifti",
]

"""SAM-UNet: train, export and run a SAM ViT-B + ResNet U-Net segmenter on medical volumes.

Public API (imported lazily so that ``import sam_unet`` stays cheap):

- :func:`build_model` -- construct a model by variant name ("res34", "res50", "tiny").
- :func:`load_checkpoint` -- load a published SAM-UNet checkpoint into a model.
- :class:`Engine` -- the volume pipeline, ``engine.segment(volume)``.
- :func:`segment_file` -- NIfTI in, uint8 label NIfTI out.
- :func:`segment_image` / :func:`segment_dicom` -- a nibabel image / a DICOM series (folder,
  zip or file) in memory -> a nibabel label image (optionally a DICOM SEG too).
- :class:`ModelInfo` -- how a model file says its model must be fed (``engine.model_info``).
- :func:`resolve_device` -- "auto" / "cpu" / "cuda" / "cuda:N" -> the device everything uses.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_model": ("sam_unet.models.build", "build_model"),
    "load_checkpoint": ("sam_unet.checkpoints", "load_checkpoint"),
    "Engine": ("sam_unet.runtime.engine", "Engine"),
    "segment_file": ("sam_unet.runtime.files", "segment_file"),
    "segment_image": ("sam_unet.runtime.images", "segment_image"),
    "segment_dicom": ("sam_unet.runtime.images", "segment_dicom"),
    "ModelInfo": ("sam_unet.model_info", "ModelInfo"),
    "resolve_device": ("sam_unet.runtime.devices", "resolve_device"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sam_unet' has no attribute {name!r}")

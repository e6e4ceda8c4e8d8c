"""The bundled MNI ICBM152 2009c (09a sym) T1 template and white-matter probability map.

See ``assets/mni152/NOTICE.md`` for the copyright and terms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

T1_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
WM_NAME = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
# The white-matter map is stored as uint8 0..255 (probability x 255); "probability > 0.5" is
# therefore "stored value > 127.5", i.e. >= 128.
WM_PROBABILITY_SCALE = 255.0
WM_THRESHOLD = 0.5
WM_LABEL_THRESHOLD = WM_THRESHOLD * WM_PROBABILITY_SCALE  # in stored units (127.5)


def asset_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "mni152"


def paths() -> tuple[Path, Path]:
    """(T1 template path, white-matter probability map path); FileNotFoundError if absent."""
    folder = asset_dir()
    t1, wm = folder / T1_NAME, folder / WM_NAME
    for p in (t1, wm):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: bundled MNI152 file is missing from the installation")
    return t1, wm


def load_t1_and_wm_mask():
    """(T1 NiftiVolume, uint8 {0,1} white-matter mask with probability > 0.5), both canonical."""
    from sam_unet.io import load_nifti

    t1_path, wm_path = paths()
    t1 = load_nifti(t1_path)
    wm = load_nifti(wm_path)
    mask = (np.asarray(wm.data, dtype=np.float32) > WM_LABEL_THRESHOLD).astype(np.uint8)
    return t1, mask

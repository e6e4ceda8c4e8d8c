"""Split an SA-Med2D-16M style release into per-modality train/test dataset folders.

The release holds ``images/``, ``masks/`` and a JSON mapping each "images/<file>" to its list of
"masks/<file>" (``SAMed2D_v1.json``). File names follow ``<modality>_<nn>--<dataset>--<case>--
<slice>.png``. Each modality becomes a dataset folder ``out/<modality>/`` in the published layout
(train/ with image2label_train.json, test/ with label2image_test.json), split by case (volume),
never by slice. Files are linked (symlink, hard link) or copied.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from sam_unet.data import layout

LINK_MODES = ("symlink", "hardlink", "copy")


def _place(src: Path, dst: Path, mode: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def split_sammed2d(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    mapping: str = "SAMed2D_v1.json",
    test_fraction: float = 0.2,
    seed: int = 0,
    modalities: list[str] | None = None,
    link: str = "symlink",
    check_files: bool = True,
) -> dict:
    """Write ``out/<modality>/{train,test}``; returns {modality: {"train": n, "test": n, ...}}."""
    root, out = Path(root), Path(out)
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    mapping_path = Path(mapping) if Path(mapping).is_absolute() else root / mapping
    table = layout.read_train_json(mapping_path)
    by_modality: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(lambda: defaultdict(dict))
    for image, masks in table.items():
        g = layout.parse_name(image, default_group="unknown")
        if modalities and g["modality"] not in modalities:
            continue
        case = f"{g['dataset']}--{g['case']}"
        by_modality[g["modality"]][case][image] = masks
    if modalities:
        absent = sorted(set(modalities) - set(by_modality))
        if absent:
            raise ValueError(f"{mapping_path}: no images of modality {absent}; found "
                             f"{sorted(by_modality)}")
    if check_files:
        missing = [root / p for imgs in by_modality.values() for c in imgs.values()
                   for i, ms in c.items() for p in (i, *ms) if not (root / p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{mapping_path}: {len(missing)} listed files are missing, e.g. "
                + ", ".join(str(p) for p in missing[:3]))
    summary = {}
    rng = np.random.default_rng(seed)
    for modality in sorted(by_modality):
        cases = sorted(by_modality[modality])
        n_test = 0 if test_fraction == 0 or len(cases) < 2 else \
            min(max(1, round(test_fraction * len(cases))), len(cases) - 1)
        test_cases = set(rng.permutation(cases)[:n_test].tolist())
        train_map: dict[str, list[str]] = {}
        test_map: dict[str, str] = {}
        dst = out / modality
        for case in cases:
            split = "test" if case in test_cases else "train"
            for image, masks in by_modality[modality][case].items():
                _place(root / image, dst / split / image, link)
                for m in masks:
                    _place(root / m, dst / split / m, link)
                    if split == "test":
                        test_map[m] = image
                if split == "train":
                    train_map[image] = list(masks)
        for split in ("train", "test"):
            (dst / split / "images").mkdir(parents=True, exist_ok=True)
            (dst / split / "masks").mkdir(parents=True, exist_ok=True)
        layout.write_json_atomic(dst / "train" / layout.TRAIN_JSON, train_map)
        layout.write_json_atomic(dst / "test" / layout.TEST_JSON, test_map)
        summary[modality] = {"cases": len(cases), "test_cases": len(test_cases),
                             "train_images": len(train_map), "test_masks": len(test_map)}
    return summary

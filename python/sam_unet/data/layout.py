"""The published dataset layout (SA-Med2D style) and its JSON mapping files.

A dataset folder holds::

    train/images/*.png  train/masks/*.png  train/image2label_train.json
    test/images/*.png   test/masks/*.png   test/label2image_test.json

``image2label_train.json`` maps "images/<file>" to a list of "masks/<file>";
``label2image_test.json`` maps "masks/<file>" to "images/<file>". Paths are relative to a root
directory: by default the folder that holds the JSON file (``train/`` or ``test/``).

File names follow the SA-Med2D convention ``<modality>--<dataset>--<case>--<slice>.png`` for
images and ``<image stem>--<label>_<component>.png`` for masks; :func:`parse_name` reads it
(names that do not follow it are grouped under their folder).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

TRAIN_JSON = "image2label_train.json"
TEST_JSON = "label2image_test.json"
MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """A dataset folder, JSON mapping, image or mask that cannot be used; names the path."""


def _load_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 JSON file ({exc})") from exc


def _check_rel(path: Path, key: str, value, prefix: str) -> str:
    if not isinstance(value, str) or not value:
        raise DatasetError(
            f"{path}: entry {key!r}: expected a relative path string, got {value!r}")
    if os.path.isabs(value) or ".." in Path(value).parts:
        raise DatasetError(
            f"{path}: entry {key!r}: path {value!r} must be relative, inside the root")
    return value


def read_train_json(path: str | os.PathLike) -> dict[str, list[str]]:
    """Validated ``image2label_train.json``: {"images/<f>": ["masks/<f>", ...]}."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping images to lists of masks, "
                           f"got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for key, masks in data.items():
        _check_rel(path, key, key, "images")
        if isinstance(masks, str):
            masks = [masks]
        if not isinstance(masks, list) or not masks:
            raise DatasetError(f"{path}: entry {key!r}: expected a non-empty list of mask paths, "
                               f"got {masks!r}")
        out[key] = [_check_rel(path, key, m, "masks") for m in masks]
    return out


def read_test_json(path: str | os.PathLike) -> dict[str, str]:
    """Validated ``label2image_test.json``: {"masks/<f>": "images/<f>"}."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping masks to images, "
                           f"got {type(data).__name__}")
    for key, image in data.items():
        _check_rel(path, key, key, "masks")
        _check_rel(path, key, image, "images")
    return dict(data)


def write_json_atomic(path: Path, data) -> None:
    from sam_unet.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


_SUFFIX_NUM = re.compile(r"_\d+$")


def parse_name(name: str, default_group: str = "") -> dict[str, str]:
    """{"modality", "dataset", "case"} from ``<modality>--<dataset>--<case>--...`` names."""
    stem = Path(name).name
    for ext in (".png", ".jpg", ".jpeg"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    parts = stem.split("--")
    if len(parts) >= 3:
        modality = _SUFFIX_NUM.sub("", parts[0]) or parts[0]
        return {"modality": modality, "dataset": parts[1], "case": parts[2]}
    return {"modality": default_group, "dataset": default_group, "case": stem}


def read_image_png(path: Path) -> np.ndarray:
    """An 8-bit PNG as uint8 (H, W) (gray) or (H, W, 3) (RGB); clear errors naming the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif mode in ("P", "RGBA", "LA", "1"):
                arr = np.asarray(im.convert("RGB" if mode in ("P", "RGBA") else "L"))
            else:
                raise DatasetError(f"{path}: unsupported image mode {mode!r} (expected 8-bit gray "
                                   "or RGB)")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc
    if arr.ndim == 3 and arr.shape[2] == 3 and (
        np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    ):
        arr = arr[..., 0]
    if 0 in arr.shape:
        raise DatasetError(f"{path}: empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_mask_png(path: Path) -> np.ndarray:
    """A strictly binary mask PNG (0/255 or 0/1) as bool (H, W); anything else is an error."""
    arr = read_image_png(path)
    if arr.ndim == 3:
        raise DatasetError(f"{path}: mask must be single-channel (its RGB channels differ)")
    values = np.unique(arr)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = values[:10].tolist()
        more = f" (+{values.size - 10} more)" if values.size > 10 else ""
        raise DatasetError(
            f"{path}: mask is not binary: values found {shown}{more}; expected 0/255 or 0/1"
        )
    return arr > 0


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, optimize=False, compress_level=1)


def dataset_folders(paths) -> list[Path]:
    """Dataset folders: each path holding train/ or test/ is one; a path without them whose
    sub-folders hold them (e.g. an SA-Med2D split per modality) expands to those."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such dataset folder")
        if (p / "train").is_dir() or (p / "test").is_dir():
            out.append(p)
            continue
        subs = sorted(s for s in p.iterdir() if (s / "train").is_dir() or (s / "test").is_dir())
        if not subs:
            raise DatasetError(f"{p}: not a dataset folder (no train/ or test/ inside, nor in its "
                               "sub-folders)")
        out.extend(subs)
    return out

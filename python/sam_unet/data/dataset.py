"""PyTorch datasets over the published layout (see :mod:`sam_unet.data.layout`).

Training samples draw ``masks_per_image`` masks per image with replacement (published default
5). The image goes through the engine's preprocessing (transforms: resize the longest side to
256 as PIL does, normalise, zero-pad); each mask through the same resize (transforms.resize_mask)
and zero padding to 256x256. Every random choice of a sample (masks drawn, flips, intensity
jitter, box jitter) comes from ``numpy.random.default_rng([seed, epoch, index])`` so data and
augmentation do not depend on global RNG state, worker count or resumption.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_unet.data import layout
from sam_unet.data.layout import DatasetError
from sam_unet.data.prompts import (
    PROMPT_KINDS,
    evaluation_kind,
    full_box,
    jitter_box,
    mask_box,
    prompt_kinds_for,
)

AUGMENTATIONS = ("hflip", "vflip", "intensity")


def preprocess_uint8(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 (H, W) or (H, W, 3) -> ((3, 256, 256) float32, (h', w')), engine semantics."""
    from sam_unet import transforms

    h, w = image.shape[:2]
    h2, w2 = transforms.resized_shape(h, w)
    if image.ndim == 2:
        small = transforms.resize_uint8(image, (h2, w2))
        out = np.asarray(transforms.normalize_pad(small, dtype=np.float32), dtype=np.float32)
        return out, (h2, w2)
    size = transforms.IMAGE_SIZE
    out = np.zeros((3, size, size), dtype=np.float32)
    for c in range(3):
        small = transforms.resize_uint8(np.ascontiguousarray(image[..., c]), (h2, w2))
        out[c, :h2, :w2] = (small.astype(np.float32) - transforms.PIXEL_MEAN[c]) / \
            transforms.PIXEL_STD[c]
    return out, (h2, w2)


def resize_pad_mask(mask: np.ndarray, resized_hw: tuple[int, int]) -> np.ndarray:
    """bool/uint8 (H, W) -> uint8 {0, 1} (256, 256): transforms.resize_mask, zero padding."""
    from sam_unet import transforms

    size = transforms.IMAGE_SIZE
    small = np.asarray(transforms.resize_mask(np.asarray(mask, dtype=np.uint8), resized_hw))
    out = np.zeros((size, size), dtype=np.uint8)
    out[: small.shape[0], : small.shape[1]] = small > 0
    return out


def _intensity_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Gamma in [0.8, 1.25] (log-uniform) and contrast/brightness +-10 %, on 8-bit values.
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    contrast = float(rng.uniform(0.9, 1.1))
    brightness = float(rng.uniform(-0.05, 0.05))
    x = image.astype(np.float32) / 255.0
    x = np.power(x, gamma) * contrast + brightness
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@dataclass
class _TrainItem:
    image: Path
    masks: list[Path]
    folder: Path


def _parse_augment(augment) -> frozenset[str]:
    if augment is None or augment == "" or augment == "none":
        return frozenset()
    names = augment.split(",") if isinstance(augment, str) else list(augment)
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad:
        raise ValueError(f"unknown augmentation(s) {bad}; choose from {AUGMENTATIONS}")
    return frozenset(names)


class TrainDataset:
    """Training samples from the train/ split of one or more dataset folders.

    ``__getitem__`` takes an index or an ``(epoch, index)`` pair (what the trainer's sampler
    yields) and returns a dict of NumPy arrays: ``image`` (3, 256, 256) float32, ``masks``
    (K, 256, 256) uint8 {0,1}, ``boxes`` (K, 4) float32 in the 256 frame, ``resized_hw`` (2,)
    int64.
    """

    def __init__(
        self,
        folders: Sequence[str | os.PathLike],
        *,
        masks_per_image: int = 5,
        prompt: str = "box",
        jitter: bool = True,
        augment=None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        if prompt not in PROMPT_KINDS:
            raise ValueError(f"prompt must be one of {PROMPT_KINDS}, got {prompt!r}")
        if masks_per_image < 1:
            raise ValueError(f"masks_per_image must be >= 1, got {masks_per_image}")
        self.masks_per_image = int(masks_per_image)
        self.prompt = prompt
        self.jitter = bool(jitter)
        self.augment = _parse_augment(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self._cache: dict[Path, np.ndarray] = {}
        self.items: list[_TrainItem] = []
        for folder in layout.dataset_folders(folders):
            root = folder / "train"
            mapping = layout.read_train_json(root / layout.TRAIN_JSON)
            for image, masks in mapping.items():
                self.items.append(_TrainItem(root / image, [root / m for m in masks], folder))
        if not self.items:
            raise DatasetError(f"no training images in {[str(f) for f in folders]}")
        missing = [p for it in self.items for p in (it.image, *it.masks) if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise FileNotFoundError(
                "files listed in the training JSON are missing: "
                + ", ".join(str(p) for p in missing[:5]) + more
            )

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _read(self, path: Path, mask: bool) -> np.ndarray:
        if self.cache and path in self._cache:
            return self._cache[path]
        arr = layout.read_mask_png(path) if mask else layout.read_image_png(path)
        if self.cache:
            self._cache[path] = arr
        return arr

    def __getitem__(self, key) -> dict:
        if isinstance(key, tuple | list):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(key)
        item = self.items[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        image = self._read(item.image, False)
        picks = rng.integers(0, len(item.masks), size=self.masks_per_image)
        masks = [self._read(item.masks[int(i)], True) for i in picks]
        for m, i in zip(masks, picks, strict=True):
            if m.shape != image.shape[:2]:
                raise DatasetError(f"{item.masks[int(i)]}: mask shape {m.shape} differs from "
                                   f"image {item.image} shape {image.shape[:2]}")
        hflip = "hflip" in self.augment and rng.random() < 0.5
        vflip = "vflip" in self.augment and rng.random() < 0.5
        if hflip:
            image = image[:, ::-1]
            masks = [m[:, ::-1] for m in masks]
        if vflip:
            image = image[::-1]
            masks = [m[::-1] for m in masks]
        image = np.ascontiguousarray(image)
        if "intensity" in self.augment:
            image = _intensity_jitter(image, rng)
        x, hw = preprocess_uint8(image)
        h, w = image.shape[:2]
        sy, sx = hw[0] / h, hw[1] / w
        boxes = np.zeros((self.masks_per_image, 4), dtype=np.float32)
        out_masks = np.zeros((self.masks_per_image, x.shape[1], x.shape[2]), dtype=np.uint8)
        kinds = prompt_kinds_for(self.prompt, len(masks), rng)
        for j, m in enumerate(masks):
            out_masks[j] = resize_pad_mask(m, hw)
            box = mask_box(m) if kinds[j] == "box" else None
            if box is None:
                boxes[j] = full_box(hw)
                continue
            box = box * np.array([sx, sy, sx, sy], dtype=np.float32)
            if self.jitter:
                box = jitter_box(box, rng, hw)
            boxes[j] = box
        return {
            "image": x,
            "masks": out_masks,
            "boxes": boxes,
            "resized_hw": np.array(hw, dtype=np.int64),
        }


@dataclass
class TestImage:
    image: Path
    masks: list[Path]
    folder: Path
    group: dict


class TestDataset:
    """Evaluation samples from the test/ split, one entry per image with all its masks.

    ``__getitem__`` returns a dict: ``image`` (3, 256, 256) float32, ``masks`` list of bool
    (H, W) at the original resolution, ``boxes`` (K, 4) float32 in the 256 frame (largest
    component box, no jitter, or the full-slice box; ``prompt="both"`` is evaluated with the
    full-slice box, see :func:`~sam_unet.data.prompts.evaluation_kind`), ``original_hw``,
    ``resized_hw``, ``image_path``, ``mask_paths``, ``folder``, ``modality``, ``dataset``, ``case``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, folders: Iterable[str | os.PathLike], *, prompt: str = "box",
                 split: str = "test") -> None:
        if prompt not in PROMPT_KINDS:
            raise ValueError(f"prompt must be one of {PROMPT_KINDS}, got {prompt!r}")
        self.prompt = prompt
        self.items: list[TestImage] = []
        for folder in layout.dataset_folders(list(folders)):
            root = folder / split
            if split == "test":
                mapping = layout.read_test_json(root / layout.TEST_JSON)
                per_image: dict[str, list[str]] = {}
                for mask, image in mapping.items():
                    per_image.setdefault(image, []).append(mask)
            else:
                per_image = layout.read_train_json(root / layout.TRAIN_JSON)
            for image, masks in per_image.items():
                group = layout.parse_name(image, default_group=folder.name)
                self.items.append(TestImage(root / image, [root / m for m in masks], folder, group))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        from sam_unet import transforms

        item = self.items[index]
        image = layout.read_image_png(item.image)
        masks = [layout.read_mask_png(p) for p in item.masks]
        for m, p in zip(masks, item.masks, strict=True):
            if m.shape != image.shape[:2]:
                raise DatasetError(f"{p}: mask shape {m.shape} differs from image {item.image} "
                                   f"shape {image.shape[:2]}")
        x, hw = preprocess_uint8(image)
        h, w = image.shape[:2]
        boxes = np.zeros((len(masks), 4), dtype=np.float32)
        kind = evaluation_kind(self.prompt)
        for j, m in enumerate(masks):
            box = mask_box(m) if kind == "box" else None
            if box is None:
                boxes[j] = full_box(hw)
            else:
                boxes[j] = np.asarray(
                    transforms.scale_boxes(box[None], (h, w), hw)[0], dtype=np.float32)
        return {
            "image": x,
            "masks": masks,
            "boxes": boxes,
            "original_hw": (h, w),
            "resized_hw": hw,
            "image_path": str(item.image),
            "mask_paths": [str(p) for p in item.masks],
            "folder": str(item.folder),
            **item.group,
        }

"""NIfTI (image, label) volumes -> 2D slices in the published layout, plus a JSON manifest.

Slices are taken along ``axis`` (default the last) after reorientation to the closest canonical
(RAS+) orientation, and normalised to 8 bits exactly as the engine does (transforms.to_uint8
with the same ``normalize`` mode and ``window``), so a model trained on the PNGs sees what the
engine feeds it. One mask is written per label value present in a slice (or per connected
component with ``components=True``) when its area exceeds ``min_foreground_ratio`` of the slice
area; a slice is kept when it has at least one mask (``keep_empty=True`` keeps every slice and
writes empty masks too: for full-slice-prompt models that must learn to output nothing).

The train/test split is by volume. A single volume can only be split by slices
(``test_slices="every:5"`` or ``"range:A:B"``), which is NOT a patient-level split: neighbouring
slices of the same subject end up on both sides; the manifest records it.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam_unet.data import layout

DEFAULT_MIN_FOREGROUND_RATIO = 100 / 65536
AXIS_NAMES = ("x", "y", "z")
MANIFEST_VERSION = 1


def _safe(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).replace("--", "-")
    return name.strip("._-") or "volume"


def parse_test_slices(spec: str | None):
    """'every:N[:OFFSET]' or 'range:A:B' -> predicate(k, n_slices) -> bool (held out)."""
    if spec is None:
        return None
    parts = spec.split(":")
    try:
        if parts[0] == "every" and len(parts) in (2, 3):
            n = int(parts[1])
            off = int(parts[2]) if len(parts) == 3 else 0
            if n < 2:
                raise ValueError
            return lambda k, _n: k % n == off % n
        if parts[0] == "range" and len(parts) == 3:
            a, b = int(parts[1]), int(parts[2])
            if b <= a:
                raise ValueError
            return lambda k, _n: a <= k < b
    except ValueError:
        pass
    raise ValueError(
        f"--test-slices {spec!r}: expected 'every:N' (N >= 2, optional ':OFFSET') or 'range:A:B' "
        "(held-out slices A <= k < B)"
    )


def find_pairs(images_dir, labels_dir) -> list[tuple[Path, Path]]:
    """Pair NIfTI files of two folders by name (``case_0000.nii.gz`` also matches ``case``)."""
    from sam_unet.io import list_nifti, nifti_stem

    images = list_nifti(images_dir)
    labels = {nifti_stem(p): p for p in list_nifti(labels_dir)}
    pairs, missing = [], []
    for img in images:
        stem = nifti_stem(img)
        lab = labels.get(stem) or labels.get(re.sub(r"_\d{4}$", "", stem))
        (pairs.append((img, lab)) if lab is not None else missing.append(img))
    if missing:
        raise FileNotFoundError(
            f"no label in {labels_dir} for: " + ", ".join(str(p) for p in missing[:5])
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    if not pairs:
        raise FileNotFoundError(f"{images_dir}: no NIfTI images (.nii, .nii.gz)")
    return pairs


def _label_values(label: np.ndarray, path: Path, labels, threshold) -> tuple[np.ndarray, list]:
    if threshold is not None:
        return (np.asarray(label, dtype=np.float64) > float(threshold)).astype(np.uint8), [1]
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)):
            raise ValueError(f"{path}: label volume has NaN/Inf values")
        if not np.all(label == np.round(label)):
            raise ValueError(
                f"{path}: label volume has non-integer values (a probability map?); pass "
                "--label-threshold T to binarise it"
            )
        label = label.astype(np.int64)
    values = [int(v) for v in np.unique(label) if v != 0]
    if labels is not None:
        values = [v for v in values if v in set(labels)]
    return label, values


def prepare_dataset(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    out: str | os.PathLike,
    *,
    modality: str = "mr",
    dataset: str | None = None,
    axis: int = -1,
    normalize: str = "slice-minmax",
    window: tuple[float, float] | None = None,
    min_foreground_ratio: float = DEFAULT_MIN_FOREGROUND_RATIO,
    components: bool = False,
    labels: Sequence[int] | None = None,
    label_threshold: float | None = None,
    keep_empty: bool = False,
    test_fraction: float = 0.2,
    test_volumes: Sequence[str] | None = None,
    test_slices: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict:
    """Write the dataset folder ``out`` (train/, test/, manifest.json); returns the manifest.

    The folder is built next to ``out`` and renamed into place at the end, so a failure leaves
    nothing behind.
    """
    from scipy import ndimage
    from tqdm import tqdm

    from sam_unet import transforms
    from sam_unet.io import load_nifti, nifti_stem

    out = Path(out)
    pairs = [(Path(i), Path(lab)) for i, lab in pairs]
    if not pairs:
        raise ValueError("prepare: no (image, label) pairs given")
    if normalize not in transforms.NORMALIZE_MODES:
        raise ValueError(
            f"normalize must be one of {transforms.NORMALIZE_MODES}, got {normalize!r}")
    if normalize == "window" and window is None:
        raise ValueError("normalize='window' needs --window LO HI")
    if not 0 <= min_foreground_ratio < 1:
        raise ValueError(f"min_foreground_ratio must be in [0, 1), got {min_foreground_ratio}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty (use --overwrite)")
    modality = _safe(modality)
    dataset = _safe(dataset or out.name)

    names = [_safe(nifti_stem(p)) for p, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("prepare: two input volumes share a name: "
                         + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    held_out = parse_test_slices(test_slices)
    if held_out is not None and len(pairs) != 1:
        raise ValueError("--test-slices splits one volume by slices; with several volumes the "
                         "split is by volume (use --test-fraction or --test-volumes)")
    if test_volumes:
        unknown = sorted(set(test_volumes) - set(names))
        if unknown:
            raise ValueError(f"--test-volumes names unknown volumes {unknown}; known: {names}")
        test_set = set(test_volumes)
        split_info = {"method": "volume", "patient_level": True, "test_volumes": sorted(test_set)}
    elif held_out is not None:
        test_set = set()
        split_info = {"method": "slices", "spec": test_slices, "patient_level": False,
                      "note": "slice-level split of one volume: NOT a patient-level evaluation"}
    else:
        if not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        n = len(pairs)
        if test_fraction > 0 and n < 2:
            raise ValueError(
                f"one volume ({pairs[0][0]}) cannot be split by volume: pass --test-slices "
                "every:N or range:A:B (a slice-level split, not patient-level) or "
                "--test-fraction 0"
            )
        n_test = 0 if test_fraction == 0 else min(max(1, round(test_fraction * n)), n - 1)
        order = np.random.default_rng(seed).permutation(sorted(names))
        test_set = set(order[:n_test].tolist())
        split_info = {"method": "volume", "patient_level": True, "test_fraction": test_fraction,
                      "seed": seed, "test_volumes": sorted(test_set)}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        for split in ("train", "test"):
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "masks").mkdir(parents=True)
        train_map: dict[str, list[str]] = {}
        test_map: dict[str, str] = {}
        volumes = []
        ax_name = None
        bar = tqdm(total=len(pairs), desc="prepare", unit="vol", disable=quiet)
        for (img_path, lab_path), name in zip(pairs, names, strict=True):
            img = load_nifti(img_path)
            lab = load_nifti(lab_path)
            if img.shape != lab.shape:
                raise ValueError(f"{lab_path}: label shape {lab.shape} (canonical) differs from "
                                 f"image {img_path} shape {img.shape}")
            if not np.allclose(img.affine, lab.affine, atol=1e-3):
                bar.write(f"warning: {lab_path}: affine differs from {img_path}'s")
            data = np.asarray(img.data)
            if not np.issubdtype(data.dtype, np.number) or data.dtype == bool:
                raise ValueError(f"{img_path}: unsupported dtype {data.dtype}")
            label, values = _label_values(np.asarray(lab.data), lab_path, labels, label_threshold)
            ax = axis % 3
            ax_name = AXIS_NAMES[ax]
            nz = data.shape[ax]
            vol_split = "test" if name in test_set else "train"
            slices = []
            for k in range(nz):
                split = vol_split
                if held_out is not None:
                    split = "test" if held_out(k, nz) else "train"
                lab2d = np.take(label, k, axis=ax)
                h, w = lab2d.shape
                min_area = min_foreground_ratio * h * w
                masks = []
                for v in values:
                    m = lab2d == v
                    if components:
                        cc, ncc = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
                        comps = [(c, cc == c) for c in range(1, ncc + 1)]
                    else:
                        comps = [(0, m)]
                    for c, cm in comps:
                        area = int(cm.sum())
                        if area > min_area or (keep_empty and not components):
                            masks.append((v, c, cm, area))
                if not masks:
                    continue
                stem = f"{modality}--{dataset}--{name}--{ax_name}_{k:04d}"
                image_rel = f"images/{stem}.png"
                u8 = transforms.to_uint8(np.take(data, k, axis=ax), mode=normalize, window=window)
                layout.write_png(tmp / split / image_rel, np.asarray(u8, dtype=np.uint8))
                rels = []
                for v, c, cm, area in masks:
                    mask_rel = f"masks/{stem}--{v:04d}_{c:03d}.png"
                    layout.write_png(tmp / split / mask_rel, cm.astype(np.uint8) * 255)
                    rels.append({"file": f"{split}/{mask_rel}", "label": v, "component": c,
                                 "area": area})
                    if split == "test":
                        test_map[mask_rel] = image_rel
                if split == "train":
                    train_map[image_rel] = [r["file"].split("/", 1)[1] for r in rels]
                slices.append({"index": k, "split": split, "image": f"{split}/{image_rel}",
                               "masks": rels})
            volumes.append({
                "name": name,
                "image": str(Path(img_path).resolve()),
                "label": str(Path(lab_path).resolve()),
                "split": vol_split if held_out is None else "slices",
                "shape": list(img.shape),
                "original_shape": list(img.original_shape),
                "axcodes": list(img.axcodes),
                "axis": ax,
                "labels": values,
                "n_slices": nz,
                "slices": slices,
            })
            bar.update(1)
        bar.close()
        layout.write_json_atomic(tmp / "train" / layout.TRAIN_JSON, train_map)
        layout.write_json_atomic(tmp / "test" / layout.TEST_JSON, test_map)
        manifest = {
            "version": MANIFEST_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dataset": dataset,
            "modality": modality,
            "axis": ax_name,
            "normalize": normalize,
            "window": list(window) if window is not None else None,
            "min_foreground_ratio": min_foreground_ratio,
            "components": components,
            "keep_empty": keep_empty,
            "label_threshold": label_threshold,
            "split": split_info,
            "counts": {
                "volumes": len(volumes),
                "train_images": len(train_map),
                "train_masks": sum(len(v) for v in train_map.values()),
                "test_images": len(set(test_map.values())),
                "test_masks": len(test_map),
            },
            "volumes": volumes,
        }
        layout.write_json_atomic(tmp / layout.MANIFEST, manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of a prepared dataset folder, or None when it has none."""
    path = Path(folder) / layout.MANIFEST
    if not path.is_file():
        return None
    data = layout._load_json(path)
    if not isinstance(data, dict) or "volumes" not in data:
        raise layout.DatasetError(f"{path}: not a prepare manifest (no 'volumes')")
    return data

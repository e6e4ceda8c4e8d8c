"""NIfTI (image, label) volumes -> 2D slices in the published layout, plus a JSON manifest.

Slices are taken along ``axis`` (default the last) after reorientation to the closest canonical
(RAS+) orientation, and normalised to 8 bits exactly as the engine does (transforms.to_uint8
with the same ``normalize`` mode and ``window``), so a model trained on the PNGs sees what the
engine feeds it. One mask is written per label value present in a slice (or per connected
component with ``components=True``) when its area exceeds ``min_foreground_ratio`` of the slice
area; a slice is kept when it has at least one mask (``keep_empty=True`` keeps every slice and
writes empty masks too: for full-slice-prompt models that must learn to output nothing).

A label volume must hold labels: a probability map (non-integer values, or more distinct values
than ``max_labels``) is refused with the fix, binarising it with ``label_threshold``.

The train/test split is by volume. A single volume can only be split by slices
(``test_slices="every:5"`` or ``"range:A:B"``), which is NOT a patient-level split: neighbouring
slices of the same subject end up on both sides; the manifest records it.

Everything is chosen by one :class:`PrepareOptions`; :func:`prepare_dataset` runs it.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.data import layout

DEFAULT_MIN_FOREGROUND_RATIO = 100 / 65536
#: More distinct label values than this in one label volume is taken for a probability map
#: (an 8-bit map has up to 255); multi-organ label maps have far fewer (117 in the largest
#: common CT set), and --max-labels raises the limit.
DEFAULT_MAX_LABELS = 128
AXIS_NAMES = ("x", "y", "z")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class PrepareOptions:
    """How volumes become a dataset folder; each field is a ``sam-unet prepare`` option.

    modality, dataset: tags in the file names (dataset defaults to the output folder's name);
    axis: slice axis after canonical reorientation; normalize, window: the 8-bit mapping as the
    engine does it; min_foreground_ratio: a mask is kept above this fraction of the slice area;
    components: one mask per connected component instead of per label value; labels: label
    values to keep (None: all); label_threshold: binarise the label as value > T; max_labels:
    refuse a label volume with more distinct values; keep_empty: keep every slice (empty masks
    too); test_fraction / test_volumes / test_slices: the split (by volume, by name, or by slices
    of one volume); seed: the volume split's shuffle; overwrite: replace a non-empty output;
    quiet: no progress bar. Field checks run when the object is made (ValueError).
    """

    modality: str = "mr"
    dataset: str | None = None
    axis: int = -1
    normalize: str = "slice-minmax"
    window: tuple[float, float] | None = None
    min_foreground_ratio: float = DEFAULT_MIN_FOREGROUND_RATIO
    components: bool = False
    labels: tuple[int, ...] | None = None
    label_threshold: float | None = None
    max_labels: int = DEFAULT_MAX_LABELS
    keep_empty: bool = False
    test_fraction: float = 0.2
    test_volumes: tuple[str, ...] | None = None
    test_slices: str | None = None
    seed: int = 0
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        from sam_unet import transforms

        for name in ("labels", "test_volumes", "window"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.normalize not in transforms.NORMALIZE_MODES:
            raise ValueError(
                f"normalize must be one of {transforms.NORMALIZE_MODES}, got {self.normalize!r}")
        if self.normalize == "window" and self.window is None:
            raise ValueError("normalize='window' needs --window LO HI")
        if not 0 <= self.min_foreground_ratio < 1:
            raise ValueError(
                f"min_foreground_ratio must be in [0, 1), got {self.min_foreground_ratio}")
        if self.max_labels < 1:
            raise ValueError(f"--max-labels {self.max_labels}: must be >= 1")
        parse_test_slices(self.test_slices)  # a bad spec fails here, before any work


def _safe(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).replace("--", "-")
    return name.strip("._-") or "volume"


def parse_test_slices(spec: str | None) -> Callable[[int, int], bool] | None:
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


def _threshold_hint(label: np.ndarray) -> str:
    """A threshold to suggest: half the largest value (0.5 for a 0..1 map, 127.5 for 0..255)."""
    top = float(np.max(label)) if label.size else 1.0
    return f"{(top if top > 0 else 1.0) / 2:g}"


def label_values(label: np.ndarray, path: Path, options: PrepareOptions) -> tuple[np.ndarray, list]:
    """The label volume to slice (binarised with ``label_threshold``, else integer) and the
    label values to make masks of.

    Refuses what is not a label map: NaN/Inf, non-integer values, or more than ``max_labels``
    distinct values (after the ``labels`` filter): each would become its own "label", one mask
    per gray value of a probability map.
    """
    threshold = options.label_threshold
    if threshold is not None:
        return (np.asarray(label, dtype=np.float64) > float(threshold)).astype(np.uint8), [1]
    fix = (f"threshold it, e.g. --label-threshold {_threshold_hint(label)} (a mask is value > T)")
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)):
            raise ValueError(f"{path}: label volume has NaN/Inf values")
        if not np.all(label == np.round(label)):
            raise ValueError(
                f"{path}: label volume has non-integer values (a probability map?); {fix}")
        label = label.astype(np.int64)
    values = [int(v) for v in np.unique(label) if v != 0]
    if options.labels is not None:
        values = [v for v in values if v in set(options.labels)]
    if len(values) > options.max_labels:
        raise ValueError(
            f"{path}: label volume has {len(values)} distinct values (a probability map?): "
            f"{fix}, or pass --max-labels {len(values)} if they are {len(values)} structures"
        )
    return label, values


@dataclass(frozen=True)
class _Split:
    test_volumes: frozenset[str]  # volumes held out whole
    held_out: Callable[[int, int], bool] | None  # slice predicate (one volume split by slices)
    info: dict[str, Any]  # what the manifest records


def _plan_split(names: list[str], pairs: list[tuple[Path, Path]], o: PrepareOptions) -> _Split:
    held_out = parse_test_slices(o.test_slices)
    if held_out is not None and len(pairs) != 1:
        raise ValueError("--test-slices splits one volume by slices; with several volumes the "
                         "split is by volume (use --test-fraction or --test-volumes)")
    if o.test_volumes:
        unknown = sorted(set(o.test_volumes) - set(names))
        if unknown:
            raise ValueError(f"--test-volumes names unknown volumes {unknown}; known: {names}")
        test_set = set(o.test_volumes)
        return _Split(frozenset(test_set), held_out, {
            "method": "volume", "patient_level": True, "test_volumes": sorted(test_set)})
    if held_out is not None:
        return _Split(frozenset(), held_out, {
            "method": "slices", "spec": o.test_slices, "patient_level": False,
            "note": "slice-level split of one volume: NOT a patient-level evaluation"})
    if not 0 <= o.test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {o.test_fraction}")
    n = len(pairs)
    if o.test_fraction > 0 and n < 2:
        raise ValueError(
            f"one volume ({pairs[0][0]}) cannot be split by volume: pass --test-slices "
            "every:N or range:A:B (a slice-level split, not patient-level) or "
            "--test-fraction 0"
        )
    n_test = 0 if o.test_fraction == 0 else min(max(1, round(o.test_fraction * n)), n - 1)
    order = np.random.default_rng(o.seed).permutation(sorted(names))
    test_set = set(order[:n_test].tolist())
    return _Split(frozenset(test_set), None, {
        "method": "volume", "patient_level": True, "test_fraction": o.test_fraction,
        "seed": o.seed, "test_volumes": sorted(test_set)})


def _slice_masks(lab2d: np.ndarray, values: list[int], o: PrepareOptions) -> list[tuple]:
    """(label, component, mask, area) of every mask one label slice yields."""
    from scipy import ndimage

    h, w = lab2d.shape
    min_area = o.min_foreground_ratio * h * w
    masks = []
    for v in values:
        m = lab2d == v
        if o.components:
            cc, ncc = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
            comps = [(c, cc == c) for c in range(1, ncc + 1)]
        else:
            comps = [(0, m)]
        for c, cm in comps:
            area = int(cm.sum())
            if area > min_area or (o.keep_empty and not o.components):
                masks.append((v, c, cm, area))
    return masks


class _DatasetWriter:
    """Writes slices and masks into a partial folder and keeps the two JSON maps."""

    def __init__(self, root: Path, modality: str, dataset: str, o: PrepareOptions) -> None:
        self.root, self.modality, self.dataset, self.o = root, modality, dataset, o
        for split in ("train", "test"):
            (root / split / "images").mkdir(parents=True)
            (root / split / "masks").mkdir(parents=True)
        self.train_map: dict[str, list[str]] = {}
        self.test_map: dict[str, str] = {}

    def volume(self, name: str, img_path: Path, lab_path: Path, split: _Split, bar) -> dict:
        """Slice one (image, label) pair; returns its manifest entry."""
        from sam_unet import transforms
        from sam_unet.io import load_nifti

        o = self.o
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
        label, values = label_values(np.asarray(lab.data), lab_path, o)
        ax = o.axis % 3
        nz = data.shape[ax]
        vol_split = "test" if name in split.test_volumes else "train"
        slices = []
        for k in range(nz):
            where = vol_split
            if split.held_out is not None:
                where = "test" if split.held_out(k, nz) else "train"
            masks = _slice_masks(np.take(label, k, axis=ax), values, o)
            if not masks:
                continue
            stem = f"{self.modality}--{self.dataset}--{name}--{AXIS_NAMES[ax]}_{k:04d}"
            image_rel = f"images/{stem}.png"
            u8 = transforms.to_uint8(np.take(data, k, axis=ax), mode=o.normalize, window=o.window)
            layout.write_png(self.root / where / image_rel, np.asarray(u8, dtype=np.uint8))
            rels = [self._mask(where, stem, image_rel, *m) for m in masks]
            if where == "train":
                self.train_map[image_rel] = [r["file"].split("/", 1)[1] for r in rels]
            slices.append({"index": k, "split": where, "image": f"{where}/{image_rel}",
                           "masks": rels})
        return {
            "name": name,
            "image": str(Path(img_path).resolve()),
            "label": str(Path(lab_path).resolve()),
            "split": vol_split if split.held_out is None else "slices",
            "shape": list(img.shape),
            "original_shape": list(img.original_shape),
            "axcodes": list(img.axcodes),
            "axis": ax,
            "labels": values,
            "n_slices": nz,
            "slices": slices,
        }

    def _mask(self, where: str, stem: str, image_rel: str, v: int, c: int, cm: np.ndarray,
              area: int) -> dict:
        mask_rel = f"masks/{stem}--{v:04d}_{c:03d}.png"
        layout.write_png(self.root / where / mask_rel, cm.astype(np.uint8) * 255)
        if where == "test":
            self.test_map[mask_rel] = image_rel
        return {"file": f"{where}/{mask_rel}", "label": v, "component": c, "area": area}

    def write_maps(self) -> None:
        layout.write_json_atomic(self.root / "train" / layout.TRAIN_JSON, self.train_map)
        layout.write_json_atomic(self.root / "test" / layout.TEST_JSON, self.test_map)

    def counts(self, n_volumes: int) -> dict[str, int]:
        return {
            "volumes": n_volumes,
            "train_images": len(self.train_map),
            "train_masks": sum(len(v) for v in self.train_map.values()),
            "test_images": len(set(self.test_map.values())),
            "test_masks": len(self.test_map),
        }


def prepare_dataset(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    out: str | os.PathLike,
    options: PrepareOptions | None = None,
) -> dict:
    """Write the dataset folder ``out`` (train/, test/, manifest.json) from (image, label)
    NIfTI pairs as ``options`` say (default: :class:`PrepareOptions`()); returns the manifest.

    The folder is built next to ``out`` and renamed into place at the end, so a failure leaves
    nothing behind.
    """
    from tqdm import tqdm

    from sam_unet.io import nifti_stem

    o = options if options is not None else PrepareOptions()
    out = Path(out)
    pairs = [(Path(i), Path(lab)) for i, lab in pairs]
    if not pairs:
        raise ValueError("prepare: no (image, label) pairs given")
    if out.exists() and any(out.iterdir()) and not o.overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty (use --overwrite)")
    modality = _safe(o.modality)
    dataset = _safe(o.dataset or out.name)
    names = [_safe(nifti_stem(p)) for p, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("prepare: two input volumes share a name: "
                         + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    split = _plan_split(names, pairs, o)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        writer = _DatasetWriter(tmp, modality, dataset, o)
        volumes = []
        bar = tqdm(total=len(pairs), desc="prepare", unit="vol", disable=o.quiet)
        for (img_path, lab_path), name in zip(pairs, names, strict=True):
            volumes.append(writer.volume(name, img_path, lab_path, split, bar))
            bar.update(1)
        bar.close()
        writer.write_maps()
        manifest = {
            "version": MANIFEST_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dataset": dataset,
            "modality": modality,
            "axis": AXIS_NAMES[o.axis % 3],
            "normalize": o.normalize,
            "window": list(o.window) if o.window is not None else None,
            "min_foreground_ratio": o.min_foreground_ratio,
            "components": o.components,
            "keep_empty": o.keep_empty,
            "label_threshold": o.label_threshold,
            "split": split.info,
            "counts": writer.counts(len(volumes)),
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

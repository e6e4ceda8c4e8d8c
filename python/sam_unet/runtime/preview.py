"""A PNG montage of a label map over its image: one colour per structure and a legend.

``write_preview`` draws ``rows x cols`` slices along one canonical axis (axial by default),
evenly spread over the middle 80% of the slices that hold a label (of the image's non-zero
extent when none does), with the voxel aspect of the affine, viewers' orientation (anterior /
superior up, patient right on the left of axial and coronal slices) and intensities between
the 1st and 99th percentile of the shown voxels (background left out). ``label_colors``
gives the colours (also used for the DICOM SEG's display colours), stable by label value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["label_colors", "write_preview"]

# Distinct, saturated colours first (readable over gray), then the rest of tab20.
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]


def label_colors(values: list[int] | set[int] | Mapping[int, object]) -> dict[int, tuple]:
    """{label value: (r, g, b) 0..255}: the palette in increasing label order."""
    ordered = sorted(int(v) for v in values if int(v) != 0)
    return {v: _PALETTE[i % len(_PALETTE)] for i, v in enumerate(ordered)}


def _pick_slices(image: np.ndarray, labels: np.ndarray, axis: int, count: int) -> np.ndarray:
    other = tuple(a for a in range(3) if a != axis)
    has = np.flatnonzero(labels.any(axis=other))
    if len(has) == 0:
        has = np.flatnonzero((image != 0).any(axis=other))
    if len(has) == 0:
        has = np.arange(image.shape[axis])
    lo, hi = int(has[0]), int(has[-1])
    if hi - lo + 1 <= count:
        return np.arange(lo, hi + 1)
    trim = 0.1 * (hi - lo)  # the ends of a structure hold little of it
    return np.unique(np.linspace(lo + trim, hi - trim, count).round().astype(int))


def _gray_range(values: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentile of the shown voxels, leaving out the background value (the
    minimum: air, or the zeros around a skull-stripped image) when it fills the image."""
    body = values[values > values.min()] if values.size else values
    if body.size < 0.05 * values.size:
        body = values
    if body.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(body, [1, 99]))
    return lo, hi if hi > lo else lo + 1.0


def _view(a2d: np.ndarray) -> np.ndarray:
    """A canonical RAS slice (first axis x, second y) -> display rows top-down, columns
    left-right: the second axis up (anterior / superior), the first to the right."""
    return np.rot90(a2d)


def write_preview(png_path: str | os.PathLike, image: np.ndarray, labels: np.ndarray,
                  label_names: Mapping[int, str], *, zooms: tuple[float, float, float] = (1, 1, 1),
                  axis: int = 2, rows: int = 3, cols: int = 4, title: str | None = None,
                  colors: Mapping[int, tuple] | None = None, alpha: float = 0.5) -> Path:
    """Write a montage PNG, atomically; returns its path.

    image, labels: canonical (RAS+) arrays of the same (X, Y, Z) shape; labels uint8.
    label_names: {label value: name} for the legend (unnamed values present: ``label <v>``).
    zooms: canonical voxel sizes (mm) for the aspect ratio; axis: the canonical axis sliced
    (0 sagittal, 1 coronal, 2 axial).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from sam_unet.atomic import atomic_path

    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be the same 3D "
                         "shape")
    axis = axis % 3
    names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
    present = {int(v) for v in np.unique(labels) if v != 0}
    names.update({v: f"label {v}" for v in present - set(names)})
    colors = dict(colors) if colors is not None else label_colors(names)
    lut = np.zeros((256, 4))
    for v, rgb in colors.items():
        lut[v] = [*(c / 255.0 for c in rgb), 1.0]
    cmap = ListedColormap(lut)

    finite = np.asarray(image, dtype=np.float32)
    ks = _pick_slices(finite, labels, axis, rows * cols)
    lo, hi = _gray_range(np.take(finite, ks, axis=axis))
    a, b = [z for i, z in enumerate(zooms) if i != axis]
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows + 0.8),
                             facecolor="black", squeeze=False)
    letters = "xyz"
    for ax, k in zip(axes.ravel(), list(ks) + [None] * (rows * cols - len(ks)), strict=True):
        ax.axis("off")
        if k is None:
            continue
        img2 = _view(np.take(finite, k, axis=axis))
        lab2 = _view(np.take(labels, k, axis=axis))
        ax.imshow(img2, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
                  aspect=b / a)
        shown = np.where(lab2 == 0, np.nan, lab2.astype(np.float64))
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=255, alpha=alpha, interpolation="nearest",
                  aspect=b / a)
        ax.set_title(f"{letters[axis]}={k}", color="white", fontsize=9)
    handles = [Patch(color=np.array(colors[v]) / 255.0, label=f"{v}: {names[v]}")
               for v in sorted(names) if v in colors]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4),
                   frameon=False, labelcolor="white", fontsize=9)
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    path = Path(png_path)
    try:
        with atomic_path(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=80, facecolor="black", format="png")
    finally:
        plt.close(fig)
    return path

"""Box prompts: the box of a mask's largest connected component, the published training
jitter, and the full-slice box for models that run without prompts.

Prompt kinds for training (``PROMPT_KINDS``): "box" (the published recipe: the jittered box of
the mask's largest component; the full-slice box for an empty mask), "full" (always the
full-slice box: a model that runs without prompts) and "both" (each mask gets one of the two,
see :func:`prompt_kinds_for`: the model answers the full-slice box and a tight box).

Box convention (see docs/architecture.md, "Frames"): (x0, y0, x1, y1) with x along columns
(W) and y along rows (H), inclusive pixel indices, so a mask covering one pixel (r, c) has the
box (c, r, c, r). The full-slice box of a resized slice of size (h', w') in the 256 frame is
(0, 0, w' - 1, h' - 1).
"""

from __future__ import annotations

import numpy as np

PROMPT_KINDS = ("box", "full", "both")
JITTER_STD = 0.1  # noise std as a fraction of min(box width, box height)
JITTER_MAX_PIXELS = 5.0  # cap on the shift of each coordinate (pixels)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 8-connected component (ties: the lowest label)."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 1:
        return labels == 1
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def mask_box(mask: np.ndarray, *, largest: bool = True) -> np.ndarray | None:
    """(x0, y0, x1, y1) float32 of the largest component (or of all foreground), None if empty."""
    m = largest_component(mask) if largest else (np.asarray(mask) > 0)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def full_box(resized_hw: tuple[int, int]) -> np.ndarray:
    """The whole-slice box in the 256 frame: (0, 0, w' - 1, h' - 1)."""
    h, w = int(resized_hw[0]), int(resized_hw[1])
    return np.array([0.0, 0.0, w - 1.0, h - 1.0], dtype=np.float32)


def jitter_box(
    box: np.ndarray,
    rng: np.random.Generator,
    bounds_hw: tuple[int, int],
    *,
    std: float = JITTER_STD,
    max_pixels: float = JITTER_MAX_PIXELS,
) -> np.ndarray:
    """The published training noise: each coordinate moves by N(0, std * min(w, h)) pixels,
    capped at ``max_pixels``; the box is then clipped to the slice and kept ordered."""
    box = np.asarray(box, dtype=np.float32).copy()
    w = float(box[2] - box[0])
    h = float(box[3] - box[1])
    sigma = std * max(min(w, h), 0.0)
    if sigma > 0:
        noise = np.clip(rng.normal(0.0, sigma, size=4), -max_pixels, max_pixels)
        box = box + noise.astype(np.float32)
    hh, ww = bounds_hw
    box[[0, 2]] = np.clip(box[[0, 2]], 0, ww - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, hh - 1)
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def scale_box(box: np.ndarray, original_hw, resized_hw) -> np.ndarray:
    """A box in slice pixels -> the 256 frame, scaled by (w'/W, h'/H) per axis."""
    from sam_unet import transforms

    return np.asarray(
        transforms.scale_boxes(np.asarray(box, np.float32)[None], original_hw, resized_hw)[0],
        dtype=np.float32,
    )


def prompt_kinds_for(kind: str, n_masks: int, rng: np.random.Generator) -> list[str]:
    """The prompt ("box" or "full") of each of a sample's ``n_masks`` masks.

    "box" and "full" give that kind to every mask and draw nothing from ``rng`` (so their
    random streams are unchanged). "both" draws the first mask's kind with probability 1/2 and
    alternates after it: a sample with two masks sees one of each, one mask per sample gives an
    even mix over an epoch.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt must be one of {PROMPT_KINDS}, got {kind!r}")
    if kind != "both":
        return [kind] * n_masks
    first = int(rng.integers(0, 2))
    return [("full", "box")[(first + j) % 2] for j in range(n_masks)]


def evaluation_kind(kind: str) -> str:
    """The prompt a model trained with ``kind`` is validated with: "both" -> "full" (the
    prompt-free use the demo reports); "box" and "full" as they are."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt must be one of {PROMPT_KINDS}, got {kind!r}")
    return "full" if kind == "both" else kind

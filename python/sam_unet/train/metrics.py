"""Dice and IoU of binary masks, with accumulators per group.

Convention: when prediction and ground truth are both empty, Dice = IoU = 1.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(|P & G|, |P|, |G|) of two same-shape binary arrays."""
    pred = np.asarray(pred) > 0
    gt = np.asarray(gt) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred)), int(np.count_nonzero(gt))


def dice_from_counts(inter: int, p: int, g: int) -> float:
    return 1.0 if p + g == 0 else 2.0 * inter / (p + g)


def iou_from_counts(inter: int, p: int, g: int) -> float:
    union = p + g - inter
    return 1.0 if union == 0 else inter / union


def dice(pred, gt) -> float:
    return dice_from_counts(*counts(pred, gt))


def iou(pred, gt) -> float:
    return iou_from_counts(*counts(pred, gt))


class MetricAccumulator:
    """Mean per-mask Dice/IoU per group key, plus pooled (3D) Dice per volume key."""

    def __init__(self) -> None:
        self.per_mask: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.pooled: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])

    def add(self, pred, gt, groups=(), volume_key: str | None = None) -> tuple[float, float]:
        inter, p, g = counts(pred, gt)
        d, j = dice_from_counts(inter, p, g), iou_from_counts(inter, p, g)
        for key in ("overall", *groups):
            self.per_mask[key].append((d, j))
        if volume_key is not None:
            acc = self.pooled[volume_key]
            acc[0] += inter
            acc[1] += p
            acc[2] += g
        return d, j

    def summary(self) -> dict:
        out = {}
        for key, vals in self.per_mask.items():
            arr = np.asarray(vals, dtype=np.float64)
            out[key] = {"dice": float(arr[:, 0].mean()), "iou": float(arr[:, 1].mean()),
                        "n": int(arr.shape[0])}
        return out

    def volumes(self) -> dict:
        return {k: {"dice_3d": dice_from_counts(*v), "iou_3d": iou_from_counts(*v),
                    "voxels_pred": v[1], "voxels_gt": v[2]} for k, v in self.pooled.items()}

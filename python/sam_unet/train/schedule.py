"""Learning-rate schedules of the trainer and their checkpointable state."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any


def cosine_lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """lr multiplier before optimizer step ``step + 1`` of ``total``: linear warm-up over
    ``warmup`` steps, then a cosine from 1 down to ``min_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup - 1)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer: Any, *, schedule: str, steps_per_epoch: int, epochs: int,
                   milestones: tuple[int, ...], gamma: float, warmup_epochs: float,
                   min_lr_ratio: float) -> Any:
    """"step": MultiStepLR stepped once per epoch (the published recipe); "cosine": LambdaLR
    with :func:`cosine_lr_factor`, stepped after every optimizer step."""
    import torch

    if schedule == "cosine":
        total = steps_per_epoch * epochs
        warm = round(warmup_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: cosine_lr_factor(i, total, warm, min_lr_ratio))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones),
                                                gamma=gamma)


def scheduler_state(scheduler: Any) -> dict:
    """``scheduler.state_dict()`` in a form ``torch.load(weights_only=True)`` accepts (the
    MultiStepLR milestone Counter becomes a plain dict)."""
    sd = dict(scheduler.state_dict())
    if "milestones" in sd:
        sd["milestones"] = {int(k): int(v) for k, v in dict(sd["milestones"]).items()}
    return sd


def load_scheduler_state(scheduler: Any, sd: dict) -> None:
    """The inverse of :func:`scheduler_state`."""
    sd = dict(sd)
    if "milestones" in sd:
        sd["milestones"] = Counter({int(k): int(v) for k, v in sd["milestones"].items()})
    scheduler.load_state_dict(sd)

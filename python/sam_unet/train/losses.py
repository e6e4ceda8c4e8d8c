"""The published loss: focal (alpha 0.25, gamma 2) + 20 x Dice on logits upsampled to 256.

The 64x64 logits are upsampled bilinearly (align_corners=False) to 256x256 and compared with the
masks resized and zero-padded to 256 (see sam_unet.data.dataset). The padded region (rows >= h',
columns >= w') is IGNORED: it is left out of both the focal mean and the Dice sums, since the
engine crops it away before use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def valid_region(resized_hw: torch.Tensor, size: int = 256) -> torch.Tensor:
    """(N, 2) (h', w') -> (N, 1, size, size) float {0, 1}: 1 inside the resized image."""
    ar = torch.arange(size, device=resized_hw.device)
    rows = ar[None, :] < resized_hw[:, 0:1]
    cols = ar[None, :] < resized_hw[:, 1:2]
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1).float()


def upsample_logits(logits: torch.Tensor, size: int = 256) -> torch.Tensor:
    return F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)


def focal_loss(logits, target, valid, *, alpha: float = 0.25, gamma: float = 2.0):
    """Sigmoid focal loss, mean over the valid pixels of each mask, then over masks."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    loss = a_t * ce * (1 - p_t) ** gamma * valid
    per_mask = loss.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1.0)
    return per_mask.mean()


def dice_loss(logits, target, valid, *, smooth: float = 1.0):
    """1 - soft Dice per mask over the valid pixels (smooth 1: empty masks push to 0)."""
    p = torch.sigmoid(logits) * valid
    t = target * valid
    inter = (p * t).flatten(1).sum(1)
    denom = p.flatten(1).sum(1) + t.flatten(1).sum(1)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


class SegLoss(torch.nn.Module):
    """focal_weight x focal + dice_weight x Dice (published 1 and 20)."""

    def __init__(self, focal_weight: float = 1.0, dice_weight: float = 20.0,
                 alpha: float = 0.25, gamma: float = 2.0, size: int = 256) -> None:
        super().__init__()
        self.focal_weight, self.dice_weight = focal_weight, dice_weight
        self.alpha, self.gamma, self.size = alpha, gamma, size

    def forward(self, logits, masks, resized_hw):
        """logits (N, 1, 64, 64); masks (N, 256, 256) {0,1}; resized_hw (N, 2) -> (loss, parts)."""
        up = upsample_logits(logits, self.size)
        target = masks.float().reshape(up.shape)
        valid = valid_region(resized_hw, self.size)
        focal = focal_loss(up, target, valid, alpha=self.alpha, gamma=self.gamma)
        dice = dice_loss(up, target, valid)
        loss = self.focal_weight * focal + self.dice_weight * dice
        return loss, {"focal": focal.detach(), "dice_loss": dice.detach()}

"""Channel LayerNorm for NCHW feature maps (SAM's ``LayerNorm2d``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor.

    Written as permute + ``F.layer_norm`` + permute so that ONNX (opset >= 17) exports it as a
    single ``LayerNormalization`` node. Numerically the same function as SAM's LayerNorm2d
    (biased variance, ``eps`` inside the square root).

    Input (B, C, H, W) float; output (B, C, H, W), same dtype.
    Parameters: ``weight`` (C,) initialised to 1, ``bias`` (C,) initialised to 0.
    """

    def __init__(self, num_channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.num_channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"

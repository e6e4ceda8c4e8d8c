"""Input adapter of SAM-UNet: maps a CNN feature map onto the ViT token grid."""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d


class Reshaper(nn.Module):
    """(B, c_in, size_in, size_in) -> (B, c_out, size_out, size_out), NCHW.

    While the map is larger than ``size_out``: [Conv3x3 stride 2 (c -> 2c), LayerNorm2d, GELU];
    while smaller: [ConvTranspose 2x2 stride 2 (c -> c/2), LayerNorm2d, GELU]; then a 1x1 conv to
    ``c_out``. Convolutions get Kaiming-normal (fan_out) weights and zero biases.
    Parameter names: ``reshaper.N`` (one Sequential).
    """

    def __init__(self, *, size_in: int, c_in: int, size_out: int = 16, c_out: int = 768) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, c = size_in, c_in
        while size > size_out:
            layers += [
                nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1),
                LayerNorm2d(2 * c),
                nn.GELU(),
            ]
            size, c = (size + 1) // 2, 2 * c
        while size < size_out:
            layers += [
                nn.ConvTranspose2d(c, c // 2, kernel_size=2, stride=2),
                LayerNorm2d(c // 2),
                nn.GELU(),
            ]
            size, c = size * 2, c // 2
        if size != size_out:
            raise ValueError(f"cannot reshape a {size_in} map to {size_out}")
        layers.append(nn.Conv2d(c, c_out, kernel_size=1))
        self.reshaper = nn.Sequential(*layers)
        for m in self.reshaper.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reshaper(x)

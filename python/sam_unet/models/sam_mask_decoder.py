"""The parts of SAM's mask decoder that SAM-UNet keeps: transformer and output upscaling."""

from __future__ import annotations

import torch
from torch import nn

from .layer_norm_2d import LayerNorm2d
from .two_way_transformer import TwoWayTransformer


class SamMaskDecoderCore(nn.Module):
    """Holds ``transformer`` (two-way) and ``output_upscaling`` (state-dict prefix
    ``mask_decoder.sam_mask_decoder``). SAM's mask/IoU tokens and heads are not part of SAM-UNet.

    ``output_upscaling``: ConvT 2x2 s2 (C -> C/4), LayerNorm2d, GELU, ConvT 2x2 s2 (C/4 -> C/8),
    GELU: (N, C, 16, 16) -> (N, C/8, 64, 64).
    """

    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer(
            depth=depth, embedding_dim=transformer_dim, num_heads=num_heads, mlp_dim=mlp_dim
        )
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )

    def forward(
        self, src: torch.Tensor, pos_src: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(src, pos_src (N, C, h, w), tokens (N, T, C)) -> (hs (N, T, C), up (N, C/8, 4h, 4w))."""
        n, c, h, w = src.shape
        hs, keys = self.transformer(src, pos_src, tokens)
        src = keys.transpose(1, 2).reshape(n, c, h, w)
        return hs, self.output_upscaling(src)

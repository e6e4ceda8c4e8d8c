"""SAM-UNet's mask decoder: SAM's two-way transformer with one learned ``med_token``."""

from __future__ import annotations

import torch
from torch import nn

from .layer_norm_2d import LayerNorm2d
from .mlp_head import MLP
from .sam_mask_decoder import SamMaskDecoderCore


class MedMaskDecoder(nn.Module):
    """tokens = [med_token, box corners]; src = image embedding + dense prompt embedding;
    feature = embedding_maskfeature(output_upscaling(src')) + multi-scale feature;
    mask = hf_mlp(token 0) . feature -> one logit map per box.

    Batched over N boxes (no loop).
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
        c = transformer_dim // 8
        self.feature_channels = c
        self.sam_mask_decoder = SamMaskDecoderCore(
            transformer_dim=transformer_dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim
        )
        self.med_token = nn.Embedding(1, transformer_dim)
        self.hf_mlp = MLP(
            input_dim=transformer_dim, hidden_dim=transformer_dim, output_dim=c, num_layers=3
        )
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(c, 2 * c, kernel_size=3, padding=1),
            LayerNorm2d(2 * c),
            nn.GELU(),
            nn.Conv2d(2 * c, c, kernel_size=3, padding=1),
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multiscale: torch.Tensor,
    ) -> torch.Tensor:
        """
        image_embeddings (N, C, h, w): the embedding of each box's image (already gathered);
        image_pe (1, C, h, w); sparse (N, 2, C); dense (N, C, h, w);
        multiscale (N, C/8, 4h, 4w). Returns logits (N, 1, 4h, 4w).
        """
        n = sparse.shape[0]
        tokens = torch.cat([self.med_token.weight.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        pos_src = image_pe.expand(n, -1, -1, -1)
        hs, upscaled = self.sam_mask_decoder(src, pos_src, tokens)
        feature = self.embedding_maskfeature(upscaled) + multiscale
        hyper = self.hf_mlp(hs[:, 0, :])  # (N, C/8)
        b, c, h, w = feature.shape
        masks = hyper.unsqueeze(1) @ feature.reshape(b, c, h * w)
        return masks.reshape(b, 1, h, w)

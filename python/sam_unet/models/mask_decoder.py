"""The mask decoder: SAM's kept core (two-way transformer, output upscaling) under SAM-UNet's
``MedMaskDecoder`` with its ``med_token``, mask-feature convs and ``MLPHead`` hypernetwork."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .transformer import TwoWayTransformer


class MLPHead(nn.Module):
    """SAM's ``MLP``: ``num_layers`` Linear layers (keys ``layers.N``), ReLU between, no output
    activation. SAM-UNet's hypernetwork head ``hf_mlp`` (token 0 -> mask-feature weights).

    (..., input_dim) -> (..., output_dim). The two-layer MLP inside blocks is
    :class:`~sam_unet.models.common.MLPBlock`.
    """

    def __init__(
        self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x


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
        self.hf_mlp = MLPHead(
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

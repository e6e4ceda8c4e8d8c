"""The prompt encoder: SAM's (``SamPromptEncoder``, box prompts) and SAM-UNet's holder of it.

``PositionEmbeddingRandom`` encodes coordinates with random Fourier features; ``PromptEncoder``'s
only child ``sam_prompt_encoder`` gives the published prefix ``prompt_encoder.sam_prompt_encoder``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (buffer
    ``positional_encoding_gaussian_matrix`` (2, num_pos_feats), saved in the state dict).

    Coordinates in [0, 1] map to [-1, 1], are multiplied by the matrix and by 2 pi, and encoded as
    ``cat(sin, cos)``: (..., 2) -> (..., 2 * num_pos_feats).
    """

    def __init__(self, *, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """Computed in float32 (sin/cos of arguments of tens of radians need it), returned in
        the dtype of the frequency matrix (the model's dtype)."""
        matrix = self.positional_encoding_gaussian_matrix
        coords = 2 * coords.float() - 1
        coords = coords @ matrix.float()
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).to(matrix.dtype)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an (h, w) grid of cell centres: (2 * num_pos_feats, h, w)."""
        h, w = size
        m = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=m.device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Pixel coordinates (..., 2) as (x, y) in an image of ``image_size`` (H, W)."""
        x = coords_input[..., 0] / image_size[1]
        y = coords_input[..., 1] / image_size[0]
        return self._pe_encoding(torch.stack([x, y], dim=-1))


class SamPromptEncoder(nn.Module):
    """Segment Anything's ``PromptEncoder`` (box path; the point/mask modules are kept so the
    state dict matches the published layout: ``point_embeddings.0..3``, ``not_a_point_embed``,
    ``mask_downscaling``, ``no_mask_embed``).

    forward(boxes (N, 4) float, (x0, y0, x1, y1) in the ``input_image_size`` frame) ->
    (sparse (N, 2, embed_dim), dense (N, embed_dim, h, w)) with (h, w) = ``image_embedding_size``.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (16, 16),
        input_image_size: tuple[int, int] = (256, 256),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = (int(image_embedding_size[0]), int(image_embedding_size[1]))
        self.input_image_size = (int(input_image_size[0]), int(input_image_size[1]))
        self.pe_layer = PositionEmbeddingRandom(num_pos_feats=embed_dim // 2)
        self.num_point_embeddings = 4  # pos/neg point + 2 box corners
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Dense positional encoding of the image embedding grid: (1, embed_dim, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) boxes -> corner embeddings (N, 2, embed_dim) (corners shifted by +0.5)."""
        boxes = boxes + 0.5
        coords = boxes.reshape(-1, 2, 2)
        corner = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner_tl = corner[:, 0, :] + self.point_embeddings[2].weight
        corner_br = corner[:, 1, :] + self.point_embeddings[3].weight
        return torch.stack([corner_tl, corner_br], dim=1)

    def forward(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.embed_boxes(boxes)
        h, w = self.image_embedding_size
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(boxes.shape[0], -1, h, w)
        return sparse, dense


class PromptEncoder(nn.Module):
    """Wrapper (state-dict prefix ``prompt_encoder.sam_prompt_encoder``); boxes only.

    forward(boxes (N, 4) float in the 256 frame) -> (sparse (N, 2, C), dense (N, C, 16, 16)).
    """

    def __init__(self, *, sam_prompt_encoder: SamPromptEncoder) -> None:
        super().__init__()
        self.sam_prompt_encoder = sam_prompt_encoder

    def get_dense_pe(self) -> torch.Tensor:
        return self.sam_prompt_encoder.get_dense_pe()

    def forward(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sam_prompt_encoder(boxes)

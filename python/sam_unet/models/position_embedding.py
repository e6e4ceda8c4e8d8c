"""Random Fourier-feature position encoding of SAM's prompt encoder."""

from __future__ import annotations

import math

import torch
from torch import nn


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

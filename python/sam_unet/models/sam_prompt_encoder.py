"""SAM's prompt encoder, used by SAM-UNet with box prompts only."""

from __future__ import annotations

import torch
from torch import nn

from .layer_norm_2d import LayerNorm2d
from .position_embedding import PositionEmbeddingRandom


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

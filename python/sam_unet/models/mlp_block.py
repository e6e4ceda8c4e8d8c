"""Two-layer MLP block (``lin1``, activation, ``lin2``) as in Segment Anything."""

from __future__ import annotations

import torch
from torch import nn


class MLPBlock(nn.Module):
    """``lin2(act(lin1(x)))``: (..., dim) -> (..., dim) with a hidden width ``mlp_dim``.

    The ViT blocks use GELU, the two-way transformer ReLU.
    """

    def __init__(self, *, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))

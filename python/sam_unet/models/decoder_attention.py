"""Attention layer of SAM's two-way transformer (optional projection downsampling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import merge_heads


class DecoderAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections to ``dim // downsample_rate``.

    forward(q (B, Nq, dim), k (B, Nk, dim), v (B, Nk, dim)) -> (B, Nq, dim). Scale
    ``head_dim ** -0.5``. Fast path: ``F.scaled_dot_product_attention``; plain path: explicit
    softmax as SAM writes it.
    """

    def __init__(self, *, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.fast = True
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        head_dim = q.shape[-1]
        scale = head_dim**-0.5
        if self.fast:
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            attn = (q @ k.transpose(-2, -1)) * scale
            out = attn.softmax(dim=-1) @ v
        out = merge_heads(out)
        return self.out_proj(out)

"""Multi-head self-attention with decomposed relative positions (SAM ViT attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, hd) -> (B, N, heads * hd).

    Under torch.export the transposed attention output is copied explicitly: SDPA's fake strides
    can make ``contiguous()`` a no-op that later decomposes into an invalid ``view``.
    """
    b, n, t, c = x.shape
    x = x.transpose(1, 2)
    if torch.compiler.is_compiling():
        x = x.clone(memory_format=torch.contiguous_format)
    return x.reshape(b, t, n * c)


def biased_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q @ k^T * scale + bias) @ v for (B, heads, N, hd) q and (B, heads, M, hd) k, v.

    SDPA, except when training on the CPU: a bias that needs a gradient sends SDPA to its math
    fallback, whose masked-row guard (an ``all`` and a ``where`` per call) costs ~3% of a tiny
    training step; the explicit form is the same arithmetic without it.
    """
    if q.device.type == "cpu" and torch.is_grad_enabled() and bias.requires_grad \
            and not torch.compiler.is_compiling():
        return torch.softmax(torch.matmul(q * scale, k.transpose(-2, -1)) + bias, dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def relative_index(size: int) -> torch.Tensor:
    """Index into a (2 * size - 1, C) relative-position table: (size, size) int64.

    ``index[i, j] = i - j + size - 1`` (query position i, key position j), as in SAM's
    ``get_rel_pos`` when query and key sizes are equal.
    """
    coords = torch.arange(size)
    return coords[:, None] - coords[None, :] + (size - 1)


class RelPosAttention(nn.Module):
    """SAM's ViT attention: qkv projection, decomposed relative-position bias, output projection.

    The module works on (B, H, W, C) token grids. ``input_size`` is the grid the relative-position
    tables are sized for ((window, window) in windowed blocks, the full token grid in global
    blocks); tables have shape (2 * size - 1, head_dim).

    Two numerically equivalent attention kernels are available:

    - fast (default): ``F.scaled_dot_product_attention`` with the relative-position bias as an
      additive float mask (scale ``head_dim ** -0.5``), bias built with matmuls;
    - plain: ``softmax(q * scale @ k^T + rel_pos) @ v`` exactly as SAM writes it (einsum bias).

    The projections are exposed (:meth:`attend_qkv`) so that the windowed block can compute qkv on
    the real tokens only and pad q/k/v with the qkv bias rows.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        input_size: tuple[int, int],
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.fast = True
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * self.input_size[0] - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * self.input_size[1] - 1, self.head_dim))
        # Gather indices live on the module's device: building them per call would copy
        # host -> device inside the forward, which CUDA graph capture forbids.
        self.register_buffer("index_h", relative_index(self.input_size[0]), persistent=False)
        self.register_buffer("index_w", relative_index(self.input_size[1]), persistent=False)

    def _tables(
        self, h: int, w: int, qh: int | None = None, qw: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative-position tables for the keys of an (h, w) grid and the queries of its
        top-left (qh, qw) corner (default: all of it): (qh, h, hd) and (qw, w, hd)."""
        if 2 * h - 1 != self.rel_pos_h.shape[0] or 2 * w - 1 != self.rel_pos_w.shape[0]:
            raise ValueError(f"attention sized for a {self.input_size} grid got a ({h}, {w}) grid")
        qh = h if qh is None else qh
        qw = w if qw is None else qw
        rh = self.rel_pos_h[self.index_h[:qh]]
        rw = self.rel_pos_w[self.index_w[:qw]]
        return rh, rw

    def rel_pos_bias(
        self, q: torch.Tensor, h: int, w: int, q_hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Decomposed relative-position bias.

        q: (B, heads, qh*qw, hd) unscaled queries of the top-left (qh, qw) = ``q_hw`` corner of
        an (h, w) key grid (default: the whole grid). Returns (B, heads, qh*qw, h*w), q's dtype.
        """
        b, n, _, c = q.shape
        qh, qw = (h, w) if q_hw is None else q_hw
        rh, rw = self._tables(h, w, qh, qw)
        r_q = q.reshape(b, n, qh, qw, c)
        if self.fast:
            # (b,n,qh,qw,c) @ (qh,c,k) -> (b,n,qh,qw,k); matmul instead of einsum for export.
            rel_h = torch.matmul(r_q, rh.transpose(1, 2))
            rel_w = torch.matmul(r_q.transpose(2, 3), rw.transpose(1, 2)).transpose(2, 3)
        else:
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
        bias = rel_h[:, :, :, :, :, None] + rel_w[:, :, :, :, None, :]
        return bias.reshape(b, n, qh * qw, h * w)

    def attend_corner(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Attention of the top-left corner's queries to every key of a window.

        q: (B, qh, qw, dim) queries of the corner; kv: (B, h, w, 2 * dim) keys and values of the
        whole (h, w) window, padded tokens included. Returns (B, qh, qw, dim) before ``proj``:
        the corner rows of :meth:`attend_qkv` on the whole window.
        """
        b, qh, qw, _ = q.shape
        h, w = kv.shape[1], kv.shape[2]
        q = q.reshape(b, qh * qw, self.num_heads, self.head_dim).transpose(1, 2)
        kv = kv.reshape(b, h * w, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        bias = self.rel_pos_bias(q, h, w, (qh, qw))
        out = biased_attention(q, k, v, bias, self.scale)
        return merge_heads(out).reshape(b, qh, qw, self.dim)

    def attend_qkv(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention from precomputed qkv.

        qkv: (B, h, w, 3 * dim). Returns the attention output before ``proj``: (B, h, w, dim).
        """
        b, h, w, _ = qkv.shape
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        bias = self.rel_pos_bias(q, h, w)
        if self.fast:
            out = biased_attention(q, k, v, bias, self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = attn.softmax(dim=-1)
            out = attn @ v
        return merge_heads(out).reshape(b, h, w, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, dim) -> (B, H, W, dim)."""
        return self.proj(self.attend_qkv(self.qkv(x)))

"""SAM ViT transformer block with windowed or global attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import RelPosAttention
from .mlp_block import MLPBlock


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (B, H, W, C) at the bottom/right to multiples of ``window_size`` and cut windows.

    Returns (B * nWin, ws, ws, C) and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    return split_windows(x, window_size), (hp, wp)


def split_windows(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, Hp, Wp, C) with Hp, Wp multiples of ws -> (B * nWin, ws, ws, C)."""
    b, hp, wp, c = x.shape
    ws = window_size
    x = x.reshape(b, hp // ws, ws, wp // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nWin, ws, ws, C) -> (B, H, W, C), padding cut."""
    hp, wp = pad_hw
    h, w = hw
    ws = window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // ws, wp // ws, ws, ws, c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


class ViTBlock(nn.Module):
    """Pre-norm transformer block of SAM's ViT on a (B, H, W, C) token grid.

    ``window_size > 0``: windowed attention; the grid is zero-padded to a multiple of the window
    *after* ``norm1`` (SAM semantics). In the fast path (default) the padding is not materialised
    before the qkv projection: a zero token's qkv is exactly the qkv bias, so qkv is computed on
    the real tokens and padded with the bias row; ``proj`` runs on the real tokens only. The plain
    path pads explicitly as SAM does. Queries of padded tokens, whose outputs SAM discards, are
    not computed in the fast path either (:meth:`_attend_real_queries`).
    ``window_size == 0``: global attention.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int],
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.fast = True
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = RelPosAttention(
            dim=dim, num_heads=num_heads, input_size=attn_size, qkv_bias=qkv_bias
        )
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)

    def set_fast(self, fast: bool) -> None:
        self.fast = bool(fast)
        self.attn.fast = bool(fast)

    def _windowed_fast(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        ws = self.window_size
        qkv = self.attn.qkv(x)  # (B, H, W, 3C) on the real tokens only
        pad_h = (ws - h % ws) % ws
        pad_w = (ws - w % ws) % ws
        if not (pad_h or pad_w):
            out = self.attn.attend_qkv(split_windows(qkv, ws))
            return self.attn.proj(window_unpartition(out, ws, (h, w), (h, w)))
        c3 = qkv.shape[-1]
        bias = self.attn.qkv.bias
        fill = bias if bias is not None else qkv.new_zeros(c3)
        fill = fill.to(qkv.dtype).reshape(1, 1, 1, c3)
        if pad_w:
            qkv = torch.cat([qkv, fill.expand(b, h, pad_w, c3)], dim=2)
        if pad_h:
            qkv = torch.cat([qkv, fill.expand(b, pad_h, w + pad_w, c3)], dim=1)
        return self.attn.proj(self._attend_real_queries(qkv, h, w))

    def _attend_real_queries(self, qkv: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Windowed attention for the real tokens of a padded grid.

        qkv: (B, Hp, Wp, 3C), padded with the qkv bias. Queries in the padding are never
        computed: windows are grouped by the size of their real corner (full, or the h % ws
        rows / w % ws columns of the last window row / column) and each group attends with
        only its real queries against all ws*ws keys. Returns (B, h, w, C).
        """
        ws = self.window_size
        c = qkv.shape[-1] // 3

        def groups(n: int) -> list[tuple[int, int, int]]:  # (first window, windows, real size)
            full, rest = divmod(int(n), ws)  # the grid is static (a traced size under export)
            return ([(0, full, ws)] if full else []) + ([(full, 1, rest)] if rest else [])

        rows = []
        for a, na, qh in groups(h):
            cols = []
            for b0, nb, qw in groups(w):
                win = split_windows(qkv[:, a * ws : (a + na) * ws, b0 * ws : (b0 + nb) * ws], ws)
                o = self.attn.attend_corner(win[:, :qh, :qw, :c], win[..., c:])
                o = o.reshape(-1, na, nb, qh, qw, c).permute(0, 1, 3, 2, 4, 5)
                cols.append(o.reshape(-1, na * qh, nb * qw, c))
            rows.append(cols[0] if len(cols) == 1 else torch.cat(cols, dim=2))
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, dim) -> (B, H, W, dim)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            if self.fast:
                x = self._windowed_fast(x)
            else:
                h, w = x.shape[1], x.shape[2]
                x, pad_hw = window_partition(x, self.window_size)
                x = self.attn(x)
                x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

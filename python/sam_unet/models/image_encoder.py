"""The image encoder: SAM's ViT (``SamImageEncoderViT``) and SAM-UNet's holder of it.

Patch embedding, attention with decomposed relative positions, the windowed/global ViT block, the
ViT with its neck, and ``ImageEncoder``, whose only child ``sam_img_encoder`` gives the published
state-dict prefix ``image_encoder.sam_img_encoder``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock, merge_heads


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, dim) (channels last)."""

    def __init__(self, *, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


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


class SamImageEncoderViT(nn.Module):
    """SAM ViT: patch embed + absolute position embedding, ``depth`` blocks, conv neck.

    At ``img_size`` 256 and patch 16 the token grid is 16 x 16. Blocks listed in
    ``global_attn_indexes`` attend globally, the others in ``window_size`` windows.
    Attributes and parameter names follow Segment Anything (``pos_embed`` (1, 16, 16, dim),
    ``patch_embed.proj``, ``blocks.N``, ``neck.0..3``).

    :meth:`forward` runs SAM's plain encoder (no SAM-UNet injection): (B, 3, 256, 256) float ->
    (B, out_chans, 16, 16). SAM-UNet drives :meth:`embed`, the blocks and :meth:`run_neck`
    itself.
    """

    def __init__(
        self,
        *,
        img_size: int = 256,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.grid_size = grid
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
                eps=eps,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans, eps=1e-6),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans, eps=1e-6),
        )

    def set_fast(self, fast: bool) -> None:
        for blk in self.blocks:
            blk.set_fast(fast)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> tokens (B, H/16, W/16, dim) with the position embedding added."""
        return self.patch_embed(images) + self.pos_embed

    def run_neck(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, h, w, dim) -> image embedding (B, out_chans, h, w)."""
        return self.neck(tokens.permute(0, 3, 1, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x)
        return self.run_neck(x)


class ImageEncoder(nn.Module):
    """Wrapper whose only child is the SAM ViT (prefix ``image_encoder.sam_img_encoder``).

    The U-Net injection and bridges live in :class:`~sam_unet.models.sam_unet.SamUNet`, which
    steps through ``sam_img_encoder``'s blocks; :meth:`forward` is SAM's plain encoder.
    """

    def __init__(self, *, sam_img_encoder: SamImageEncoderViT) -> None:
        super().__init__()
        self.sam_img_encoder = sam_img_encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) -> (B, out_chans, 16, 16) without the CNN injection."""
        return self.sam_img_encoder(images)

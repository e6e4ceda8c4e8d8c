"""SAM's ViT image encoder (``ImageEncoderViT``) at the SAM-UNet input size."""

from __future__ import annotations

import torch
from torch import nn

from .layer_norm_2d import LayerNorm2d
from .patch_embed import PatchEmbed
from .vit_block import ViTBlock


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

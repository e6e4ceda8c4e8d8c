"""SAM-UNet: SAM ViT-B image encoder with ResNet feature injection and U-Net bridges."""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d
from .config import SamUNetConfig
from .image_encoder import ImageEncoder, SamImageEncoderViT
from .mask_decoder import MedMaskDecoder
from .prompt_encoder import PromptEncoder, SamPromptEncoder
from .reshaper import Reshaper
from .resnet import ResNetBranch


def _upsample4(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """[ConvT 2x2 s2 (c_in -> c_mid), LayerNorm2d, GELU, ConvT 2x2 s2 (c_mid -> c_out)]."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_mid, kernel_size=2, stride=2),
        LayerNorm2d(c_mid),
        nn.GELU(),
        nn.ConvTranspose2d(c_mid, c_out, kernel_size=2, stride=2),
    )


class SamUNet(nn.Module):
    """SAM-UNet (arXiv 2408.09886), box-prompted, one 64x64 logit map per box.

    forward(images (B, 3, 256, 256) float (normalised, padded), boxes (B, 4) float
    (x0, y0, x1, y1) in the 256 frame) -> logits (B, 1, 64, 64), one box per image.

    ``encode`` / ``decode`` split the image and prompt halves so that several boxes can share one
    image's features. Attributes: ``variant`` (registry name), ``config``
    (:class:`SamUNetConfig`). The state dict is the published layout.
    """

    def __init__(
        self, *, config: SamUNetConfig, variant: str = "custom", fast: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.variant = variant
        cfg = config
        grid = cfg.grid_size
        self.image_encoder = ImageEncoder(
            sam_img_encoder=SamImageEncoderViT(
                img_size=cfg.image_size,
                patch_size=cfg.patch_size,
                embed_dim=cfg.vit_dim,
                depth=cfg.vit_depth,
                num_heads=cfg.vit_heads,
                mlp_ratio=cfg.vit_mlp_ratio,
                out_chans=cfg.prompt_dim,
                window_size=cfg.window_size,
                global_attn_indexes=cfg.global_attn_indexes,
            )
        )
        self.prompt_encoder = PromptEncoder(
            sam_prompt_encoder=SamPromptEncoder(
                embed_dim=cfg.prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(cfg.image_size, cfg.image_size),
                mask_in_chans=cfg.mask_in_chans,
            )
        )
        self.mask_decoder = MedMaskDecoder(
            transformer_dim=cfg.prompt_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_heads,
            mlp_dim=cfg.decoder_mlp_dim,
        )
        self.resnet = ResNetBranch(
            block=cfg.resnet_block,
            layers=cfg.resnet_layers,
            widths=cfg.resnet_widths,
            stem_width=cfg.resnet_stem,
        )
        self.adapters_in = nn.ModuleList(
            Reshaper(
                size_in=cfg.image_size // (4 * 2**i),
                c_in=self.resnet.out_channels[i],
                size_out=grid,
                c_out=cfg.vit_dim,
            )
            for i in range(4)
        )
        c = cfg.feature_channels
        self.adapters_bridge = nn.ModuleList(
            _upsample4(cfg.vit_dim, cfg.prompt_dim, c) for _ in range(3)
        )
        self.embedding_encoder = _upsample4(cfg.prompt_dim, cfg.prompt_dim // 4, c)
        self._encoder_frozen = False
        self.set_fast(fast)

    # -- configuration -------------------------------------------------------------------------
    @property
    def fast(self) -> bool:
        return self._fast

    def set_fast(self, fast: bool = True) -> SamUNet:
        """Select the fast attention path (default) or the plain padded reference path."""
        self._fast = bool(fast)
        self.image_encoder.sam_img_encoder.set_fast(fast)
        for m in self.mask_decoder.modules():
            if hasattr(m, "fast") and m is not self:
                m.fast = bool(fast)
        return self

    def freeze_encoder(self, frozen: bool = True) -> SamUNet:
        """Freeze (or unfreeze) the SAM image encoder: no gradients, kept in eval mode."""
        self._encoder_frozen = bool(frozen)
        for p in self.image_encoder.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.image_encoder.eval()
        else:
            self.image_encoder.train(self.training)
        return self

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def train(self, mode: bool = True) -> SamUNet:
        super().train(mode)
        if self._encoder_frozen:
            self.image_encoder.eval()
        return self

    # -- compute -------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, 256, 256) -> (image_embedding (B, C, 16, 16),
        multiscale (B, C/8, 64, 64)); C = ``config.prompt_dim``."""
        enc = self.image_encoder.sam_img_encoder
        feats = self.resnet(images)
        x = enc.embed(images)
        bridges: list[torch.Tensor] = []
        for i in range(4):
            x = enc.blocks[3 * i](x)
            x = enc.blocks[3 * i + 1](x)
            x = x + self.adapters_in[i](feats[i]).permute(0, 2, 3, 1)
            x = enc.blocks[3 * i + 2](x)
            if i < 3:
                bridges.append(self.adapters_bridge[2 - i](x.permute(0, 3, 1, 2)))
        image_embedding = enc.run_neck(x)
        multiscale = self.embedding_encoder(image_embedding)
        for b in bridges:
            multiscale = multiscale + b
        return image_embedding, multiscale

    def decode(
        self,
        image_embedding: torch.Tensor,
        multiscale: torch.Tensor,
        boxes: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode N boxes against encoded images.

        image_embedding (B, C, 16, 16), multiscale (B, C/8, 64, 64), boxes (N, 4) float in the
        256 frame, image_index (N,) int64 naming each box's image (None: N == B, box i on
        image i). Returns logits (N, 1, 64, 64).
        """
        if image_index is not None:
            image_index = image_index.to(device=image_embedding.device, dtype=torch.long)
            image_embedding = image_embedding.index_select(0, image_index)
            multiscale = multiscale.index_select(0, image_index)
        elif not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            if boxes.shape[0] != image_embedding.shape[0]:
                raise ValueError(
                    f"{boxes.shape[0]} boxes for {image_embedding.shape[0]} images: "
                    "pass image_index to say which image each box belongs to"
                )
        boxes = boxes.float()  # box coordinates are encoded in float32
        sparse, dense = self.prompt_encoder(boxes)
        return self.mask_decoder(
            image_embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, multiscale
        )

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        image_embedding, multiscale = self.encode(images)
        return self.decode(image_embedding, multiscale, boxes)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, fast={self._fast}"

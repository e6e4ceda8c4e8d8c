"""SAM-UNet's image-encoder wrapper (holds SAM's ViT as ``sam_img_encoder``)."""

from __future__ import annotations

import torch
from torch import nn

from .sam_image_encoder import SamImageEncoderViT


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

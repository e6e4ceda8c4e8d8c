"""SAM-UNet's prompt-encoder wrapper (holds SAM's as ``sam_prompt_encoder``)."""

from __future__ import annotations

import torch
from torch import nn

from .sam_prompt_encoder import SamPromptEncoder


class PromptEncoder(nn.Module):
    """Wrapper (state-dict prefix ``prompt_encoder.sam_prompt_encoder``); boxes only.

    forward(boxes (N, 4) float in the 256 frame) -> (sparse (N, 2, C), dense (N, C, 16, 16)).
    """

    def __init__(self, *, sam_prompt_encoder: SamPromptEncoder) -> None:
        super().__init__()
        self.sam_prompt_encoder = sam_prompt_encoder

    def get_dense_pe(self) -> torch.Tensor:
        return self.sam_prompt_encoder.get_dense_pe()

    def forward(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sam_prompt_encoder(boxes)

"""Configuration of a SAM-UNet variant (what a checkpoint needs to rebuild the model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamUNetConfig:
    """Hyper-parameters of a SAM-UNet.

    The structure is fixed (as published): a 12-block ViT in 4 stages of
    [window, window, global] blocks, one CNN feature map injected per stage, U-Net bridges after
    the first three global blocks. ``prompt_dim`` is the neck output / prompt / two-way transformer
    width; ``prompt_dim // 8`` is the mask-feature width (32 for the published variants).
    """

    image_size: int = 256
    patch_size: int = 16
    vit_dim: int = 768
    vit_heads: int = 12
    vit_mlp_ratio: float = 4.0
    window_size: int = 14
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    resnet_block: str = "basic"
    resnet_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    resnet_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    resnet_stem: int = 64

    def __post_init__(self) -> None:
        for name in ("resnet_layers", "resnet_widths"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 4:
                raise ValueError(f"{name} must have 4 entries, got {value}")
            object.__setattr__(self, name, value)
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.vit_dim % self.vit_heads:
            raise ValueError("vit_dim must be divisible by vit_heads")
        if self.prompt_dim % 8:
            raise ValueError("prompt_dim must be divisible by 8")

    @property
    def vit_depth(self) -> int:
        return 12

    @property
    def global_attn_indexes(self) -> tuple[int, ...]:
        return (2, 5, 8, 11)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def feature_channels(self) -> int:
        return self.prompt_dim // 8

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints, floats, strs, lists) safe for ``torch.load(weights_only=True)``."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamUNetConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown SamUNetConfig fields: {unknown}")
        return cls(**data)

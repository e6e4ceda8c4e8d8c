"""SAM-UNet model: modules and the variant registry."""

from __future__ import annotations

from .build import VARIANTS, build_model, register_variant, variant_config, variant_names
from .config import SamUNetConfig
from .sam_unet import SamUNet

__all__ = [
    "VARIANTS",
    "SamUNet",
    "SamUNetConfig",
    "build_model",
    "register_variant",
    "variant_config",
    "variant_names",
]

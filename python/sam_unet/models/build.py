"""Registry of SAM-UNet variants and :func:`build_model`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import SamUNetConfig
from .sam_unet import SamUNet

VARIANTS: dict[str, SamUNetConfig] = {
    # The published model (ResNet-34 branch; the variant its DDP script trains).
    "res34": SamUNetConfig(),
    # ResNet-50 (bottleneck) branch.
    "res50": SamUNetConfig(
        resnet_block="bottleneck",
        resnet_layers=(3, 4, 6, 3),
        resnet_widths=(64, 128, 256, 512),
    ),
    # Same architecture, small dims: tests and CPU demos (~1.7M parameters), with the
    # published 14-token windows. The bundled demo checkpoint overrides window_size=16 (one
    # window covers the 16x16 token grid, no padding); assets/demo_tiny.md gives the measured
    # trade-offs of the window sizes tried.
    "tiny": SamUNetConfig(
        vit_dim=96,
        vit_heads=3,
        vit_mlp_ratio=2.0,
        window_size=14,
        prompt_dim=64,
        decoder_depth=2,
        decoder_heads=4,
        decoder_mlp_dim=256,
        resnet_block="basic",
        resnet_layers=(1, 1, 1, 1),
        resnet_widths=(16, 32, 64, 128),
        resnet_stem=16,
    ),
}
DEFAULT_VARIANT = "res34"


def variant_names() -> tuple[str, ...]:
    return tuple(VARIANTS)


def variant_config(variant: str = DEFAULT_VARIANT, **overrides: Any) -> SamUNetConfig:
    """The registered config of ``variant`` with field ``overrides`` applied."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SAM-UNet variant {variant!r}; expected one of {list(VARIANTS)}")
    names = {f.name for f in dataclasses.fields(SamUNetConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown model options {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(VARIANTS[variant], **overrides)


def register_variant(name: str, config: SamUNetConfig) -> None:
    """Add (or replace) a named variant."""
    VARIANTS[name] = config


def build_model(variant: str = DEFAULT_VARIANT, *, fast: bool = True, **overrides: Any) -> SamUNet:
    """Build a randomly initialised SAM-UNet.

    variant: "res34" (default) | "res50" | "tiny" (or a registered name); ``overrides`` replace
    :class:`SamUNetConfig` fields; ``fast=False`` selects the plain padded-window attention
    reference path. The model is returned in eval mode on the CPU in float32.
    """
    config = variant_config(variant, **overrides)
    model = SamUNet(config=config, variant=variant, fast=fast)
    return model.eval()

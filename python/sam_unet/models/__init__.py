"""SAM-UNet model: modules and the variant registry.

One file per component, as Segment Anything's ``modeling`` package:

- ``image_encoder.py``: SAM's ViT (patch embedding, relative-position attention, windowed/global
  blocks, neck) and ``ImageEncoder``, which holds it as ``sam_img_encoder``;
- ``prompt_encoder.py``: random Fourier position embedding, SAM's box prompt encoder and
  ``PromptEncoder``, which holds it as ``sam_prompt_encoder``;
- ``transformer.py``: SAM's two-way transformer and its attention;
- ``mask_decoder.py``: SAM's kept decoder core (``sam_mask_decoder``), ``MedMaskDecoder`` with the
  ``med_token``, and the ``MLPHead`` hypernetwork;
- ``resnet.py``: the CNN branch and its residual blocks; ``reshaper.py``: the CNN -> ViT adapter;
- ``common.py``: ``LayerNorm2d``, ``MLPBlock``, head merging;
- ``sam_unet.py``: the whole model (injection, U-Net bridges, ``encode``/``decode``);
- ``config.py``: ``SamUNetConfig``; ``build.py``: the variant registry and ``build_model``.

The holder modules keep the published state-dict prefixes; the keys are the published layout.
"""

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

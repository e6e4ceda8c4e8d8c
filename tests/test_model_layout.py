"""SAM-UNet state-dict layout, parameter counts, variants and config."""

from __future__ import annotations

import pytest
import torch

from reference_samunet import FIXTURES, read_tsv
from sam_unet.models import SamUNetConfig, build_model, variant_config, variant_names

COUNTS = {"res34": (116_019_884, 29_347_244), "res50": (138_428_204, 51_755_564)}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=["res34", "res50"])
def published(request):
    model = build_model(request.param)
    yield request.param, model
    del model


def test_state_dict_matches_published_layout(published):
    variant, model = published
    expected = read_tsv(f"state_dict_{variant}.tsv")
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, (missing[:10], extra[:10])
    assert got == expected  # same order too
    header = (FIXTURES / f"state_dict_{variant}.tsv").read_text().splitlines()[0]
    assert f"{len(expected)} entries" in header


def test_parameter_counts_and_frozen_encoder(published):
    variant, model = published
    total, trainable = COUNTS[variant]
    assert sum(p.numel() for p in model.parameters()) == total
    buffers = dict(model.named_buffers())
    assert "prompt_encoder.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in (
        buffers
    )
    model.freeze_encoder(True)
    try:
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    finally:
        model.freeze_encoder(False)
    assert all(p.requires_grad for p in model.parameters())


def test_variants_and_config():
    assert variant_names()[:3] == ("res34", "res50", "tiny")
    model = build_model("tiny")
    assert model.variant == "tiny"
    assert isinstance(model.config, SamUNetConfig)
    assert model.config == variant_config("tiny")
    assert SamUNetConfig.from_dict(model.config.to_dict()) == model.config
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 3_000_000, n
    assert not model.training and model.fast
    assert model.mask_decoder.feature_channels == model.config.prompt_dim // 8 == 8
    assert variant_config("res34").feature_channels == 32
    with pytest.raises(ValueError, match="unknown SAM-UNet variant"):
        build_model("vit_h")
    with pytest.raises(ValueError, match="unknown model options"):
        build_model("tiny", depth=3)
    custom = build_model("tiny", vit_dim=48, vit_heads=2)
    assert custom.image_encoder.sam_img_encoder.pos_embed.shape == (1, 16, 16, 48)


def test_tiny_state_dict_mirrors_published_keys():
    """tiny has the published structure: the same keys as res34 (shapes differ)."""
    tiny_keys = set(build_model("tiny").state_dict())
    res34_keys = {k for k, _ in read_tsv("state_dict_res34.tsv")}
    resnet_free = {k for k in res34_keys if not k.startswith("resnet.")}
    assert resnet_free <= tiny_keys
    assert (
        torch.Size([1, 16, 16, 96])
        == build_model("tiny").state_dict()["image_encoder.sam_img_encoder.pos_embed"].shape
    )

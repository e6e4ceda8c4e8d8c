"""Checkpoints: published layout (strict), save/load_model, original SAM ViT-B, torchvision."""

from __future__ import annotations

import pickle
import struct
import zipfile

import pytest
import torch
import torch.nn.functional as F

from reference_samunet import batch_norm, random_state_dict, read_tsv, resnet_block
from sam_unet.checkpoints import (
    IN_MEMORY,
    NO_HASH,
    VERIFIED,
    CheckpointError,
    CheckpointNotFoundError,
    infer_variant,
    load_checkpoint,
    load_model,
    load_model_with_report,
    load_resnet_checkpoint,
    load_sam_checkpoint,
    save_checkpoint,
)
from sam_unet.models import VARIANTS, build_model, variant_config
from sam_unet.runtime.engine import Engine

ENC = "image_encoder.sam_img_encoder."


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def res34():
    return build_model("res34")


@pytest.fixture(scope="module")
def res34_state():
    return random_state_dict(read_tsv("state_dict_res34.tsv"), seed=21)


def shapes_of(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


# ---------------------------------------------------------------------------------------------
# published layout


def test_published_layout_loads_strictly(res34, res34_state):
    for wrapped in (res34_state, {"model": res34_state, "epoch": 3}):
        assert load_checkpoint(res34, wrapped) is res34
        got = res34.state_dict()
        for key in (
            f"{ENC}blocks.2.attn.rel_pos_h",
            "resnet.stage3.5.bn2.running_var",
            "resnet.stage1.0.bn1.num_batches_tracked",
            "prompt_encoder.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            "prompt_encoder.sam_prompt_encoder.mask_downscaling.6.bias",
            "mask_decoder.med_token.weight",
        ):
            assert torch.equal(got[key], res34_state[key]), key
    ddp = {"module." + k: v for k, v in res34_state.items()}
    load_checkpoint(res34, {"model": ddp})


def test_mismatch_lists_missing_unexpected_misshaped(res34, res34_state):
    bad = dict(res34_state)
    del bad["mask_decoder.hf_mlp.layers.2.bias"]
    bad["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    bad[f"{ENC}pos_embed"] = torch.zeros(1, 64, 64, 768)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(res34, bad)
    msg = str(info.value)
    assert "1 missing keys (mask_decoder.hf_mlp.layers.2.bias)" in msg
    assert "1 unexpected keys (mask_decoder.iou_token.weight)" in msg
    assert "1 mis-shaped keys" in msg and "(1, 64, 64, 768) vs model (1, 16, 16, 768)" in msg
    assert "'res34'" in msg

    many = {k: v for k, v in res34_state.items() if not k.startswith("resnet.")}
    with pytest.raises(
        CheckpointError, match=r"missing keys \(resnet\.stage0\.0\.weight, .*more\)"
    ):
        load_checkpoint(res34, many)
    load_checkpoint(res34, many, strict=False)  # missing keys tolerated when not strict
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_checkpoint(res34, {f"{ENC}pos_embed": torch.zeros(1, 8, 8, 768)}, strict=False)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_checkpoint(res34, {"model": {"a": 1}})


def test_infer_variant_from_layouts():
    for variant in ("res34", "res50"):
        meta = {k: torch.empty(s, device="meta") for k, s in read_tsv(f"state_dict_{variant}.tsv")}
        assert infer_variant(meta) == variant
    tiny = build_model("tiny").state_dict()
    assert infer_variant(tiny) == "tiny"
    with pytest.raises(CheckpointError, match="not a SAM-UNet"):
        infer_variant({"foo": torch.zeros(1)})


def test_save_and_load_model_roundtrip(tmp_path):
    model = build_model("tiny")
    model.load_state_dict(random_state_dict(shapes_of(model), seed=4))
    path = tmp_path / "ckpt" / "tiny.pt"
    save_checkpoint(model, path, epoch=7, metrics={"dice": 0.5})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "variant", "config", "model_info", "content_sha256", "epoch",
                        "metrics"}
    assert raw["variant"] == "tiny" and raw["epoch"] == 7
    assert raw["model_info"]["variant"] == "tiny"
    assert list(raw["model"]) == list(model.state_dict())  # published layout, untouched
    assert not list(tmp_path.joinpath("ckpt").glob("*.tmp"))

    loaded = load_model(path)
    assert loaded.variant == "tiny" and loaded.config == model.config and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    images = torch.randn(1, 3, 256, 256)
    boxes = torch.tensor([[3.0, 4.0, 200.0, 100.0]])
    with torch.no_grad():
        assert torch.equal(loaded(images, boxes), model(images, boxes))

    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    assert load_model(bare).variant == "tiny"  # inferred from the shapes
    VARIANTS["tiny_narrow"] = variant_config("tiny", vit_dim=48, vit_heads=2)
    try:
        with pytest.raises(CheckpointError, match="'tiny_narrow'"):
            load_model(bare, variant="tiny_narrow")
    finally:
        del VARIANTS["tiny_narrow"]
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(model, tmp_path / "x.pt", variant="res50")


def test_missing_and_corrupt_files(tmp_path):
    model = build_model("tiny")
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointNotFoundError, match="nope.pt"):
        load_checkpoint(model, missing)
    with pytest.raises(FileNotFoundError):
        load_model(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_model(corrupt)
    truncated = tmp_path / "truncated.pt"
    torch.save(model.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(model, truncated)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": model.state_dict(), "args": pickle.PickleError("x")}, pickled)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_model(pickled)
    assert load_model(pickled, allow_pickle=True).variant == "tiny"


# ---------------------------------------------------------------------------------------------
# integrity: content hash, damaged files, non-finite weights


def _random_tiny(seed: int = 4):
    model = build_model("tiny")
    model.load_state_dict(random_state_dict(shapes_of(model), seed=seed))
    return model.eval()


def _data_record(path):
    """(offset, size) of the largest stored record (a tensor's bytes) of a torch zip file."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flipped(src, dst, offset):
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x5A
    dst.write_bytes(bytes(data))
    return dst


def test_project_checkpoints_are_verified(tmp_path):
    model = _random_tiny()
    path = tmp_path / "good.pt"
    save_checkpoint(model, path, epoch=1)
    loaded, report = load_model_with_report(path)
    assert report.hash_checked and report.integrity == VERIFIED and VERIFIED in str(report)
    assert torch.equal(loaded.state_dict()["mask_decoder.med_token.weight"],
                       model.state_dict()["mask_decoder.med_token.weight"])
    half = tmp_path / "half.pt"  # weights stored in float16 (as the demo checkpoint)
    save_checkpoint(build_model("tiny").half(), half)
    assert load_model_with_report(half)[1].hash_checked
    bare = tmp_path / "bare.pt"  # a third-party file: loads, and says nothing was checked
    torch.save(model.state_dict(), bare)
    _, report = load_model_with_report(bare)
    assert not report.hash_checked and report.integrity == NO_HASH


def test_flipped_tensor_bytes_are_caught_by_the_hash(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(_random_tiny(), good)
    offset, size = _data_record(good)
    bad = _flipped(good, tmp_path / "bad.pt", offset + size // 2)
    torch.load(bad, weights_only=True)  # torch reads the damaged file without complaint ...
    want = f"checkpoint '{bad}' is damaged: content hash mismatch; re-download or re-export it"
    for load in (load_model, lambda p: load_checkpoint(build_model("tiny"), p)):
        with pytest.raises(CheckpointError) as info:  # ... the content hash does not
            load(bad)
        assert str(info.value) == want
    # weights changed and saved again under the old hash (edited, or damaged before writing)
    obj = torch.load(good, weights_only=True)
    obj["model"]["mask_decoder.hf_mlp.layers.0.bias"][3] += 1e-3
    torch.save(obj, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="is damaged: content hash mismatch"):
        load_model(tmp_path / "edited.pt")
    obj["model_info"]["window"] = [0.0, 1.0]  # metadata is covered too
    obj["model_info"]["normalize"] = "window"
    obj["model"]["mask_decoder.hf_mlp.layers.0.bias"][3] -= 1e-3
    torch.save(obj, tmp_path / "edited_info.pt")
    with pytest.raises(CheckpointError, match="is damaged: content hash mismatch"):
        load_model(tmp_path / "edited_info.pt")


def test_flipped_zip_structure_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(_random_tiny(), good)
    data = good.read_bytes()
    # the central directory's first entry and the end-of-central-directory record
    for offset in (data.find(b"PK\x01\x02"), data.rfind(b"PK\x05\x06")):
        bad = _flipped(good, tmp_path / "bad.pt", offset)
        with pytest.raises(CheckpointError) as info:
            load_model(bad)
        msg = str(info.value)
        assert msg.startswith(f"checkpoint '{bad}' is damaged or not a PyTorch file (")
        assert msg.endswith("re-download or re-export it") and "\n" not in msg


@pytest.mark.slow
def test_no_flipped_byte_loads_different_weights(tmp_path):
    """Bytes flipped anywhere (zip headers, pickle, tensor data): either the load is refused
    with a CheckpointError, or what loads is exactly the saved model (a byte no reader uses)."""
    model = _random_tiny()
    good = tmp_path / "good.pt"
    save_checkpoint(model, good, prompt="full")
    want = model.state_dict()
    size = good.stat().st_size
    with zipfile.ZipFile(good) as z:
        pkl = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    positions = sorted({*range(0, size, size // 23), *range(pkl.header_offset,
                        pkl.header_offset + 30 + pkl.file_size, max(1, pkl.file_size // 10))})
    refused = 0
    for pos in positions:
        bad = _flipped(good, tmp_path / "bad.pt", pos)
        try:
            got, report = load_model_with_report(bad)
        except CheckpointError:
            refused += 1
            continue
        assert report.integrity == VERIFIED
        assert all(torch.equal(got.state_dict()[k], v) for k, v in want.items()), pos
    assert refused >= len(positions) // 2, (refused, len(positions))


def test_non_finite_weights_refused(tmp_path, res34, res34_state):
    model = _random_tiny()
    sd = model.state_dict()
    sd["mask_decoder.hf_mlp.layers.0.weight"][0, :3] = float("nan")
    sd["resnet.stage1.0.bn1.running_var"][2] = float("inf")
    path = tmp_path / "nan.pt"
    torch.save({"model": sd, "variant": "tiny"}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert msg.startswith(f"checkpoint '{path}' has non-finite weights (NaN or Inf) in 2 ")
    assert "mask_decoder.hf_mlp.layers.0.weight (3 NaN)" in msg
    assert "resnet.stage1.0.bn1.running_var (1 Inf)" in msg and "\n" not in msg
    saved = tmp_path / "saved_nan.pt"  # a valid hash over NaN weights is still refused
    model.load_state_dict(sd)
    save_checkpoint(model, saved)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        Engine.from_checkpoint(saved, device="cpu")
    with pytest.raises(CheckpointError, match=r"state dict has non-finite weights"):
        load_checkpoint(build_model("tiny"), sd)
    many = {k: (v.fill_(float("nan")) if v.is_floating_point() else v)
            for k, v in build_model("tiny").state_dict().items()}
    with pytest.raises(CheckpointError, match=r"\.\.\. \(\d+ more\)"):
        load_checkpoint(build_model("tiny"), many)
    sam = random_state_dict(read_tsv("sam_vit_b_checkpoint.tsv"), seed=31)
    sam["image_encoder.blocks.3.attn.qkv.weight"][0, 0] = float("-inf")
    with pytest.raises(CheckpointError, match="image_encoder.blocks.3.attn.qkv.weight"):
        load_sam_checkpoint(res34, sam)


# ---------------------------------------------------------------------------------------------
# original SAM ViT-B


def test_sam_vit_b_checkpoint_converts(res34):
    sam = random_state_dict(read_tsv("sam_vit_b_checkpoint.tsv"), seed=31)
    before = {k: v.clone() for k, v in res34.state_dict().items() if k.startswith("resnet.")}
    report = load_sam_checkpoint(res34, sam)
    sd = res34.state_dict()

    want_pos = F.interpolate(
        sam["image_encoder.pos_embed"].permute(0, 3, 1, 2),
        size=(16, 16),
        mode="bilinear",
        align_corners=False,
    ).permute(0, 2, 3, 1)
    torch.testing.assert_close(sd[f"{ENC}pos_embed"], want_pos, rtol=0, atol=1e-6)
    for i in (2, 5, 8, 11):
        for axis in ("h", "w"):
            src = sam[f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"]  # (127, 64)
            want = F.interpolate(src.T.unsqueeze(0), size=31, mode="linear", align_corners=False)[
                0
            ].T
            torch.testing.assert_close(
                sd[f"{ENC}blocks.{i}.attn.rel_pos_{axis}"], want, rtol=0, atol=1e-6
            )
    for i in (0, 1, 3, 10):
        assert torch.equal(
            sd[f"{ENC}blocks.{i}.attn.rel_pos_h"], sam[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
        )
    pairs = {
        f"{ENC}blocks.7.attn.qkv.weight": "image_encoder.blocks.7.attn.qkv.weight",
        f"{ENC}neck.3.bias": "image_encoder.neck.3.bias",
        "prompt_encoder.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
        ),
        "prompt_encoder.sam_prompt_encoder.point_embeddings.3.weight": (
            "prompt_encoder.point_embeddings.3.weight"
        ),
        "mask_decoder.sam_mask_decoder.transformer.layers.1.mlp.lin2.weight": (
            "mask_decoder.transformer.layers.1.mlp.lin2.weight"
        ),
        "mask_decoder.sam_mask_decoder.output_upscaling.3.bias": (
            "mask_decoder.output_upscaling.3.bias"
        ),
    }
    for ours, theirs in pairs.items():
        assert torch.equal(sd[ours], sam[theirs]), ours
    for k, v in before.items():
        assert torch.equal(sd[k], v), k  # the CNN branch is not touched

    assert len(report.resized) == 1 + 8  # pos_embed + 4 global blocks x (h, w)
    skipped = set(report.skipped)
    assert "mask_decoder.mask_tokens.weight" in skipped
    assert "mask_decoder.iou_token.weight" in skipped
    assert "mask_decoder.iou_prediction_head.layers.2.bias" in skipped
    assert "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight" in skipped
    assert len(report.loaded) + len(skipped) == len(sam)
    assert "mask_decoder.med_token.weight" in report.not_loaded
    assert "pos_embed" in str(report)
    assert not report.hash_checked and report.integrity == IN_MEMORY  # a dict: nothing to check

    bad = dict(sam)
    bad["mask_decoder.something_new.weight"] = torch.zeros(3)
    del bad["image_encoder.neck.0.weight"]
    with pytest.raises(CheckpointError) as info:
        load_sam_checkpoint(res34, bad)
    assert "mask_decoder.something_new.weight" in str(info.value)
    assert f"{ENC}neck.0.weight" in str(info.value)


# ---------------------------------------------------------------------------------------------
# torchvision ResNet


def torchvision_state(model, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet state dict with the shapes of ``model``'s branch (+ fc)."""
    shapes = []
    for key, shape in shapes_of(model):
        if not key.startswith("resnet."):
            continue
        key = key[len("resnet.") :]
        key = key.replace("stage0.0.", "conv1.").replace("stage0.1.", "bn1.")
        for i in range(1, 5):
            key = key.replace(f"stage{i}.", f"layer{i}.")
        shapes.append((key, shape))
    shapes += [("fc.weight", (1000, model.resnet.out_channels[-1])), ("fc.bias", (1000,))]
    return random_state_dict(shapes, seed=seed)


def torchvision_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    x = F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)
    x = F.max_pool2d(F.relu(batch_norm(sd, "bn1.", x)), kernel_size=3, stride=2, padding=1)
    feats = []
    for s in range(1, 5):
        j = 0
        while f"layer{s}.{j}.conv1.weight" in sd:
            x = resnet_block(sd, f"layer{s}.{j}.", x, 2 if (s > 1 and j == 0) else 1)
            j += 1
        feats.append(x)
    return feats


@pytest.mark.parametrize("kind", ["resnet34", "resnet50"])
def test_torchvision_resnet_weights(kind, res34):
    if kind == "resnet34":
        model = res34
    else:  # a ResNet-50 branch on the tiny ViT keeps the test cheap
        model = build_model(
            "tiny",
            resnet_block="bottleneck",
            resnet_layers=(3, 4, 6, 3),
            resnet_widths=(64, 128, 256, 512),
            resnet_stem=64,
        )
    tv = torchvision_state(model, seed=41)
    vit_before = model.image_encoder.sam_img_encoder.pos_embed.detach().clone()
    report = load_resnet_checkpoint(model, tv)
    assert report.skipped == ["fc.weight", "fc.bias"]
    assert "resnet.stage0.0.weight" in report.loaded
    assert torch.equal(model.state_dict()["resnet.stage0.1.running_mean"], tv["bn1.running_mean"])
    assert torch.equal(model.image_encoder.sam_img_encoder.pos_embed, vit_before)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.resnet.eval()(x)
    theirs = torchvision_forward(tv, x)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    broken = dict(tv)
    del broken["layer2.0.downsample.0.weight"]
    broken["layer9.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_resnet_checkpoint(model, broken)
    msg = str(info.value)
    assert "resnet.stage2.0.downsample.0.weight" in msg and "layer9.0.conv1.weight" in msg

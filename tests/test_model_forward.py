"""Forward semantics of the tiny SAM-UNet: batching, encode/decode, fast path, freezing, export."""

from __future__ import annotations

import io

import pytest
import torch

from reference_samunet import random_state_dict, reference_encode, reference_forward
from sam_unet.models import build_model

BOXES = torch.tensor(
    [[10.0, 20.0, 200.0, 220.0], [0.0, 0.0, 255.0, 255.0], [50.0, 60.0, 70.0, 90.0]]
)


pytestmark = pytest.mark.usefixtures("single_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def tiny():
    # 14-token windows do not divide the 16x16 grid: the padding-free windowed path is exercised.
    model = build_model("tiny", window_size=14)
    sd = random_state_dict([(k, tuple(v.shape)) for k, v in model.state_dict().items()], seed=3)
    model.load_state_dict(sd, strict=True)
    images = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    return model, sd, images


def test_output_shape_and_batch_equals_per_image(tiny):
    model, _, images = tiny
    with torch.no_grad():
        batched = model(images, BOXES)
        single = torch.cat([model(images[i : i + 1], BOXES[i : i + 1]) for i in range(3)])
    assert batched.shape == (3, 1, 64, 64) and batched.dtype == torch.float32
    assert torch.isfinite(batched).all()
    assert rel_err(batched, single) < 1e-5


def test_decode_with_image_index(tiny):
    model, _, images = tiny
    with torch.no_grad():
        full = model(images, BOXES)
        emb, ms = model.encode(images)
        assert emb.shape == (3, 64, 16, 16) and ms.shape == (3, 8, 64, 64)
        assert rel_err(model.decode(emb, ms, BOXES), full) < 1e-6
        # five boxes over three images, in any order
        index = torch.tensor([2, 0, 0, 1, 2])
        boxes = torch.cat([BOXES[2:3], BOXES[0:1], BOXES[1:2], BOXES[1:2], BOXES[0:1]])
        out = model.decode(emb, ms, boxes, index)
        assert out.shape == (5, 1, 64, 64)
        for j, i in enumerate(index.tolist()):
            one = model(images[i : i + 1], boxes[j : j + 1])
            assert rel_err(out[j : j + 1], one) < 1e-5
        with pytest.raises(ValueError, match="image_index"):
            model.decode(emb, ms, boxes)


def test_fast_path_matches_padded_reference(tiny):
    model, sd, images = tiny
    assert model.fast
    with torch.no_grad():
        emb_f, ms_f = model.encode(images)
        out_f = model(images, BOXES)
        model.set_fast(False)
        try:
            emb_p, ms_p = model.encode(images)
            out_p = model(images, BOXES)
        finally:
            model.set_fast(True)
        emb_r, ms_r = reference_encode(sd, images, vit_heads=3)
        out_r = reference_forward(sd, images, BOXES, vit_heads=3, decoder_heads=4)
    for fast, padded in ((emb_f, emb_p), (ms_f, ms_p), (out_f, out_p)):
        assert rel_err(fast, padded) < 1e-5
    for fast, ref in ((emb_f, emb_r), (ms_f, ms_r), (out_f, out_r)):
        assert rel_err(fast, ref) < 1e-5
    assert build_model("tiny", fast=False).fast is False


def test_fast_path_projects_real_tokens_only(tiny):
    """Fast: qkv and proj see the 16x16 real tokens; plain: the 28x28 padded grid."""
    model, _, images = tiny
    blk = model.image_encoder.sam_img_encoder.blocks[0]
    assert blk.window_size == 14
    seen: dict[str, int] = {}

    def hook(name):
        def record(_module, args, _out):
            seen[name] = args[0].numel() // args[0].shape[-1]

        return record

    handles = [
        blk.attn.qkv.register_forward_hook(hook("qkv")),
        blk.attn.proj.register_forward_hook(hook("proj")),
    ]
    try:
        with torch.no_grad():
            model.encode(images[:1])
            assert seen == {"qkv": 256, "proj": 256}
            model.set_fast(False)
            model.encode(images[:1])
            assert seen == {"qkv": 28 * 28, "proj": 28 * 28}
    finally:
        model.set_fast(True)
        for h in handles:
            h.remove()


def test_tiny_parity_with_reference(tiny):
    model, sd, images = tiny
    with torch.no_grad():
        out = model(images, BOXES)
    ref = reference_forward(sd, images, BOXES, vit_heads=3, decoder_heads=4)
    assert rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("window_size", [8, 6, 5, 3])
def test_window_sizes_match_reference(window_size):
    """8 divides the 16x16 grid (no padding); 6, 5 and 3 leave 4-, 1- and 1-token strips of
    windows whose padded queries the fast path skips (several full windows plus a remainder)."""
    model = build_model("tiny", window_size=window_size)
    sd = random_state_dict([(k, tuple(v.shape)) for k, v in model.state_dict().items()], seed=5)
    model.load_state_dict(sd, strict=True)
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(images, BOXES[:2])
    ref = reference_forward(
        sd, images, BOXES[:2], vit_heads=3, decoder_heads=4, window_size=window_size
    )
    assert rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("window_size", [14, 5])
def test_fast_path_gradients_match_padded_reference(window_size):
    """Training through the fast path (real queries only, explicit CPU attention) gives the
    gradients of SAM's padded windows, rel-pos tables included."""
    model = build_model("tiny", window_size=window_size)
    sd = random_state_dict([(k, tuple(v.shape)) for k, v in model.state_dict().items()], seed=3)
    model.load_state_dict(sd, strict=True)
    model.train()
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(4))

    def grads():
        model.zero_grad(set_to_none=True)
        model(images, BOXES[:2]).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads()
    model.set_fast(False)
    try:
        plain = grads()
    finally:
        model.set_fast(True)
    assert fast.keys() == plain.keys() and "image_encoder.sam_img_encoder.blocks.0.attn." \
        "rel_pos_h" in fast
    for name in fast:
        if name.endswith("k_proj.bias"):  # softmax ignores a bias on all keys: zero up to noise
            continue
        assert rel_err(fast[name], plain[name]) < 1e-4, name


def test_freeze_encoder(tiny):
    model = build_model("tiny")
    model.freeze_encoder(True)
    model.train()
    assert model.training and model.encoder_frozen
    assert not model.image_encoder.training
    assert all(not m.training for m in model.image_encoder.modules())
    assert model.resnet.training and model.mask_decoder.training
    images = torch.randn(2, 3, 256, 256)
    out = model(images, BOXES[:2])
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if name.startswith("image_encoder."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad, name
    assert model.mask_decoder.med_token.weight.grad is not None
    assert model.adapters_in[0].reshaper[0].weight.grad is not None
    assert model.resnet.stage0[0].weight.grad is not None
    model.freeze_encoder(False)
    assert model.image_encoder.training
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_export_dynamic_batch(tiny):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, _, images = tiny
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (images[:1], BOXES[:1]),
        buf,
        input_names=["image", "boxes"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"image": {0: "batch"}, "boxes": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    proto = onnx.load_from_string(buf.getvalue())
    ops = {n.op_type for n in proto.graph.node}
    assert "LayerNormalization" in ops
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": images.numpy(), "boxes": BOXES.numpy()})
    with torch.no_grad():
        want = model(images, BOXES)
    assert rel_err(torch.from_numpy(got), want) < 1e-4

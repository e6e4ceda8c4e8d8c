"""The reference semantics (sam_unet.transforms) against Pillow, PyTorch and the spec formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam_unet import transforms as T

PIL_SIZES = [
    (1, 1),
    (1, 300),
    (300, 1),
    (1, 700),
    (37, 100),
    (100, 37),
    (7, 3),
    (33, 17),
    (513, 255),
    (255, 513),
    (300, 120),
    (120, 300),
    (256, 256),
    (512, 512),
    (1024, 1024),
    (1024, 300),
    (3000, 17),
]


def _pil_resize(a: np.ndarray, shape) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((shape[1], shape[0]), Image.BILINEAR))


@pytest.mark.parametrize("hw", PIL_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_resize_within_one_gray_level_of_pillow(hw) -> None:
    rng = np.random.default_rng(hw[0] * 7919 + hw[1])
    a = rng.integers(0, 256, hw, dtype=np.uint8)
    shape = T.resized_shape(*hw)
    got = T.resize_uint8(a, shape)
    ref = _pil_resize(a, shape)
    assert got.shape == ref.shape == shape
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "src,dst", [((100, 37), (150, 60)), ((40, 50), (256, 256)), ((9, 9), (3, 2))]
)
def test_resize_arbitrary_targets(src, dst) -> None:
    a = np.random.default_rng(1).integers(0, 256, src, dtype=np.uint8)
    assert np.abs(T.resize_uint8(a, dst).astype(int) - _pil_resize(a, dst)).max() <= 1


def test_resize_identity_and_constant() -> None:
    a = np.random.default_rng(2).integers(0, 256, (256, 100), dtype=np.uint8)
    np.testing.assert_array_equal(T.resize_uint8(a, (256, 100)), a)
    c = np.full((700, 300), 77, np.uint8)
    assert (T.resize_uint8(c, T.resized_shape(700, 300)) == 77).all()


def test_resized_shape() -> None:
    assert T.resized_shape(512, 512) == (256, 256)
    assert T.resized_shape(512, 300) == (256, 150)
    assert T.resized_shape(100, 37) == (256, 95)  # int(37 * 2.56 + 0.5)
    assert T.resized_shape(1, 1) == (256, 256)
    assert T.resized_shape(1, 1000) == (1, 256)  # a side rounding to 0 is kept at 1


def test_to_uint8_formulas() -> None:
    x = np.array([[-100.0, 0.0], [50.5, 900.0]])
    got = T.to_uint8(x)
    ref = ((x - x.min()) / (x.max() - x.min() + 1e-6) * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, ref)
    assert got.max() == 254  # the published recipe's epsilon keeps the max below 255
    w = T.to_uint8(x, mode="window", window=(0, 100))
    np.testing.assert_array_equal(w, [[0, 0], [int(50.5 / 100 * 255), 255]])
    c = T.to_uint8(x, mode="slice-minmax", window=(0, 100))  # clip, then min-max
    np.testing.assert_array_equal(c, ((np.clip(x, 0, 100)) / (100 + 1e-6) * 255).astype(np.uint8))
    assert (T.to_uint8(np.full((3, 4), 5, np.int16)) == 0).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_preprocess_slice_layout(dtype) -> None:
    img = np.random.default_rng(3).integers(0, 200, (300, 120)).astype(dtype)
    out, shape = T.preprocess_slice(img, dtype=np.float16)
    assert out.shape == (3, 256, 256) and out.dtype == np.float16
    assert shape == (256, 102)
    assert (out[:, 256:, :] == 0).all() and (out[:, :, 102:] == 0).all()
    u8 = T.resize_uint8(T.to_uint8(img), shape)
    for c in range(3):
        ref = (u8.astype(np.float32) - np.float32(T.PIXEL_MEAN[c])) / np.float32(T.PIXEL_STD[c])
        np.testing.assert_array_equal(out[c, :256, :102], ref.astype(np.float16))


def test_preprocess_slices_geometry() -> None:
    vol = np.random.default_rng(4).integers(0, 1000, (20, 30, 40)).astype(np.int16)
    for axis, hw in [(0, (30, 40)), (1, (20, 40)), (2, (20, 30)), (-1, (20, 30))]:
        out, sizes = T.preprocess_slices(vol, 2, 3, axis=axis)
        assert out.shape == (3, 3, 256, 256)
        assert tuple(sizes[0]) == T.resized_shape(*hw)
        ref, _ = T.preprocess_slice(np.take(vol, 3, axis=axis))
        np.testing.assert_array_equal(out[1], ref)


def test_scale_boxes() -> None:
    b = T.scale_boxes([[10, 20, 30, 40]], (100, 50), (256, 128))
    np.testing.assert_allclose(b, [[10 * 128 / 50, 20 * 2.56, 30 * 128 / 50, 40 * 2.56]], rtol=1e-6)
    assert b.dtype == np.float32


def test_postprocess_matches_torch_composition() -> None:
    logits = torch.randn(2, 1, 64, 64)
    got = T.postprocess_batch(logits, (256, 180), (300, 211))
    up = F.interpolate(logits, (256, 256), mode="bilinear", align_corners=False)[..., :256, :180]
    ref = (F.interpolate(up, (300, 211), mode="bilinear", align_corners=False)[:, 0] > 0).numpy()
    np.testing.assert_array_equal(got, ref.astype(np.uint8))
    one = T.postprocess_logits(logits[0, 0].numpy(), (256, 180), (300, 211))
    np.testing.assert_array_equal(one, got[0])
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}


def test_resize_mask() -> None:
    m = np.zeros((100, 50), bool)
    m[20:60, 10:30] = True
    r = T.resize_mask(m, (256, 128))
    assert r.dtype == np.uint8 and set(np.unique(r)) == {0, 1}
    assert abs(r.mean() - m.mean()) < 0.02


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="2D"):
        T.to_uint8(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="empty axis"):
        T.to_uint8(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        T.to_uint8(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        T.to_uint8(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="unsupported dtype"):
        T.to_uint8(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="lo < hi"):
        T.to_uint8(np.zeros((2, 2)), mode="window", window=(3, 3))
    with pytest.raises(ValueError, match="requires window"):
        T.to_uint8(np.zeros((2, 2)), mode="window")
    with pytest.raises(ValueError, match="mode"):
        T.to_uint8(np.zeros((2, 2)), mode="zscore")
    with pytest.raises(ValueError, match="3D"):
        T.preprocess_slices(np.zeros((4, 4)), 0, 1)
    with pytest.raises(ValueError, match="empty axis"):
        T.preprocess_slices(np.zeros((4, 0, 3)), 0, 1)
    with pytest.raises(ValueError, match="outside"):
        T.preprocess_slices(np.zeros((4, 4, 3)), 2, 2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        T.scale_boxes(np.zeros((2, 3)), (10, 10), (256, 256))
    with pytest.raises(ValueError, match="logits"):
        T.postprocess_batch(np.zeros((2, 1, 32, 32)), (256, 256), (10, 10))

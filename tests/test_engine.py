"""engine.segment: every input kind and dtype, strides, axes, prompts, errors (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_unet import transforms
from sam_unet.models.build import build_model
from sam_unet.runtime.backends import make_backend
from sam_unet.runtime.engine import Engine
from sam_unet.runtime.prompts import plan_slices


class CountingBackend:
    """The real backend, with a count of calls and slices (to check what was computed)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.slices = 0
        for k in ("name", "device", "precision", "max_batch"):
            setattr(self, k, getattr(inner, k))

    def run(self, images, boxes):
        self.calls += 1
        self.slices += int(images.shape[0])
        return self.inner.run(images, boxes)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def engine(model):
    return Engine(make_backend("torch", model=model, device="cpu", precision="fp32", max_batch=4))


def reference_segment(model, vol, axis, *, window=None, normalize="slice-minmax", plan=None):
    """Per-slice NumPy/PyTorch reference: transforms.preprocess_slices -> model -> postprocess."""
    axis = axis % 3
    vol = np.asarray(vol)
    shape = vol.shape
    plan = plan or plan_slices(shape, axis, None)
    out = np.zeros(shape, np.uint8)
    moved = np.moveaxis(out, axis, 0)
    rest = [a for a in range(3) if a != axis]
    hw = (shape[rest[0]], shape[rest[1]])
    logits_all = []
    for k, box in zip(plan.indices, plan.boxes, strict=True):
        img, resized = transforms.preprocess_slices(vol, int(k), 1, axis=axis, mode=normalize,
                                                    window=window)
        b = transforms.scale_boxes(box[None], hw, tuple(resized[0]))
        with torch.no_grad():
            logits = model(torch.from_numpy(img), torch.from_numpy(b)).numpy()
        logits_all.append(logits[0, 0])
        moved[int(k)] = transforms.postprocess_logits(logits[0, 0], tuple(resized[0]), hw)
    return out, logits_all


def _volume(dtype, shape=(23, 17, 3), seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(100, 40, size=shape)
    # a bright blob so slices have structure
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    base += 200 * ((x**2 + y**2 + 0.3 * z**2) < 0.3)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        base = np.clip(base, info.min, info.max)
    return base.astype(dtype)


def _agree(a, b):
    return float(np.mean(np.asarray(a) == np.asarray(b)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32,
                                   np.float64])
def test_dtypes_match_reference(engine, model, dtype):
    vol = _volume(dtype)
    got = engine.segment(vol)
    ref, _ = reference_segment(model, vol, -1)
    assert got.dtype == np.uint8 and got.shape == vol.shape
    assert set(np.unique(got)) <= {0, 1}
    # threshold flips allowed only where the logit is ~0: random model, so a tiny tolerance
    assert _agree(got, ref) > 0.999


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_each_axis(engine, model, axis):
    vol = _volume(np.int16, shape=(5, 7, 6))
    got = engine.segment(vol, axis=axis)
    ref, _ = reference_segment(model, vol, axis)
    assert _agree(got, ref) > 0.999


@pytest.mark.parametrize("view", ["transposed", "step", "negative", "fortran"])
def test_strided_views(engine, model, view):
    base = _volume(np.float32, shape=(12, 10, 6))
    vol = {"transposed": base.transpose(2, 0, 1), "step": base[::2, 1::2, ::3],
           "negative": base[::-1, :, ::-2], "fortran": np.asfortranarray(base)}[view]
    got = engine.segment(vol)
    ref, _ = reference_segment(model, np.ascontiguousarray(vol), -1)
    assert _agree(got, ref) > 0.999


def test_torch_input_returns_torch(engine):
    vol = _volume(np.int16)
    got_np = engine.segment(vol)
    got_t = engine.segment(torch.from_numpy(vol))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.uint8
    np.testing.assert_array_equal(got_t.numpy(), got_np)


def test_window_modes(engine, model):
    vol = _volume(np.int16)
    for kwargs in ({"window": (50, 250)}, {"window": (50, 250), "normalize": "window"}):
        got = engine.segment(vol, **kwargs)
        ref, _ = reference_segment(model, vol, -1, **kwargs)
        assert _agree(got, ref) > 0.999


def test_batch_size_does_not_change_result(engine):
    vol = _volume(np.int16, shape=(20, 20, 5))
    a = engine.segment(vol, batch_size=1)
    b = engine.segment(vol, batch_size=3)
    c = engine.segment(vol, batch_size=64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_3d_box_computes_only_its_slices(model):
    backend = CountingBackend(make_backend("torch", model=model, device="cpu",
                                           precision="fp32", max_batch=4))
    eng = Engine(backend)
    vol = _volume(np.int16, shape=(21, 19, 12))
    box = (2, 3, 4, 15, 16, 8)  # x0 y0 z0 x1 y1 z1, inclusive voxels
    got = eng.segment(vol, boxes=box)
    assert backend.slices == 5 and eng.last_stats.slices == 5
    assert backend.calls == 2  # 5 slices in batches of 4
    assert not got[:, :, :4].any() and not got[:, :, 9:].any()
    plan = plan_slices(vol.shape, 2, np.asarray(box, float))
    ref, _ = reference_segment(model, vol, 2, plan=plan)
    assert _agree(got, ref) > 0.999


def test_per_slice_boxes_and_mask_prompt(model):
    backend = CountingBackend(make_backend("torch", model=model, device="cpu",
                                           precision="fp32", max_batch=8))
    eng = Engine(backend)
    vol = _volume(np.int16, shape=(21, 19, 10))
    boxes = np.full((10, 4), np.nan)
    boxes[[1, 2, 7]] = [2, 3, 12, 15]
    got = eng.segment(vol, boxes=boxes)
    assert backend.slices == 3
    untouched = [k for k in range(10) if k not in (1, 2, 7)]
    assert not got[:, :, untouched].any()
    got_dict = eng.segment(vol, boxes={1: (2, 3, 12, 15), 2: (2, 3, 12, 15), 7: (2, 3, 12, 15)})
    np.testing.assert_array_equal(got, got_dict)
    coarse = np.zeros(vol.shape, np.uint8)
    coarse[3:16, 2:13, 4] = 1  # rows x 3..15, columns y 2..12 -> box (2, 3, 12, 15)
    coarse[0, 0, 4] = 1  # a smaller component, ignored
    backend.slices = 0
    got_mask = eng.segment(vol, box_mask=coarse)
    assert backend.slices == 1
    ref = eng.segment(vol, boxes={4: (2, 3, 12, 15)})
    np.testing.assert_array_equal(got_mask, ref)


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros((4, 4), np.int16), "3D"),
        (np.zeros((4, 0, 3), np.int16), "size 0"),
        (np.full((4, 4, 2), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 2), np.inf, np.float64), "NaN or Inf"),
        (np.zeros((4, 4, 2), np.int64), "unsupported dtype int64"),
        (np.zeros((4, 4, 2), bool), "unsupported dtype bool"),
    ],
)
def test_bad_volumes(engine, volume, message):
    with pytest.raises(ValueError, match=message):
        engine.segment(volume)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"boxes": (0, 0, 0, 30, 5, 2)}, "outside the volume"),
        ({"boxes": (-1, 0, 0, 3, 5, 2)}, "outside the volume"),
        ({"boxes": {9: (0, 0, 3, 3)}}, "slice 9"),
        ({"boxes": {1: (0, 0, 30, 3)}}, "outside the slice"),
        ({"boxes": np.zeros((3, 4))}, "per-slice boxes have 3 rows"),
        ({"window": (5, 1)}, "lo < hi"),
        ({"normalize": "window"}, "requires window"),
        ({"normalize": "zscore"}, "mode must be one of"),
        ({"axis": 3}, "axis"),
    ],
)
def test_bad_arguments(engine, kwargs, message):
    with pytest.raises(ValueError, match=message):
        engine.segment(np.zeros((8, 8, 4), np.int16), **kwargs)


def test_describe_names_backend(engine):
    text = engine.describe()
    assert "backend=torch" in text and "device=cpu" in text

"""engine.segment on the CPU: every input kind and real dtype, byte order, strides, axes,
prompts and their frame, model metadata defaults, stats, errors."""

from __future__ import annotations

import copy
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from sam_unet import transforms
from sam_unet.model_info import ModelInfo
from sam_unet.models.build import build_model
from sam_unet.runtime.backends import make_backend
from sam_unet.runtime.engine import Engine
from sam_unet.runtime.placements import STAGES
from sam_unet.runtime.plan import SliceGeometry
from sam_unet.runtime.prompts import slice_prompts


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


def reference_segment(model, vol, axis, *, window=None, normalize="slice-minmax", prompt=None):
    """Per-slice NumPy/PyTorch reference: transforms.preprocess_slices -> model -> postprocess.

    ``prompt``: (indices, model-frame boxes) as slice_prompts returns; default full slices."""
    vol = np.asarray(vol)
    geo = SliceGeometry.of(vol.shape, axis)
    indices, boxes = prompt or slice_prompts(geo)
    out = np.zeros(vol.shape, np.uint8)
    moved = np.moveaxis(out, geo.axis, 0)
    for k, box in zip(indices, boxes, strict=True):
        img, resized = transforms.preprocess_slices(vol, int(k), 1, axis=geo.axis,
                                                    mode=normalize, window=window)
        assert tuple(resized[0]) == geo.resized
        with torch.no_grad():
            logits = model(torch.from_numpy(img), torch.from_numpy(box[None])).numpy()
        moved[int(k)] = transforms.postprocess_logits(logits[0, 0], geo.resized,
                                                      (geo.height, geo.width))
    return out


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
    ref = reference_segment(model, vol, -1)
    assert got.dtype == np.uint8 and got.shape == vol.shape
    assert set(np.unique(got)) <= {0, 1}
    # threshold flips allowed only where the logit is ~0: random model, so a tiny tolerance
    assert _agree(got, ref) > 0.999


# Every other real dtype and byte order: the same intensities in a dtype the ops read natively
# must give the same mask (the pipeline converts per slab without losing precision).
CONVERTED = [
    ("int8", lambda v: (v - 100).astype(np.int8), lambda v: (v - 100).astype(np.int16)),
    ("uint32", lambda v: v.astype(np.uint32), lambda v: v.astype(np.float64)),
    ("int64", lambda v: v.astype(np.int64) - 2**40, lambda v: v.astype(np.float64) - 2**40),
    ("uint64", lambda v: v.astype(np.uint64) + 2**40, lambda v: v.astype(np.float64) + 2**40),
    ("float16", lambda v: v.astype(np.float16), lambda v: v.astype(np.float16).astype(np.float32)),
    ("bool", lambda v: v > 160, lambda v: (v > 160).astype(np.uint8)),
    (">i2", lambda v: v.astype(">i2"), lambda v: v.astype(np.int16)),
    (">u2", lambda v: v.astype(">u2"), lambda v: v.astype(np.uint16)),
    (">f4", lambda v: v.astype(">f4") / 7, lambda v: v.astype(np.float32) / 7),
    (">f8", lambda v: v.astype(">f8") * 1.5, lambda v: v.astype(np.float64) * 1.5),
    (">i8", lambda v: v.astype(">i8"), lambda v: v.astype(np.float64)),
    ("torch bfloat16", lambda v: torch.from_numpy(v.astype(np.float32)).bfloat16(),
     lambda v: torch.from_numpy(v.astype(np.float32)).bfloat16().float().numpy()),
    ("torch int64", lambda v: torch.from_numpy(v.astype(np.int64)), lambda v: v.astype(np.int32)),
    ("torch float16", lambda v: torch.from_numpy(v.astype(np.float16)),
     lambda v: v.astype(np.float16).astype(np.float32)),
    ("torch bool", lambda v: torch.from_numpy(v > 160), lambda v: (v > 160).astype(np.uint8)),
]


@pytest.mark.parametrize("make, native", [c[1:] for c in CONVERTED], ids=[c[0] for c in CONVERTED])
def test_any_real_dtype_and_byte_order(engine, make, native):
    base = np.clip(_volume(np.int16, shape=(19, 13, 5)), 0, 220)  # fits every dtype below
    vol = make(base)
    got = engine.segment(vol, batch_size=2)
    want = engine.segment(native(base), batch_size=2)
    got = got.numpy() if isinstance(got, torch.Tensor) else got
    assert got.dtype == np.uint8 and got.shape == base.shape
    np.testing.assert_array_equal(got, want)


def test_strided_and_flipped_conversions(engine):
    """Converted slabs are gathered from any layout: byte-swapped or int64 volumes in Fortran
    order, transposed, or with negative strides."""
    base = _volume(np.int16, shape=(12, 10, 6))
    swapped = base.astype(">i2")
    wide = base.astype(np.int64)
    for layout in (lambda a: a[::-1, ::2, ::-2], lambda a: a.transpose(2, 0, 1),
                   lambda a: np.asfortranarray(a)):
        want = engine.segment(np.ascontiguousarray(layout(base)))
        np.testing.assert_array_equal(engine.segment(layout(swapped)), want)
        np.testing.assert_array_equal(engine.segment(layout(wide)), want)


def test_converted_volume_is_never_copied_whole(engine):
    """An int64 volume is converted slab by slab: the peak of NumPy allocations stays far below
    a float64 copy of the volume."""
    vol = _volume(np.int64, shape=(48, 48, 24))
    engine.segment(vol, batch_size=4)  # warm-up: lazy imports and caches out of the measure
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        engine.segment(vol, batch_size=4)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    mask_bytes = vol.size  # the output itself; a whole float64 copy would add vol.nbytes
    assert peak < mask_bytes + vol.nbytes // 2, (peak, vol.nbytes)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_each_axis(engine, model, axis):
    vol = _volume(np.int16, shape=(5, 7, 6))
    got = engine.segment(vol, axis=axis)
    ref = reference_segment(model, vol, axis)
    assert _agree(got, ref) > 0.999


@pytest.mark.parametrize("view", ["transposed", "step", "negative", "fortran"])
def test_strided_views(engine, model, view):
    base = _volume(np.float32, shape=(12, 10, 6))
    vol = {"transposed": base.transpose(2, 0, 1), "step": base[::2, 1::2, ::3],
           "negative": base[::-1, :, ::-2], "fortran": np.asfortranarray(base)}[view]
    got = engine.segment(vol)
    ref = reference_segment(model, np.ascontiguousarray(vol), -1)
    assert _agree(got, ref) > 0.999


def test_torch_input_returns_torch(engine):
    vol = _volume(np.int16)
    got_np = engine.segment(vol)
    got_t = engine.segment(torch.from_numpy(vol))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.uint8
    np.testing.assert_array_equal(got_t.numpy(), got_np)
    got_nc = engine.segment(torch.from_numpy(vol).permute(2, 0, 1).contiguous().permute(1, 2, 0))
    np.testing.assert_array_equal(got_nc.numpy(), got_np)


def test_window_modes(engine, model):
    vol = _volume(np.int16)
    for kwargs in ({"window": (50, 250)}, {"window": (50, 250), "normalize": "window"}):
        got = engine.segment(vol, **kwargs)
        ref = reference_segment(model, vol, -1, **kwargs)
        assert _agree(got, ref) > 0.999


def test_batch_size_does_not_change_result(engine):
    vol = _volume(np.int16, shape=(20, 20, 5))
    a = engine.segment(vol, batch_size=1)
    b = engine.segment(vol, batch_size=3)
    c = engine.segment(vol, batch_size=64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_buffers_sized_by_the_slices_at_hand(engine):
    vol = _volume(np.int16, shape=(20, 20, 5))
    engine.segment(vol, batch_size=100_000)
    st = engine.last_stats
    assert st.slices == 5 and st.slabs == 1
    assert st.buffer_bytes == 5 * 3 * 256 * 256 * 4  # 5 float32 images, not 100,000


def test_stats_fill_every_stage(engine):
    engine.segment(_volume(np.int64, shape=(20, 20, 5)), batch_size=2)
    st = engine.last_stats
    assert tuple(st.stages) == STAGES
    assert st.placement == "HostPlacement" and st.slabs == 3 and st.backend_calls == 3
    for stage in ("gather", "preprocess", "model", "postprocess"):  # gather: int64 converted
        assert st.stages[stage] > 0, stage
    assert st.stages["upload"] == st.stages["download"] == 0.0  # no device on the CPU


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
    geo = SliceGeometry.of(vol.shape, 2)
    ref = reference_segment(model, vol, 2, prompt=slice_prompts(geo, np.asarray(box, float)))
    assert _agree(got, ref) > 0.999


def test_2d_box_frame_is_the_array_axes():
    """A 2D box (x0, y0, x1, y1) has x over the first remaining array axis; in the
    model's frame x is the image column (the second remaining axis)."""
    geo = SliceGeometry.of((40, 20, 7), 2)  # slices (H, W) = (40, 20) -> (h', w') = (256, 128)
    assert geo.resized == (256, 128)
    idx, boxes = slice_prompts(geo, {3: (4, 2, 36, 10)})
    assert idx.tolist() == [3]
    np.testing.assert_allclose(boxes[0], [2 * 128 / 20, 4 * 256 / 40, 10 * 128 / 20,
                                          36 * 256 / 40], rtol=1e-6)
    # the 3D box gives the same 2D box on its slices, for every slicing axis
    for axis in (0, 1, 2):
        g = SliceGeometry.of((40, 20, 7), axis)
        lo, hi = [4, 2, 1], [36, 10, 5]
        _, b3 = slice_prompts(g, np.array(lo + hi, float))
        rest = [a for a in range(3) if a != axis]
        _, b2 = slice_prompts(g, {lo[axis]: (lo[rest[0]], lo[rest[1]], hi[rest[0]],
                                             hi[rest[1]])})
        np.testing.assert_array_equal(b3[0], b2[0])
    full = slice_prompts(geo)[1]
    np.testing.assert_array_equal(full[0], [0, 0, 127, 255])  # (0, 0, w' - 1, h' - 1)


def test_per_slice_boxes_and_mask_prompt(model):
    backend = CountingBackend(make_backend("torch", model=model, device="cpu",
                                           precision="fp32", max_batch=8))
    eng = Engine(backend)
    vol = _volume(np.int16, shape=(21, 19, 10))
    boxes = np.full((10, 4), np.nan)
    boxes[[1, 2, 7]] = [3, 2, 15, 12]
    got = eng.segment(vol, boxes=boxes)
    assert backend.slices == 3
    untouched = [k for k in range(10) if k not in (1, 2, 7)]
    assert not got[:, :, untouched].any()
    got_dict = eng.segment(vol, boxes={1: (3, 2, 15, 12), 2: (3, 2, 15, 12), 7: (3, 2, 15, 12)})
    np.testing.assert_array_equal(got, got_dict)
    coarse = np.zeros(vol.shape, np.uint8)
    coarse[3:16, 2:13, 4] = 1  # x (axis 0) 3..15, y (axis 1) 2..12 -> box (3, 2, 15, 12)
    coarse[0, 0, 4] = 1  # a smaller component, ignored
    backend.slices = 0
    got_mask = eng.segment(vol, box_mask=coarse)
    assert backend.slices == 1
    ref = eng.segment(vol, boxes={4: (3, 2, 15, 12)})
    np.testing.assert_array_equal(got_mask, ref)
    np.testing.assert_array_equal(eng.segment(vol, boxes=coarse), ref)  # a mask as ``boxes``
    np.testing.assert_array_equal(eng.segment(vol, boxes=(3, 2, 4, 15, 12, 4)), ref)


def test_model_info_defaults_and_warnings(model):
    plain = Engine(make_backend("torch", model=model, device="cpu", precision="fp32"))
    eng = Engine(make_backend("torch", model=model, device="cpu", precision="fp32"))
    eng.model_info = ModelInfo(variant="tiny", normalize="window", window=(50.0, 250.0), axis=0)
    vol = _volume(np.int16, shape=(4, 12, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's own values: no warning
        got = eng.segment(vol)
        same = eng.segment(vol, axis=-3, normalize="window", window=[50, 250])
    want = plain.segment(vol, axis=0, normalize="window", window=(50, 250))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(same, want)
    with pytest.warns(UserWarning, match=r"axis=2 differs from the model's axis=0"):
        np.testing.assert_array_equal(
            eng.segment(vol, axis=2), plain.segment(vol, axis=2, normalize="window",
                                                    window=(50, 250)))
    with pytest.warns(UserWarning, match=r"normalize='slice-minmax' differs .*'window'"):
        eng.segment(vol, normalize="slice-minmax")
    with pytest.warns(UserWarning, match=r"window=\(0.0, 100.0\) differs .*\(50.0, 250.0\)"):
        eng.segment(vol, window=(0, 100))


def test_box_model_needs_a_prompt(model):
    eng = Engine(make_backend("torch", model=model, device="cpu", precision="fp32"))
    eng.model_info = ModelInfo(variant="tiny", prompt_mode="box")
    vol = _volume(np.int16, shape=(12, 12, 3))
    with pytest.raises(ValueError, match="trained with structure boxes.*give boxes"):
        eng.segment(vol)
    assert eng.segment(vol, boxes=(0, 0, 1, 11, 11, 1)).shape == vol.shape


def test_nonfinite_logits_name_the_cause(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for p in broken.mask_decoder.parameters():
            p.fill_(float("nan"))
    eng = Engine(make_backend("torch", model=broken, device="cpu", precision="fp32"))
    with pytest.raises(ValueError, match=r"NaN/Inf logits: the weights may be damaged or the "
                                         r"precision overflows; try fp32"):
        eng.segment(_volume(np.int16, shape=(12, 12, 2)))


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros((4, 4), np.int16), "3D"),
        (np.zeros((4, 0, 3), np.int16), "size 0"),
        (np.full((4, 4, 2), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 2), np.inf, np.float64), "NaN or Inf"),
        (np.full((4, 4, 2), np.inf, np.float16), "NaN or Inf"),
        (np.full((4, 4, 2), np.nan, ">f8"), "NaN or Inf"),
        (torch.full((4, 4, 2), float("nan"), dtype=torch.bfloat16), "NaN or Inf"),
        (np.zeros((4, 4, 2), np.complex64), "unsupported dtype complex64"),
        (np.zeros((4, 4, 2), object), "unsupported dtype object"),
        ([[[1]]], "expected a NumPy array"),
    ],
)
def test_bad_volumes(engine, volume, message):
    with pytest.raises((ValueError, TypeError), match=message):
        engine.segment(volume)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"boxes": (0, 0, 0, 30, 5, 2)}, "outside the volume"),
        ({"boxes": (-1, 0, 0, 3, 5, 2)}, "outside the volume"),
        ({"boxes": {9: (0, 0, 3, 3)}}, "slice 9"),
        ({"boxes": {1: (0, 0, 30, 3)}}, "outside the slice"),
        ({"boxes": {1: (0, 0, 3, 3, 4)}}, "4 numbers"),
        ({"boxes": np.zeros((3, 4))}, "per-slice boxes have 3 rows"),
        ({"boxes": np.zeros((2, 2, 2))}, "got an array of shape"),
        ({"box_mask": np.zeros((8, 8, 3))}, "prompt mask has shape"),
        ({"window": (5, 1)}, "lo < hi"),
        ({"window": 5}, r"two numbers \(lo, hi\), got 5"),
        ({"window": (1, 2, 3)}, "two numbers"),
        ({"normalize": "window"}, "requires window"),
        ({"normalize": "zscore"}, "mode must be one of"),
        ({"axis": 3}, "axis"),
        ({"axis": 1.5}, "axis"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
    ],
)
def test_bad_arguments(engine, kwargs, message):
    with pytest.raises(ValueError, match=message):
        engine.segment(np.zeros((8, 8, 4), np.int16), **kwargs)


def test_empty_prompt_computes_nothing(engine):
    vol = _volume(np.int16, shape=(8, 8, 4))
    got = engine.segment(vol, box_mask=np.zeros(vol.shape, bool))
    assert not got.any() and engine.last_stats.slices == 0


def test_describe_names_backend(engine):
    text = engine.describe()
    assert "backend=torch" in text and "device=cpu" in text

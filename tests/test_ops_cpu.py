"""C++ CPU ops (sam_unet.ops on host arrays) against the reference in sam_unet.transforms."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from conftest import (
    POST_CASES,
    PRE_CASES,
    Case,
    assert_masks_match,
    assert_preprocess_close,
    exact_logits,
    make_view,
    random_logits,
    random_volume,
)
from sam_unet import ops, transforms

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _run_slice(view: np.ndarray, case: Case) -> tuple[int, int]:
    return case.z0, case.count


@pytest.mark.parametrize("case", PRE_CASES, ids=lambda c: c.id)
def test_preprocess_matches_reference(case: Case) -> None:
    _, vol = random_volume(case, seed=zlib.crc32(case.id.encode()))
    z0, n = _run_slice(vol, case)
    ref, ref_sizes = transforms.preprocess_slices(
        vol, z0, n, axis=case.axis, mode=case.mode, window=case.window, dtype=case.out_dtype
    )
    out = np.full((n, 3, 256, 256), np.nan, case.out_dtype)  # poisoned
    sizes = ops.preprocess(vol, out, z0=z0, n=n, axis=case.axis, mode=case.mode, window=case.window)
    assert sizes.dtype == np.int32 and sizes.shape == (n, 2)
    np.testing.assert_array_equal(sizes, ref_sizes)
    assert_preprocess_close(out, ref, case.out_dtype)


@pytest.mark.parametrize("case", POST_CASES, ids=lambda c: c.id)
def test_postprocess_matches_reference(case: Case) -> None:
    h, w = case.hw
    h2, w2 = transforms.resized_shape(h, w)
    n = case.count
    logits = random_logits(n, case.out_dtype, seed=zlib.crc32(case.id.encode()))
    _, out = make_view(case, lambda shape: np.full(shape, 7, np.uint8))  # poisoned
    ops.postprocess(logits, out, z0=case.z0, n=n, axis=case.axis, resized_hw=(h2, w2))
    ax = case.axis % 3
    got = np.moveaxis(out, ax, 0)
    ref = transforms.postprocess_batch(logits, (h2, w2), (h, w))
    exact = exact_logits(logits, (h2, w2), (h, w))
    assert_masks_match(got[case.z0 : case.z0 + n], ref, exact)
    untouched = np.concatenate([got[: case.z0], got[case.z0 + n :]])
    assert (untouched == 7).all(), "slices outside [z0, z0 + n) were written"


def test_postprocess_per_slice_sizes() -> None:
    logits = random_logits(3, np.float32, seed=3)
    out = np.full((50, 40, 3), 7, np.uint8)
    sizes = np.array([[256, 205], [200, 160], [256, 256]], np.int32)
    ops.postprocess(logits, out, z0=0, n=3, axis=-1, resized_hw=sizes)
    for i in range(3):
        ref = transforms.postprocess_batch(logits[i : i + 1], sizes[i], (50, 40))[0]
        exact = exact_logits(logits[i : i + 1], sizes[i], (50, 40))[0]
        assert_masks_match(out[:, :, i], ref, exact)


def test_torch_cpu_tensors() -> None:
    vol = torch.randint(-500, 1500, (40, 30, 5), dtype=torch.int16)
    out = torch.full((5, 3, 256, 256), float("nan"))
    sizes = ops.preprocess(vol, out, z0=0, n=5)
    ref, ref_sizes = transforms.preprocess_slices(vol.numpy(), 0, 5)
    np.testing.assert_array_equal(sizes, ref_sizes)
    assert_preprocess_close(out.numpy(), ref, np.float32)
    logits = torch.randn(5, 1, 64, 64)
    mask = torch.full((40, 30, 5), 7, dtype=torch.uint8)
    ops.postprocess(logits, mask, z0=0, n=5, resized_hw=tuple(sizes[0]))
    ref_m = transforms.postprocess_batch(logits, sizes[0], (40, 30))
    exact = exact_logits(logits.numpy(), sizes[0], (40, 30))
    assert_masks_match(mask.permute(2, 0, 1).numpy(), ref_m, exact)


def test_scale_boxes_matches_reference() -> None:
    boxes = np.array([[0, 0, 40, 50], [3.5, 7.25, 10, 20]], np.float32)
    got = ops.scale_boxes(boxes, (50, 40), (256, 205))
    np.testing.assert_allclose(got, transforms.scale_boxes(boxes, (50, 40), (256, 205)))
    t = ops.scale_boxes(torch.from_numpy(boxes), (50, 40), (256, 205))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32


def test_errors_name_the_problem() -> None:
    vol = np.zeros((8, 9, 4), np.int16)
    out = np.zeros((2, 3, 256, 256), np.float32)
    with pytest.raises(ValueError, match="3D"):
        ops.preprocess(np.zeros((8, 9), np.int16), out, z0=0, n=2)
    with pytest.raises(ValueError, match="empty axis"):
        ops.preprocess(np.zeros((0, 9, 4), np.int16), out, z0=0, n=2)
    with pytest.raises(ValueError, match="unsupported dtype"):
        ops.preprocess(vol.astype(np.int64), out, z0=0, n=2)
    with pytest.raises(ValueError, match="out must have shape"):
        ops.preprocess(vol, out[:1], z0=0, n=2)
    with pytest.raises(ValueError, match="out must be float16 or float32"):
        ops.preprocess(vol, out.astype(np.float64), z0=0, n=2)
    with pytest.raises(ValueError, match="outside"):
        ops.preprocess(vol, out, z0=3, n=2)
    with pytest.raises(ValueError, match="lo < hi"):
        ops.preprocess(vol, out, z0=0, n=2, mode="window", window=(5, 5))
    with pytest.raises(ValueError, match="requires window"):
        ops.preprocess(vol, out, z0=0, n=2, mode="window")
    with pytest.raises(ValueError, match="axis"):
        ops.preprocess(vol, out, z0=0, n=2, axis=3)
    bad = vol.astype(np.float32)
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.preprocess(bad, out, z0=0, n=2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.preprocess(bad, out, z0=0, n=2, mode="window", window=(0, 1))
    ro = np.zeros((2, 3, 256, 256), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        ops.preprocess(vol, ro, z0=0, n=2)
    logits = np.zeros((2, 1, 64, 64), np.float32)
    mask = np.zeros((8, 9, 4), np.uint8)
    with pytest.raises(ValueError, match="logits must have shape"):
        ops.postprocess(logits[:, 0], mask, z0=0, n=2, resized_hw=(256, 228))
    with pytest.raises(ValueError, match="out_volume: dtype must be uint8"):
        ops.postprocess(logits, mask.astype(np.int16), z0=0, n=2, resized_hw=(256, 228))
    with pytest.raises(ValueError, match="resized_hw"):
        ops.postprocess(logits, mask, z0=0, n=2, resized_hw=(0, 228))


# --------------------------------------------------------------------------------------------
# gather_slices / scatter_slices
# --------------------------------------------------------------------------------------------
COPY_DTYPES = (np.uint8, np.bool_, np.int16, np.float16, np.float32, np.int64, np.complex64)
COPY_VIEWS = ("c", "f", "strided", "negative", "transposed", "revz")


def _random_of(dtype, shape, rng) -> np.ndarray:
    dt = np.dtype(dtype)
    raw = rng.integers(0, 256, (*shape, dt.itemsize), dtype=np.uint8)
    a = raw.view(dt).reshape(shape)
    if dt == np.bool_:
        a = raw[..., 0].astype(bool)
    elif dt.kind in "fc":
        a = rng.normal(0, 100, shape).astype(dt)
    return a


def _copy_case(hw, z, axis, view, dtype, seed=0):
    rng = np.random.default_rng(seed)
    case = Case(hw, z, axis, view, dtype)
    return make_view(case, lambda shape: _random_of(dtype, shape, rng))


def _poisoned(shape, dtype) -> np.ndarray:
    a = np.empty(shape, dtype)
    a.view(np.uint8)[...] = 0xAB
    return a


COPY_GRID = [
    (hw, axis, view, dt)
    for i, (hw, dt) in enumerate(
        [((5, 7), d) for d in COPY_DTYPES] + [((17, 33), np.int16), ((1, 1), np.uint8),
                                             ((1, 19), np.float32), ((23, 1), np.int16)]
    )
    for axis in (0, 1, -1)
    for view in COPY_VIEWS
]


@pytest.mark.parametrize(
    "hw,axis,view,dtype", COPY_GRID,
    ids=[f"{np.dtype(d).name}-{h[0]}x{h[1]}-ax{a}-{v}" for h, a, v, d in COPY_GRID],
)
def test_gather_scatter_match_numpy(hw, axis, view, dtype) -> None:
    z = 6
    _, vol = _copy_case(hw, z, axis, view, dtype, seed=len(view) + axis)
    ref = np.moveaxis(vol, axis, 0)
    for z0, n in ((0, z), (2, 3), (5, 1), (3, 0)):
        out = _poisoned((n, *hw), dtype)
        ops.gather_slices(vol, out, z0=z0, n=n, axis=axis)
        np.testing.assert_array_equal(out, ref[z0 : z0 + n])
        # scatter into a poisoned volume of the same layout: the run is written, the rest kept
        _, dst = make_view(Case(hw, z, axis, view, dtype), lambda shape: _poisoned(shape, dtype))
        before = dst.copy()
        ops.scatter_slices(out, dst, z0=z0, n=n, axis=axis)
        got = np.moveaxis(dst, axis, 0)
        np.testing.assert_array_equal(got[z0 : z0 + n], ref[z0 : z0 + n])
        keep = np.moveaxis(before, axis, 0)
        np.testing.assert_array_equal(got[:z0], keep[:z0])
        np.testing.assert_array_equal(got[z0 + n :], keep[z0 + n :])


@pytest.mark.parametrize("view", COPY_VIEWS)
@pytest.mark.parametrize("dtype", (np.uint8, np.int16, np.float32, np.float64))
def test_gather_scatter_large_threaded(view, dtype) -> None:
    """Sizes past the parallel threshold, with ragged tile and register-block edges."""
    hw, z, axis = (203, 131), 37, -1 if view != "transposed" else 1
    _, vol = _copy_case(hw, z, axis, view, dtype, seed=1)
    ref = np.moveaxis(vol, axis, 0)
    out = _poisoned((30, *hw), dtype)
    ops.gather_slices(vol, out, z0=5, n=30, axis=axis)
    np.testing.assert_array_equal(out, ref[5:35])
    _, dst = make_view(Case(hw, z, axis, view, dtype), lambda shape: _poisoned(shape, dtype))
    ops.scatter_slices(out, dst, z0=5, n=30, axis=axis)
    got = np.moveaxis(dst, axis, 0)
    np.testing.assert_array_equal(got[5:35], ref[5:35])
    for rest in (got[:5], got[35:]):
        assert (np.ascontiguousarray(rest).view(np.uint8) == 0xAB).all()


def test_gather_scatter_torch_tensors() -> None:
    vol = torch.randint(-1000, 3000, (40, 30, 12), dtype=torch.int16).permute(2, 0, 1)  # F-like
    out = torch.empty((4, 40, 30), dtype=torch.int16)
    ops.gather_slices(vol, out, z0=3, n=4, axis=0)
    assert torch.equal(out, vol[3:7])
    bf = torch.randn(20, 10, 6).to(torch.bfloat16)
    slab = torch.empty((6, 20, 10), dtype=torch.bfloat16)
    ops.gather_slices(bf, slab, z0=0, n=6, axis=2)
    assert torch.equal(slab, bf.permute(2, 0, 1))
    mask = torch.zeros((20, 10, 6), dtype=torch.uint8)
    ops.scatter_slices((slab > 0).to(torch.uint8), mask, z0=0, n=6, axis=-1)
    assert torch.equal(mask, (bf > 0).to(torch.uint8))
    big_endian = np.arange(60, dtype=">i4").reshape(3, 4, 5)
    be_out = np.zeros((5, 3, 4), ">i4")
    ops.gather_slices(big_endian, be_out, z0=0, n=5, axis=2)
    np.testing.assert_array_equal(be_out, np.moveaxis(big_endian, 2, 0))


def test_gather_scatter_errors() -> None:
    vol = np.zeros((8, 9, 4), np.int16)
    with pytest.raises(ValueError, match="same dtype"):
        ops.gather_slices(vol, np.zeros((4, 8, 9), np.uint16), z0=0, n=4)
    with pytest.raises(ValueError, match=r"C-contiguous \(n, H, W\) = \(4, 8, 9\)"):
        ops.gather_slices(vol, np.zeros((4, 9, 8), np.int16), z0=0, n=4)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.gather_slices(vol, np.zeros((9, 8, 4), np.int16).T, z0=0, n=4)
    with pytest.raises(ValueError, match="outside"):
        ops.gather_slices(vol, np.zeros((4, 8, 9), np.int16), z0=1, n=4)
    with pytest.raises(ValueError, match="3D"):
        ops.gather_slices(vol[0], np.zeros((4, 8, 9), np.int16), z0=0, n=4)
    ro = np.zeros((8, 9, 4), np.int16)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        ops.scatter_slices(np.zeros((4, 8, 9), np.int16), ro, z0=0, n=4)
    with pytest.raises(ValueError, match="NumPy array or a torch CPU tensor"):
        ops.gather_slices([[[1]]], np.zeros((1, 1, 1), np.int64), z0=0, n=1)

"""C++ CPU ops (sam_unet.ops on host arrays) against the reference in sam_unet.transforms."""

from __future__ import annotations

import itertools
import re
import zlib

import numpy as np
import pytest
import torch

from conftest import (
    EXTRA_DTYPES,
    MODES,
    POST_CASES,
    PRE_CASES,
    Case,
    assert_masks_match,
    assert_preprocess_close,
    exact_logits,
    extra_volume,
    make_view,
    random_logits,
    random_volume,
)
from sam_unet import ops, transforms
from sam_unet.runtime import slab_io

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
        ops.preprocess(vol.astype(np.complex64), out, z0=0, n=2)
    with pytest.raises(ValueError, match="out must have shape"):
        ops.preprocess(vol, out[:1], z0=0, n=2)
    with pytest.raises(ValueError, match="out must be float16, bfloat16 or float32"):
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


SLAB_ORDERS = list(itertools.permutations(range(3)))


@pytest.mark.parametrize("order", SLAB_ORDERS, ids=["".join(map(str, o)) for o in SLAB_ORDERS])
@pytest.mark.parametrize("view", ("c", "f", "negative"))
@pytest.mark.parametrize("dtype", (np.uint8, np.int16, np.float64))
def test_gather_scatter_strided_slab(order, view, dtype) -> None:
    """Slabs of any memory order (slab_io.slab_view, as the pinned pipeline lays them out), and
    a flipped one; the buffer past the slab stays poisoned."""
    hw, z, axis = (13, 9), 7, -1
    _, vol = _copy_case(hw, z, axis, view, dtype, seed=sum(order))
    ref = np.moveaxis(vol, axis, 0)
    size = hw[0] * hw[1]
    for z0, n in ((0, z), (2, 3), (6, 1)):
        flat = _poisoned(((n + 2) * size,), dtype)
        out = slab_io.slab_view(flat, n, hw, order)
        ops.gather_slices(vol, out, z0=z0, n=n, axis=axis)
        np.testing.assert_array_equal(out, ref[z0 : z0 + n])
        assert (flat[n * size :].view(np.uint8) == 0xAB).all()
        flipped = slab_io.slab_view(_poisoned((n * size,), dtype), n, hw, order)[:, ::-1]
        ops.gather_slices(vol, flipped, z0=z0, n=n, axis=axis)
        np.testing.assert_array_equal(flipped, ref[z0 : z0 + n])
        _, dst = make_view(Case(hw, z, axis, view, dtype), lambda shape: _poisoned(shape, dtype))
        before = dst.copy()
        ops.scatter_slices(flipped, dst, z0=z0, n=n, axis=axis)
        got, keep = np.moveaxis(dst, axis, 0), np.moveaxis(before, axis, 0)
        np.testing.assert_array_equal(got[z0 : z0 + n], ref[z0 : z0 + n])
        np.testing.assert_array_equal(got[:z0], keep[:z0])
        np.testing.assert_array_equal(got[z0 + n :], keep[z0 + n :])


@pytest.mark.parametrize("layout", ("c", "f", "s"))
@pytest.mark.parametrize("dtype", (np.uint8, np.int16))
def test_gather_scatter_in_volume_order_threaded(layout, dtype) -> None:
    """Past the parallel threshold, into slabs in the volume's own memory order: the row copies
    the pipeline makes (many short rows for a C-order volume sliced along Z)."""
    rng = np.random.default_rng(4)
    c = _random_of(dtype, (203, 131, 37), rng)
    vol = {"c": c, "f": np.asfortranarray(c), "s": np.moveaxis(np.ascontiguousarray(
        np.moveaxis(c, 2, 0)), 0, 2)}[layout]
    order = slab_io.slab_order(vol, 2, 0, 1)
    size = 203 * 131
    flat = _poisoned((31 * size,), dtype)
    out = slab_io.slab_view(flat, 30, (203, 131), order)
    ops.gather_slices(vol, out, z0=5, n=30, axis=2)
    np.testing.assert_array_equal(out, np.moveaxis(c, 2, 0)[5:35])
    assert (flat[30 * size :].view(np.uint8) == 0xAB).all()
    vol_order = slab_io.memory_order(vol.strides, vol.shape)
    dst = _poisoned([c.shape[a] for a in vol_order], dtype).transpose(np.argsort(vol_order))
    ops.scatter_slices(out, dst, z0=5, n=30, axis=2)
    np.testing.assert_array_equal(dst[:, :, 5:35], c[:, :, 5:35])
    assert (np.ascontiguousarray(dst[:, :, :5]).view(np.uint8) == 0xAB).all()


def test_gather_scatter_errors() -> None:
    vol = np.zeros((8, 9, 4), np.int16)
    with pytest.raises(ValueError, match="same dtype"):
        ops.gather_slices(vol, np.zeros((4, 8, 9), np.uint16), z0=0, n=4)
    with pytest.raises(ValueError, match=r"an \(n, H, W\) = \(4, 8, 9\) array"):
        ops.gather_slices(vol, np.zeros((4, 9, 8), np.int16), z0=0, n=4)
    with pytest.raises(ValueError, match=r"\(4, 8, 9\)"):
        ops.gather_slices(vol, np.zeros((4, 8, 9), np.int16).T, z0=0, n=4)
    with pytest.raises(ValueError, match="z0 must be an integer, got 0.9"):
        ops.gather_slices(vol, np.zeros((2, 8, 9), np.int16), z0=0.9, n=2)
    with pytest.raises(ValueError, match="n must be an integer"):
        ops.scatter_slices(np.zeros((2, 8, 9), np.int16), vol, z0=0, n=2.0)
    with pytest.raises(ValueError, match="dtype object cannot be copied"):
        ops.gather_slices(vol.astype(object), np.zeros((4, 8, 9), object), z0=0, n=4)
    cplx = torch.zeros((8, 9, 4), dtype=torch.complex64)
    with pytest.raises(ValueError, match="volume is a lazy conjugate view.*resolve_conj"):
        ops.gather_slices(cplx.conj(), torch.zeros((4, 8, 9), dtype=torch.complex64), z0=0, n=4)
    with pytest.raises(ValueError, match="out_volume is a lazy conjugate view"):
        ops.scatter_slices(torch.zeros((4, 8, 9), dtype=torch.complex64), cplx.conj(), z0=0, n=4)
    with pytest.raises(ValueError, match="out has overlapping strides"):
        ops.gather_slices(vol, torch.zeros((1, 8, 9), dtype=torch.int16).expand(4, 8, 9), z0=0,
                          n=4)
    with pytest.raises(ValueError, match="out_volume has overlapping strides"):
        ops.scatter_slices(np.zeros((4, 8, 9), np.int16),
                           torch.zeros((8, 1, 4), dtype=torch.int16).expand(8, 9, 4), z0=0, n=4)
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


# --------------------------------------------------------------------------------------------
# dtypes beyond the reference's, byte order, bfloat16
# --------------------------------------------------------------------------------------------
EXTRA_CASES = [
    Case((33, 17), 4, (0, 1, 2)[i % 3], COPY_VIEWS[i % len(COPY_VIEWS)], dt, mode, win,
         (np.float32, np.float16)[i % 2], z0=i % 2)
    for i, (dt, (mode, win)) in enumerate(
        (dt, m) for dt in EXTRA_DTYPES for m in MODES
    )
]  # fmt: skip


@pytest.mark.parametrize("case", EXTRA_CASES, ids=lambda c: c.id)
def test_preprocess_extra_dtypes_match_reference(case: Case) -> None:
    assert ops.reads_natively(np.empty(1, case.dtype))
    _, vol = extra_volume(case, seed=zlib.crc32(case.id.encode()))
    n = case.count
    ref, _ = transforms.preprocess_slices(
        vol.astype(EXTRA_DTYPES[np.dtype(case.dtype).str if np.dtype(case.dtype).byteorder == ">"
                                else np.dtype(case.dtype).name]),
        case.z0, n, axis=case.axis, mode=case.mode, window=case.window, dtype=case.out_dtype,
    )  # fmt: skip
    out = np.full((n, 3, 256, 256), np.nan, case.out_dtype)
    ops.preprocess(vol, out, z0=case.z0, n=n, axis=case.axis, mode=case.mode, window=case.window)
    assert_preprocess_close(out, ref, case.out_dtype)


def _bf16_close(got: torch.Tensor, ref: np.ndarray) -> None:
    """bfloat16 outputs: within 1 gray level plus bfloat16 rounding (8 significant bits)."""
    g = got.float().numpy()
    atol = 1.0 / 57.12 + 1e-5
    ok = np.abs(g - ref) <= atol + 2.0**-8 * np.abs(ref)
    assert ok.all(), f"{int((~ok).sum())} values differ; first at {np.argwhere(~ok)[0]}"


def test_bfloat16_volumes_outputs_and_logits() -> None:
    rng = np.random.default_rng(7)
    vol32 = rng.normal(0, 300, (50, 37, 5)).astype(np.float32)
    vol = torch.from_numpy(vol32).to(torch.bfloat16)
    assert ops.reads_natively(vol)
    ref, sizes = transforms.preprocess_slices(vol.float().numpy(), 1, 4, mode="slice-minmax")
    out = torch.full((4, 3, 256, 256), float("nan"), dtype=torch.bfloat16)
    got_sizes = ops.preprocess(vol, out, z0=1, n=4)  # bf16 in, bf16 out
    np.testing.assert_array_equal(got_sizes, sizes)
    _bf16_close(out, ref)
    # a bfloat16 view with negative strides, window mode, float32 out
    view = vol.permute(2, 1, 0)[:, :, 1:].flip(0)
    ref, _ = transforms.preprocess_slices(
        view.float().numpy(), 0, 3, axis=1, mode="window", window=(-200, 300)
    )
    out32 = np.full((3, 3, 256, 256), np.nan, np.float32)
    ops.preprocess(view, out32, z0=0, n=3, axis=1, mode="window", window=(-200, 300))
    assert_preprocess_close(out32, ref, np.float32)
    # ml_dtypes' NumPy bfloat16
    ml_dtypes = pytest.importorskip("ml_dtypes")
    np_bf16 = vol.float().numpy().astype(ml_dtypes.bfloat16)
    assert ops.reads_natively(np_bf16)
    ops.preprocess(np_bf16, out32[:2], z0=3, n=2)
    ref, _ = transforms.preprocess_slices(vol.float().numpy(), 3, 2)
    assert_preprocess_close(out32[:2], ref, np.float32)
    # bfloat16 logits
    logits = torch.from_numpy(random_logits(3, np.float32, seed=2)).to(torch.bfloat16)
    mask = np.full((50, 37, 3), 7, np.uint8)
    ops.postprocess(logits, mask, z0=0, n=3, resized_hw=tuple(sizes[0]))
    lg = logits.float().numpy()
    assert_masks_match(
        np.moveaxis(mask, 2, 0),
        transforms.postprocess_batch(lg, sizes[0], (50, 37)),
        exact_logits(lg, sizes[0], (50, 37)),
    )


def test_reads_natively() -> None:
    for dt in ("u1", "i1", "?", "<i2", ">i2", "<u2", ">u4", "<i8", ">u8", "<f2", ">f4", ">f8"):
        assert ops.reads_natively(np.zeros(1, dt)), dt
    for dt in ("c8", "c16", "U3", "O", "M8[s]", "V4", "f16" if hasattr(np, "float128") else "O"):
        assert not ops.reads_natively(np.zeros(1, dt)), dt
    for t in (torch.int8, torch.bool, torch.int64, torch.float16, torch.bfloat16, torch.float64):
        assert ops.reads_natively(torch.zeros(1, dtype=t)), t
    assert not ops.reads_natively(torch.zeros(1, dtype=torch.complex64))
    assert not ops.reads_natively([1, 2, 3])
    with pytest.raises(ValueError, match="unsupported dtype"):
        ops.preprocess(np.zeros((8, 9, 2), np.complex64), np.zeros((2, 3, 256, 256), np.float32),
                       z0=0, n=2)  # fmt: skip


class _DeviceArray:
    """A CUDA array description (__cuda_array_interface__ v3) of device memory that is never
    touched: the op must refuse it before any CUDA call where CUDA cannot run."""

    def __init__(self, shape, typestr) -> None:
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": typestr, "data": (1 << 40, False), "strides": None,
            "version": 3, "stream": 1,
        }  # fmt: skip


def test_cuda_status_in_words() -> None:
    from sam_unet._native import build_info, cuda_status

    info = build_info()
    status = info["cuda_status"]
    assert cuda_status() == status
    assert isinstance(status, str) and status
    if info["device_count"] > 0:
        assert status == "ok"
        return
    assert status != "ok"
    if info["with_cuda"] and info["cuda_driver_version"] == 0:
        assert status.startswith("no NVIDIA driver was found")
    vol, out = _DeviceArray((8, 9, 2), "<i2"), _DeviceArray((2, 3, 256, 256), "<f4")
    with pytest.raises(RuntimeError, match="CUDA ops cannot run: " + re.escape(status)):
        ops.preprocess(vol, out, z0=0, n=2)

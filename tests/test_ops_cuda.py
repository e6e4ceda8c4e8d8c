"""CUDA ops against the reference: the grid of tests/test_ops_cpu.py on device memory.

Device volumes are described to sam_unet._C through __cuda_array_interface__ (any strides,
negative included, which torch tensors cannot express), through torch CUDA tensors directly,
and through CuPy arrays when CuPy imports. Skipped cleanly where no CUDA device is seen.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

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
    requires_cuda,
)
from sam_unet import ops, transforms

pytestmark = [pytest.mark.gpu, requires_cuda]

torch = pytest.importorskip("torch")


class CudaView:
    """A device array with the layout of a NumPy view, over a device copy of its base's bytes
    (``stream``: the producer stream named in the interface, v3)."""

    def __init__(self, np_base: np.ndarray, np_view: np.ndarray, dev_bytes, stream=None) -> None:
        off = np_view.__array_interface__["data"][0] - np_base.__array_interface__["data"][0]
        self.dev = dev_bytes
        self.__cuda_array_interface__ = {
            "shape": tuple(np_view.shape),
            "typestr": np_view.dtype.str,
            "data": (dev_bytes.data_ptr() + off, False),
            "strides": tuple(np_view.strides),
            "version": 3,
            "stream": stream,
        }


def to_device(np_base: np.ndarray, np_view: np.ndarray) -> CudaView:
    assert np_base.flags.c_contiguous
    dev = torch.from_numpy(np_base.reshape(-1).view(np.uint8)).cuda()
    return CudaView(np_base, np_view, dev)


def from_device(view: CudaView, np_base: np.ndarray) -> None:
    """Copy the device bytes back into np_base (so views of np_base show the result)."""
    torch.cuda.synchronize()
    np_base.reshape(-1).view(np.uint8)[:] = view.dev.cpu().numpy()


def _cupy():
    try:
        import cupy

        return cupy
    except Exception:  # noqa: BLE001
        return None


@pytest.mark.parametrize("case", PRE_CASES, ids=lambda c: c.id)
def test_preprocess_cuda_matches_reference(case: Case) -> None:
    np_base, vol = random_volume(case, seed=zlib.crc32(case.id.encode()))
    n = case.count
    ref, ref_sizes = transforms.preprocess_slices(
        vol, case.z0, n, axis=case.axis, mode=case.mode, window=case.window, dtype=case.out_dtype
    )
    dvol = to_device(np_base, vol)
    tdtype = torch.float16 if np.dtype(case.out_dtype) == np.float16 else torch.float32
    out = torch.full((n, 3, 256, 256), float("nan"), dtype=tdtype, device="cuda")
    sizes = ops.preprocess(
        dvol, out, z0=case.z0, n=n, axis=case.axis, mode=case.mode, window=case.window
    )
    torch.cuda.synchronize()
    np.testing.assert_array_equal(sizes, ref_sizes)
    assert_preprocess_close(out.cpu().numpy(), ref, case.out_dtype)


@pytest.mark.parametrize("case", POST_CASES, ids=lambda c: c.id)
def test_postprocess_cuda_matches_reference(case: Case) -> None:
    h, w = case.hw
    h2, w2 = transforms.resized_shape(h, w)
    n = case.count
    logits = random_logits(n, case.out_dtype, seed=zlib.crc32(case.id.encode()))
    np_base, out = make_view(case, lambda shape: np.full(shape, 7, np.uint8))
    dout = to_device(np_base, out)
    dlogits = torch.from_numpy(logits).cuda()
    ops.postprocess(dlogits, dout, z0=case.z0, n=n, axis=case.axis, resized_hw=(h2, w2))
    from_device(dout, np_base)
    got = np.moveaxis(out, case.axis % 3, 0)
    ref = transforms.postprocess_batch(logits, (h2, w2), (h, w))
    exact = exact_logits(logits, (h2, w2), (h, w))
    assert_masks_match(got[case.z0 : case.z0 + n], ref, exact)
    untouched = np.concatenate([got[: case.z0], got[case.z0 + n :]])
    assert (untouched == 7).all(), "slices outside [z0, z0 + n) were written"


@pytest.mark.parametrize("permute", [False, True])
def test_torch_tensors_and_stream(permute: bool) -> None:
    vol = torch.randint(-500, 1500, (60, 50, 6), dtype=torch.int16)
    dvol = vol.cuda()
    if permute:  # a non-contiguous torch view: slices along the middle axis
        vol, dvol = vol.permute(0, 2, 1), dvol.permute(0, 2, 1)
    ref, ref_sizes = transforms.preprocess_slices(vol.numpy(), 1, 4, axis=-1, dtype=np.float16)
    out = torch.full((4, 3, 256, 256), float("nan"), dtype=torch.float16, device="cuda")
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()  # inputs were written on the default stream
    with torch.cuda.stream(stream):  # default stream argument: the current torch stream
        sizes = ops.preprocess(dvol, out, z0=1, n=4)
    stream.synchronize()
    np.testing.assert_array_equal(sizes, ref_sizes)
    assert_preprocess_close(out.cpu().numpy(), ref, np.float16)

    logits = torch.randn(4, 1, 64, 64, device="cuda")
    mask = torch.full(tuple(dvol.shape), 7, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    ops.postprocess(logits, mask, z0=1, n=4, resized_hw=sizes[0], stream=stream.cuda_stream)
    stream.synchronize()
    H, W = dvol.shape[0], dvol.shape[1]
    got = mask.cpu().numpy().transpose(2, 0, 1)
    ref_m = transforms.postprocess_batch(logits.cpu(), sizes[0], (H, W))
    exact = exact_logits(logits.cpu().numpy(), sizes[0], (H, W))
    assert_masks_match(got[1:5], ref_m, exact)
    assert (got[0] == 7).all() and (got[5] == 7).all()


def test_cupy_arrays() -> None:
    cupy = _cupy()
    if cupy is None:
        pytest.skip("cupy not installed")
    for case in (
        Case((40, 23), 5, 0, "negative", np.float32, "window", (-150.0, 400.0), np.float16, 1, 3),
        Case((33, 17), 4, 2, "strided", np.uint16),
    ):
        np_base, vol = random_volume(case, seed=5)
        _, cvol = make_view(case, lambda shape, b=np_base: cupy.asarray(b))
        n = case.count
        ref, _ = transforms.preprocess_slices(
            vol,
            case.z0,
            n,
            axis=case.axis,
            mode=case.mode,
            window=case.window,
            dtype=case.out_dtype,
        )
        out = cupy.full((n, 3, 256, 256), cupy.nan, dtype=case.out_dtype)
        ops.preprocess(
            cvol, out, z0=case.z0, n=n, axis=case.axis, mode=case.mode, window=case.window
        )
        cupy.cuda.get_current_stream().synchronize()
        assert_preprocess_close(cupy.asnumpy(out), ref, case.out_dtype)
    logits = cupy.asarray(random_logits(3, np.float16, seed=6))
    mask = cupy.full((30, 3, 20), 7, dtype=cupy.uint8)[:, :, ::-1]
    h2, w2 = transforms.resized_shape(30, 20)
    ops.postprocess(logits, mask, z0=0, n=3, axis=1, resized_hw=(h2, w2))
    got = np.moveaxis(cupy.asnumpy(mask), 1, 0)
    lg = cupy.asnumpy(logits)
    assert_masks_match(
        got,
        transforms.postprocess_batch(lg, (h2, w2), (30, 20)),
        exact_logits(lg, (h2, w2), (30, 20)),
    )


def test_mixed_devices_are_rejected() -> None:
    vol = torch.zeros((8, 9, 2), dtype=torch.int16, device="cuda")
    out = np.zeros((2, 3, 256, 256), np.float32)
    with pytest.raises(ValueError, match="same device"):
        ops.preprocess(vol, out, z0=0, n=2)
    boxes = torch.tensor([[0.0, 0.0, 9.0, 8.0]], device="cuda")
    scaled = ops.scale_boxes(boxes, (8, 9), (228, 256))
    assert scaled.is_cuda
    np.testing.assert_allclose(
        scaled.cpu().numpy(), transforms.scale_boxes(boxes.cpu().numpy(), (8, 9), (228, 256))
    )


def test_cuda_status_ok() -> None:
    from sam_unet._native import build_info

    assert build_info()["cuda_status"] == "ok"


EXTRA_CASES = [
    Case((33, 17), 4, i % 3, ("c", "f", "strided", "negative", "transposed")[i % 5], dt, mode,
         win, (np.float32, np.float16)[i % 2], z0=i % 2)
    for i, (dt, (mode, win)) in enumerate((dt, m) for dt in EXTRA_DTYPES for m in MODES)
]  # fmt: skip


@pytest.mark.parametrize("case", EXTRA_CASES, ids=lambda c: c.id)
def test_preprocess_cuda_extra_dtypes(case: Case) -> None:
    np_base, vol = extra_volume(case, seed=zlib.crc32(case.id.encode()))
    n = case.count
    dt = np.dtype(case.dtype)
    ref_dtype = EXTRA_DTYPES[dt.str if dt.byteorder == ">" else dt.name]
    ref, _ = transforms.preprocess_slices(
        vol.astype(ref_dtype), case.z0, n, axis=case.axis, mode=case.mode, window=case.window,
        dtype=case.out_dtype,
    )  # fmt: skip
    tdtype = torch.float16 if np.dtype(case.out_dtype) == np.float16 else torch.float32
    out = torch.full((n, 3, 256, 256), float("nan"), dtype=tdtype, device="cuda")
    ops.preprocess(
        to_device(np_base, vol), out, z0=case.z0, n=n, axis=case.axis, mode=case.mode,
        window=case.window,
    )  # fmt: skip
    torch.cuda.synchronize()
    assert_preprocess_close(out.cpu().numpy(), ref, case.out_dtype)


def test_bfloat16_cuda() -> None:
    vol = torch.randn(50, 37, 5).mul(300).to(torch.bfloat16)
    ref, sizes = transforms.preprocess_slices(vol.float().numpy(), 1, 4)
    out = torch.full((4, 3, 256, 256), float("nan"), dtype=torch.bfloat16, device="cuda")
    ops.preprocess(vol.cuda(), out, z0=1, n=4)
    got = out.float().cpu().numpy()
    ok = np.abs(got - ref) <= 1.0 / 57.12 + 1e-5 + 2.0**-8 * np.abs(ref)
    assert ok.all(), f"{int((~ok).sum())} bfloat16 values off"
    logits = torch.from_numpy(random_logits(3, np.float32, seed=2)).to(torch.bfloat16)
    mask = torch.full((50, 37, 3), 7, dtype=torch.uint8, device="cuda")
    ops.postprocess(logits.cuda(), mask, z0=0, n=3, resized_hw=tuple(sizes[0]))
    lg = logits.float().numpy()
    assert_masks_match(
        mask.cpu().numpy().transpose(2, 0, 1),
        transforms.postprocess_batch(lg, sizes[0], (50, 37)),
        exact_logits(lg, sizes[0], (50, 37)),
    )


def test_waits_for_the_producer_stream() -> None:
    """The volume is written on a slow producer stream that the interface names (v3): the op,
    launched on another stream, must read it only after that write."""
    case = Case((300, 200), 8, 2, "c", np.int16)
    np_base, vol = random_volume(case, seed=11)
    ref, _ = transforms.preprocess_slices(vol, 0, 8)
    producer, consumer = torch.cuda.Stream(), torch.cuda.Stream()
    host = torch.from_numpy(np_base.reshape(-1).view(np.uint8)).pin_memory()
    dev = torch.zeros(host.numel(), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(producer):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of device time before the write lands
        dev.copy_(host, non_blocking=True)
    view = CudaView(np_base, vol, dev, stream=producer.cuda_stream)
    out = torch.full((8, 3, 256, 256), float("nan"), device="cuda")
    ops.preprocess(view, out, z0=0, n=8, stream=consumer.cuda_stream)
    consumer.synchronize()
    assert_preprocess_close(out.cpu().numpy(), ref, np.float32)


def test_scratch_memory_comes_from_torch() -> None:
    """slice-minmax on int16 needs a 64 KiB lookup table per slice: torch's allocator (and so its
    statistics) must see that scratch memory."""
    vol = torch.randint(-1000, 3000, (64, 64, 64), dtype=torch.int16, device="cuda")
    out = torch.empty((64, 3, 256, 256), dtype=torch.float16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    ops.preprocess(vol, out, z0=0, n=64)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before >= 64 * 65536


def test_mixed_sizes_past_one_launch() -> None:
    """Per-slice sizes travel by value in launches of 256 slices: 1100 slices of mixed sizes."""
    n = 1100
    logits = np.random.default_rng(4).normal(0, 3, (n, 1, 64, 64)).astype(np.float32)
    combos = np.array([[256, 200], [7, 256], [256, 1], [131, 256], [256, 256]], np.int32)
    sizes = combos[np.arange(n) % len(combos)]
    got = torch.full((9, 7, n), 7, dtype=torch.uint8, device="cuda")
    ops.postprocess(torch.from_numpy(logits).cuda(), got, z0=0, n=n, resized_hw=sizes)
    masks = got.cpu().numpy().transpose(2, 0, 1)
    for k, hw in enumerate(combos):
        idx = np.arange(k, n, len(combos))
        assert_masks_match(
            masks[idx],
            transforms.postprocess_batch(logits[idx], hw, (9, 7)),
            exact_logits(logits[idx], hw, (9, 7)),
        )

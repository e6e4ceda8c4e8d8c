"""The CUDA ops proven as far as a CPU can: the real launchers and kernels (csrc/cuda) compiled
for the host against a shim of the CUDA runtime (tests/emulation), launches rewritten to host
calls, then compared with the C++ CPU ops over a grid of dtypes, byte orders, modes, layouts,
sizes, partial runs and output dtypes, every output poisoned and guarded; plus the launchers'
stream and memory behaviour from the shim's log, and (slow) volumes past 2**31 voxels.

Preprocess results must equal the CPU op's bit for bit (same Pillow integer arithmetic, same
float32 normalisation); masks must match where the composed logit is not within 1e-3 of 0.
"""

from __future__ import annotations

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
    exact_logits,
    extra_volume,
    make_view,
    random_logits,
    random_volume,
)
from emulation.build import BuildError, build
from emulation.ops_emu import DTYPE_CODES, EmulatedCudaError, EmulatedOps
from sam_unet import ops, transforms

GUARD = 64  # poisoned elements before and after every output buffer
BF16 = DTYPE_CODES["bfloat16"]
VIEWS = ("c", "f", "strided", "negative", "transposed", "revz")


@pytest.fixture(scope="module")
def emu() -> EmulatedOps:
    try:
        lib = build()
    except BuildError as exc:
        if "no C++ compiler" in str(exc):
            pytest.skip(str(exc))
        pytest.fail(f"the CUDA emulation does not compile:\n{exc}")
    emu = EmulatedOps(lib)
    emu.take_log()
    return emu


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def guarded(shape, dtype, poison) -> tuple[np.ndarray, np.ndarray]:
    """(buffer, view): a C-contiguous array of `shape` inside a buffer with GUARD poisoned
    elements either side; the view's own elements are poisoned too."""
    size = int(np.prod(shape))
    buf = np.empty(size + 2 * GUARD, dtype)
    buf.view(np.uint8 if buf.itemsize == 1 else f"u{buf.itemsize}")[...] = poison
    return buf, buf[GUARD : GUARD + size].reshape(shape)


def assert_guards_intact(buf: np.ndarray, poison, what: str) -> None:
    raw = buf.view(np.uint8 if buf.itemsize == 1 else f"u{buf.itemsize}")
    assert (raw[:GUARD] == poison).all() and (raw[-GUARD:] == poison).all(), (
        f"{what}: written outside its bounds"
    )


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.itemsize}")


def emulated_preprocess(emu, vol, *, z0, n, axis, mode, window, out_kind, workspace,
                        bfloat16_volume=False, stream=0) -> np.ndarray:  # fmt: skip
    """Run the emulated CUDA preprocess into a guarded, poisoned output; check the launcher's
    memory behaviour; returns the output (uint16 bits for bfloat16)."""
    out_dtype, out_code, poison = {
        "float32": (np.float32, DTYPE_CODES["float32"], 0x7FC00001),
        "float16": (np.float16, DTYPE_CODES["float16"], 0x7E01),
        "bfloat16": (np.uint16, BF16, 0x7FC1),
    }[out_kind]  # fmt: skip
    buf, out = guarded((n, 3, 256, 256), out_dtype, poison)
    ws_buf = None
    if workspace == "caller":
        nbytes = emu.workspace_bytes(vol, z0=z0, n=n, axis=axis, mode=mode, window=window,
                                     out_code=out_code, bfloat16_volume=bfloat16_volume)
        ws_buf, ws = guarded((nbytes,), np.uint8, 0xAB)
    emu.take_log()
    emu.preprocess(vol, out, z0=z0, n=n, axis=axis, mode=mode, window=window, out_code=out_code,
                   workspace=None if ws_buf is None else ws, stream=stream,
                   bfloat16_volume=bfloat16_volume)  # fmt: skip
    log = emu.take_log()
    assert_guards_intact(buf, poison, "preprocess output")
    assert not any(e.startswith(("mallocAsync", "freeAsync")) for e in log), log
    assert emu.live_allocations() == 0, "scratch memory leaked"
    if ws_buf is not None:
        assert_guards_intact(ws_buf, 0xAB, "workspace")
        assert not any(e.startswith("malloc") for e in log), log
    elif n:  # no allocator given: cudaMalloc, then free only after the stream is done
        kinds = [e.split()[0] for e in log if e.split()[0] in ("malloc", "free",
                                                                "streamSynchronize")]
        assert kinds == ["malloc", "streamSynchronize", "free"], log
    assert all(f"s{stream:x}" in e for e in log if e.startswith("launch")), log
    return out


def cpu_preprocess(vol, *, z0, n, axis, mode, window, out_kind) -> np.ndarray:
    if out_kind == "bfloat16":
        out = torch.full((n, 3, 256, 256), float("nan"), dtype=torch.bfloat16)
        ops.preprocess(vol, out, z0=z0, n=n, axis=axis, mode=mode, window=window)
        return out.view(torch.int16).numpy().view(np.uint16)
    out = np.full((n, 3, 256, 256), np.nan, out_kind)
    ops.preprocess(vol, out, z0=z0, n=n, axis=axis, mode=mode, window=window)
    return out


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    diff = bits(got) != bits(want)
    if diff.any():
        i = tuple(int(v) for v in np.argwhere(diff)[0])
        raise AssertionError(
            f"{int(diff.sum())} of {diff.size} values differ from the CPU op; first at {i}: "
            f"emulated CUDA {got[i]!r} (bits {bits(got)[i]:#x}) CPU {want[i]!r}"
        )


# --------------------------------------------------------------------------------------------
# the preprocess grid
# --------------------------------------------------------------------------------------------
def _pre_grid() -> list[tuple[Case, str, str]]:
    """(case, output dtype, workspace): the CPU grid of tests/conftest.py (all reference dtypes,
    modes, sizes from 1x1 to 1024x300, every axis and layout, partial runs) with bfloat16 outputs
    in every third case, then every extra dtype and byte order x mode."""
    grid = []
    for k, case in enumerate(PRE_CASES):
        out = "bfloat16" if k % 3 == 2 else np.dtype(case.out_dtype).name
        grid.append((case, out, ("caller", "none")[k % 2]))
    k = 0
    for dt in EXTRA_DTYPES:
        for mode, win in MODES:
            case = Case((37, 20), 4, (0, 1, 2, -1)[k % 4], VIEWS[k % len(VIEWS)], dt, mode, win,
                        z0=k % 2, n=3 - k % 2)  # fmt: skip
            out = ("float32", "float16", "bfloat16")[k % 3]
            grid.append((case, out, ("caller", "none")[k % 2]))
            k += 1
    return grid


PRE_GRID = _pre_grid()


@pytest.mark.parametrize(
    "case,out_kind,workspace", PRE_GRID, ids=[f"{c.id}-{o}-ws_{w}" for c, o, w in PRE_GRID]
)
def test_preprocess_matches_cpu(emu, case: Case, out_kind: str, workspace: str) -> None:
    seed = zlib.crc32(case.id.encode())
    extra = np.dtype(case.dtype).name not in {np.dtype(d).name for d in (
        np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64)} or (
        np.dtype(case.dtype).byteorder == ">")  # fmt: skip
    _, vol = (extra_volume if extra else random_volume)(case, seed=seed)
    kw = dict(z0=case.z0, n=case.count, axis=case.axis, mode=case.mode, window=case.window)
    got = emulated_preprocess(emu, vol, out_kind=out_kind, workspace=workspace, **kw)
    assert_same_bits(got, cpu_preprocess(vol, out_kind=out_kind, **kw))


@pytest.mark.parametrize("view", ["c", "negative", "transposed"])
def test_preprocess_bfloat16_volumes(emu, view: str) -> None:
    """bfloat16 volumes (2-byte items tagged bfloat16): the CPU op reads the same values as
    float32, which holds every bfloat16 exactly."""
    case = Case((45, 31), 5, 1, view, np.float32)
    base32, _ = random_volume(case, seed=3)
    base32 = torch.from_numpy(base32).to(torch.bfloat16).float().numpy()  # bfloat16 values
    bf_bits = torch.from_numpy(base32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    views = {}
    for name, base in (("f32", base32), ("bits", bf_bits)):
        views[name] = make_view(case, lambda shape, b=base: b.reshape(shape))[1]
    for mode, win in MODES:
        kw = dict(z0=1, n=3, axis=1, mode=mode, window=win)
        got = emulated_preprocess(emu, views["bits"], out_kind="float16", workspace="caller",
                                  bfloat16_volume=True, **kw)  # fmt: skip
        assert_same_bits(got, cpu_preprocess(views["f32"], out_kind="float16", **kw))


def test_preprocess_on_the_callers_stream(emu) -> None:
    vol = np.random.default_rng(1).integers(0, 4000, (30, 20, 3)).astype(np.uint16)
    for workspace in ("caller", "none"):
        emulated_preprocess(emu, vol, z0=0, n=3, axis=-1, mode="slice-minmax", window=None,
                            out_kind="float32", workspace=workspace, stream=0x5A00)  # fmt: skip


def test_preprocess_refuses_what_cuda_cannot_launch(emu) -> None:
    vol = np.zeros((1, 2, 70000), np.uint8)
    out = np.zeros((65536, 3, 1, 1), np.float32)  # never written: refused before any launch
    with pytest.raises(EmulatedCudaError, match="at most 65535 slices"):
        emu.preprocess(vol, out, z0=0, n=65536, out_code=DTYPE_CODES["float32"])
    small = np.zeros((2, 3, 256, 256), np.float32)
    ws = np.zeros(16, np.uint8)
    with pytest.raises(EmulatedCudaError, match="workspace: 16 bytes given"):
        emu.preprocess(np.zeros((9, 8, 2), np.int16), small, z0=0, n=2, workspace=ws)
    assert emu.live_allocations() == 0


# --------------------------------------------------------------------------------------------
# postprocess
# --------------------------------------------------------------------------------------------
def _post_grid() -> list[tuple[Case, str]]:
    return [(case, "bfloat16" if k % 3 == 2 else np.dtype(case.out_dtype).name)
            for k, case in enumerate(POST_CASES)]  # fmt: skip


POST_GRID = _post_grid()


def _logits(n: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(bits or array for the emulation, float32 values, tensor for the CPU op)."""
    lg = random_logits(n, np.float32, seed=seed)
    if kind == "bfloat16":
        t = torch.from_numpy(lg).to(torch.bfloat16)
        return t.view(torch.int16).numpy().view(np.uint16), t.float().numpy(), t
    arr = lg.astype(kind)
    return arr, arr.astype(np.float32), torch.from_numpy(arr)


@pytest.mark.parametrize("case,logit_kind", POST_GRID, ids=[f"{c.id}-{k}" for c, k in POST_GRID])
def test_postprocess_matches_cpu(emu, case: Case, logit_kind: str) -> None:
    h, w = case.hw
    hw = transforms.resized_shape(h, w)
    n = case.count
    emu_logits, values, cpu_logits = _logits(n, logit_kind, zlib.crc32(case.id.encode()))
    _, got = make_view(case, lambda shape: np.full(shape, 7, np.uint8))
    _, want = make_view(case, lambda shape: np.full(shape, 7, np.uint8))
    code = BF16 if logit_kind == "bfloat16" else None
    emu.postprocess(emu_logits, got, z0=case.z0, n=n, axis=case.axis, resized_hw=hw,
                    logit_code=code)  # fmt: skip
    ops.postprocess(cpu_logits, want, z0=case.z0, n=n, axis=case.axis, resized_hw=hw)
    ax = case.axis % 3
    g, c = np.moveaxis(got, ax, 0), np.moveaxis(want, ax, 0)
    run = slice(case.z0, case.z0 + n)
    assert_masks_match(g[run], c[run], exact_logits(values, hw, (h, w)))
    rest = np.concatenate([g[: case.z0], g[case.z0 + n :]])
    assert (rest == 7).all(), "slices outside [z0, z0 + n) were written"


def test_postprocess_mixed_sizes_over_several_launches(emu) -> None:
    """Per-slice sizes travel by value, 256 slices per launch: 300 slices of 5 sizes."""
    n = 300
    logits = random_logits(n, np.float32, seed=9)
    combos = np.array([[256, 200], [7, 256], [256, 1], [131, 256], [256, 256]], np.int32)
    sizes = combos[np.arange(n) % len(combos)]
    got = np.full((9, 7, n + 2), 7, np.uint8)
    emu.take_log()
    emu.postprocess(logits, got, z0=1, n=n, axis=2, resized_hw=sizes)
    log = emu.take_log()
    assert sum(e.startswith("launch") for e in log) == 2, log
    assert not any(e.startswith(("malloc", "memcpy")) for e in log), log
    want = np.full_like(got, 7)
    ops.postprocess(logits, want, z0=1, n=n, axis=2, resized_hw=sizes)
    g, c = np.moveaxis(got, 2, 0), np.moveaxis(want, 2, 0)
    for k, hw in enumerate(combos):
        idx = 1 + np.arange(k, n, len(combos))
        assert_masks_match(g[idx], c[idx], exact_logits(logits[idx - 1], hw, (9, 7)))
    assert (g[0] == 7).all() and (g[-1] == 7).all()


# --------------------------------------------------------------------------------------------
# streams
# --------------------------------------------------------------------------------------------
def test_waits_for_the_producer_stream(emu) -> None:
    def events(consumer: int, producer: int) -> list[list[str]]:
        emu.take_log()
        emu.stream_wait(consumer, producer)
        return [e.split() for e in emu.take_log()]

    log = events(0x1000, 0x2000)  # two user streams: an event recorded on one, waited on
    assert [e[0] for e in log] == ["eventCreate", "eventRecord", "streamWaitEvent", "eventDestroy"]
    ev = log[0][1]
    assert log[0][2] == "flags=2"  # timing disabled
    assert log[1] == ["eventRecord", ev, "s2000"]
    assert log[2] == ["streamWaitEvent", "s1000", ev]
    assert events(0x1000, 0x1000) == []  # the same stream
    assert events(0, 1) == []  # v3's 1 is the legacy default stream, which stream 0 is
    log = events(0, 2)  # the per-thread default stream is another stream
    assert log[1][2] == "s2" and log[2][1] == "s1"
    log = events(0x1000, 1)
    assert log[1][2] == "s1" and log[2][1] == "s1000"


# --------------------------------------------------------------------------------------------
# why CUDA cannot run, in words (csrc/cuda/device_query.cu against an emulated driver)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "driver,error,count,expected",
    [
        (13000, 0, 1, ""),
        (12020, 35, 0, "CUDA driver 12.2 is older than the runtime 13.0 this module was built "
                       "with; update the driver or build with an older toolkit"),
        (0, 35, 0, "no NVIDIA driver was found (libcuda.so cannot be loaded); install the NVIDIA "
                   "driver to use the CUDA ops (this module's CUDA runtime is 13.0)"),
        (13000, 100, 0, "no CUDA device is visible (driver CUDA 13.0); check nvidia-smi and "
                        "CUDA_VISIBLE_DEVICES"),
        (12080, 0, 0, "no CUDA device is visible (driver CUDA 12.8); check nvidia-smi and "
                      "CUDA_VISIBLE_DEVICES"),
        (13000, 803, 0, "the NVIDIA kernel module and the user-mode driver (libcuda.so, CUDA "
                        "13.0) are different versions; reboot or reinstall the driver"),
    ],
)  # fmt: skip
def test_unavailable_reason_in_words(emu, driver, error, count, expected) -> None:
    emu.set_driver(driver, error, count)
    try:
        assert emu.unavailable_reason() == expected
    finally:
        emu.set_driver(13000, 0, 1)


# --------------------------------------------------------------------------------------------
# past 2**31 voxels (lazily mapped zero pages: only the slices computed use memory)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_volumes_past_2_31_voxels(emu) -> None:
    rng = np.random.default_rng(31)
    far = 2050  # 2050 slices of 1024 x 1024: 2.15e9 voxels; the last starts at byte 2**31 + 2**20
    cases = []
    slice_major = np.zeros((far, 1024, 1024), np.uint8)
    slice_major[far - 2 :] = rng.integers(0, 256, (2, 1024, 1024), dtype=np.uint8)
    cases.append((slice_major, 0))
    fortran = np.zeros((far, 1024, 1024), np.uint8).T  # (1024, 1024, 2049), Fortran order
    fortran[:, :, far - 2 :] = rng.integers(0, 256, (1024, 1024, 2), dtype=np.uint8)
    cases.append((fortran, 2))
    # one slice whose own elements lie more than 2**31 bytes apart (row stride ~2**30)
    base = np.zeros(2**31 + 2**23, np.uint8)
    wide = np.lib.stride_tricks.as_strided(base, (3, 300, 2), (2**30 + 4099, 1, 2**21 + 7))
    wide[...] = rng.integers(0, 256, wide.shape, dtype=np.uint8)
    cases.append((wide, 2))
    for vol, axis in cases:
        z = vol.shape[axis]
        first = (z - 2) * vol.strides[axis]  # byte offset of the run's first slice
        assert first >= 2**31 or vol.strides[0] * 2 > 2**31
        kw = dict(z0=z - 2, n=2, axis=axis, mode="slice-minmax", window=None)
        got = emulated_preprocess(emu, vol, out_kind="float16", workspace="caller", **kw)
        assert_same_bits(got, cpu_preprocess(vol, out_kind="float16", **kw))
    del slice_major, fortran, wide, base
    logits = random_logits(2, np.float32, seed=5)
    hw = transforms.resized_shape(1024, 1024)
    got = np.zeros((far, 1024, 1024), np.uint8)
    emu.postprocess(logits, got, z0=far - 2, n=2, axis=0, resized_hw=hw)
    want = np.zeros((2, 1024, 1024), np.uint8)
    ops.postprocess(logits, want, z0=0, n=2, axis=0, resized_hw=hw)
    assert_masks_match(got[far - 2 :], want, exact_logits(logits, hw, (1024, 1024)))
    assert not got[far - 3].any() and not got[0].any()

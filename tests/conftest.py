"""Shared test helpers: the CUDA skip marker and the pre/postprocessing op test grid.

The grid (``PRE_CASES``, ``POST_CASES``) and the comparison helpers are used by both
tests/test_ops_cpu.py and tests/test_ops_cuda.py (``from conftest import ...``), so the CUDA
ops are held to exactly the CPU ops' cases and tolerances.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pytest

# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when torch sees a CUDA device and sam_unet._C was built with CUDA and sees one."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        from sam_unet._native import build_info

        info = build_info()
        return bool(info.get("with_cuda")) and int(info.get("device_count", 0)) > 0
    except Exception:  # noqa: BLE001 - any import/driver problem means "no CUDA here"
        return False


requires_cuda = pytest.mark.skipif(
    not cuda_available(), reason="needs a CUDA device and sam_unet._C built with CUDA"
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With SAMUNET_REQUIRE_GPU=1 (benchmarks/gpu_check.sh) a skipped test marked gpu is a
    failure: on a GPU machine nothing may pass by not running."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("SAMUNET_REQUIRE_GPU") == "1"
            and item.get_closest_marker("gpu") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"gpu test skipped under SAMUNET_REQUIRE_GPU=1: {reason}"


# --------------------------------------------------------------------------------------------
# the op test grid
# --------------------------------------------------------------------------------------------
DTYPES = (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64)
MODES = (("slice-minmax", None), ("slice-minmax", (-150.0, 400.0)), ("window", (-150.0, 400.0)))
# slice sizes (H, W): 1x1, 1xN, Nx1, odd, portrait, landscape, square, large
SIZES = ((1, 1), (1, 37), (45, 1), (33, 17), (300, 120), (120, 300), (256, 256), (512, 512))
AXES = (0, 1, 2, -1)
VIEWS = ("c", "f", "strided", "negative", "transposed")


@dataclass(frozen=True)
class Case:
    hw: tuple[int, int]
    z: int
    axis: int
    view: str
    dtype: type = np.int16
    mode: str = "slice-minmax"
    window: tuple[float, float] | None = None
    out_dtype: type = np.float32
    z0: int = 0
    n: int | None = None  # None: all slices from z0

    @property
    def id(self) -> str:
        win = "" if self.window is None else "+win"
        return (
            f"{np.dtype(self.dtype).name}-{self.mode}{win}-{self.hw[0]}x{self.hw[1]}x{self.z}"
            f"-ax{self.axis}-{self.view}-{np.dtype(self.out_dtype).name}-z0{self.z0}"
        )

    @property
    def count(self) -> int:
        return self.z - self.z0 if self.n is None else self.n


def _pre_cases() -> list[Case]:
    cases = []
    k = 0
    # every dtype x mode, cycling through sizes, axes, views and output dtypes
    for dt in DTYPES:
        for mode, win in MODES:
            hw = SIZES[k % len(SIZES)]
            if hw == (512, 512):
                hw = (40, 23)  # large sizes only in the few cases below
            cases.append(
                Case(
                    hw,
                    3,
                    AXES[k % len(AXES)],
                    VIEWS[k % len(VIEWS)],
                    dt,
                    mode,
                    win,
                    (np.float32, np.float16)[k % 2],
                    z0=k % 2,
                )
            )
            k += 1
    # every size along every axis (int16, slice-minmax)
    for i, hw in enumerate(SIZES[:-1]):
        for j, ax in enumerate(AXES[:3]):
            cases.append(Case(hw, 2, ax, VIEWS[(i + j) % len(VIEWS)], out_dtype=np.float16))
    # every view kind on an odd size
    for view in VIEWS:
        cases.append(Case((21, 34), 4, 2, view, np.float32, z0=1, n=2))
    # large sizes and long runs: a few combinations only
    cases += [
        Case((512, 512), 2, 2, "c", np.int16),
        Case((512, 512), 2, 0, "negative", np.float32, "window", (-150.0, 400.0), np.float16),
        Case((1024, 300), 2, 1, "f", np.uint16, "slice-minmax", (-150.0, 400.0)),
        Case((300, 1024), 1, -1, "strided", np.int32, out_dtype=np.float16),
        Case((7, 5), 300, 2, "c", np.int16),
        Case((9, 13), 300, 0, "negative", np.float64, "window", (-150.0, 400.0), np.float16),
        Case((33, 17), 300, 2, "f", np.uint8, z0=100, n=150),
        Case((64, 64), 1, 2, "strided", np.float32),
        Case((64, 64), 1, 0, "c", np.int16),
        Case((21, 34), 40, 2, "revz", np.int16, z0=3, n=35),
        Case((21, 34), 40, 2, "revz", np.float32, "window", (-150.0, 400.0), np.float16),
        Case((300, 120), 20, 2, "c", np.uint16, out_dtype=np.float16),
    ]
    return cases


def _post_cases() -> list[Case]:
    cases = []
    sizes = (*SIZES, (1024, 300), (37, 100), (100, 37))
    for i, hw in enumerate(sizes):
        cases.append(
            Case(
                hw,
                2 if max(hw) >= 512 else 3,
                AXES[i % len(AXES)],
                VIEWS[i % len(VIEWS)],
                out_dtype=(np.float32, np.float16)[i % 2],  # the logits dtype
                z0=i % 2,
            )
        )
    for view in VIEWS:
        for ax in AXES[:3]:
            cases.append(Case((23, 31), 4, ax, view, out_dtype=np.float32, z0=1, n=2))
    cases += [
        Case((7, 5), 300, 2, "c"),
        Case((9, 13), 300, 0, "negative", out_dtype=np.float16),
        Case((40, 30), 300, 1, "f", z0=100, n=150),
        Case((512, 512), 4, 2, "transposed"),
        Case((21, 34), 40, 2, "revz", z0=3, n=35),
    ]
    return cases


PRE_CASES = _pre_cases()
POST_CASES = _post_cases()

# dtypes the native preprocess reads beyond the reference's (NumPy dtype strings, ">" big-endian),
# each with the reference dtype that holds the same values exactly
EXTRA_DTYPES = {
    "int8": np.int16, "bool": np.uint8, "uint32": np.float64, "int64": np.float64,
    "uint64": np.float64, "float16": np.float32, ">i2": np.int16, ">u2": np.uint16,
    ">i4": np.int32, ">u4": np.float64, ">i8": np.float64, ">f2": np.float32, ">f4": np.float32,
    ">f8": np.float64,
}  # fmt: skip


def extra_volume(case: Case, seed: int = 0):
    """(base, view) of case.dtype (a key of EXTRA_DTYPES) over its value range (64-bit integers
    up to 2**62, past float64's exact integers, with small values in the first slice), and one
    constant slice."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(case.dtype)

    def make(shape):
        if dt.kind == "b":
            return rng.integers(0, 2, shape).astype(bool)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            lo, hi = max(int(info.min), -(2**62)), min(int(info.max), 2**62)
            return rng.integers(lo, hi, shape, dtype=np.int64, endpoint=True).astype(dt)
        return rng.normal(100.0, 400.0, shape).astype(dt)

    base, view = make_view(case, make)
    ax = case.axis % 3
    if view.shape[ax] > 1:
        idx = [slice(None)] * 3
        idx[ax] = view.shape[ax] - 1
        view[tuple(idx)] = view.flat[0]
        if dt.kind in "iu" and dt.itemsize == 8 and view.shape[ax] > 2:
            idx[ax] = 0  # small values beside huge ones: float64 rounding must match NumPy's
            view[tuple(idx)] = (np.arange(view[tuple(idx)].size) % 7).reshape(
                view[tuple(idx)].shape
            ).astype(dt)
    return base, view


def volume_shape(case: Case) -> tuple[int, int, int]:
    """(X, Y, Z) whose slices along case.axis are case.hw."""
    shape = list(case.hw)
    shape.insert(case.axis % 3, case.z)
    return tuple(shape)


def make_view(case: Case, make):
    """Build (base, view): view has volume_shape(case) and the layout case.view over base.

    ``make(shape)`` creates the base array (NumPy). Returns the base and a NumPy view of it.
    """
    shape = volume_shape(case)
    if case.view == "c":
        base = make(shape)
        return base, base
    if case.view == "f":
        base = make(shape[::-1])
        return base, base.T
    if case.view == "transposed":  # axes permuted: (Y, Z, X) memory order
        base = make((shape[1], shape[2], shape[0]))
        return base, base.transpose(2, 0, 1)
    if case.view == "strided":
        base = make((shape[0] * 2, shape[1], shape[2] * 3))
        return base, base[::2, :, ::3]
    if case.view == "revz":  # the contiguous last axis reversed (stride -1)
        base = make(shape)
        return base, base[:, :, ::-1]
    if case.view == "negative":
        base = make((shape[0], shape[1] * 2, shape[2]))
        return base, base[::-1, ::-2, :]
    raise ValueError(case.view)


def random_volume(case: Case, seed: int = 0):
    """(base, view) of random intensities of case.dtype with a few constant slices."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(case.dtype)

    def make(shape):
        if dt == np.uint8:
            a = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dt == np.uint16:
            a = rng.integers(0, 1200, shape).astype(np.uint16)
        elif dt.kind == "i":
            a = rng.integers(-1024, 3000, shape).astype(dt)
        else:
            a = (rng.normal(100.0, 400.0, shape)).astype(dt)
        return a

    base, view = make_view(case, make)
    if view.shape[case.axis % 3] > 1:  # one constant slice (max == min)
        idx = [slice(None)] * 3
        idx[case.axis % 3] = view.shape[case.axis % 3] - 1
        view[tuple(idx)] = view.flat[0]
    return base, view


def gray_tolerance(out_dtype) -> tuple[float, float]:
    """(atol, rtol) of normalised outputs: 1 gray level / smallest std, plus fp16 rounding."""
    atol = 1.0 / 57.12 + 1e-5
    rtol = 2.0**-10 if np.dtype(out_dtype) == np.float16 else 1e-6
    return atol, rtol


def assert_preprocess_close(got: np.ndarray, ref: np.ndarray, out_dtype) -> None:
    """Normalised outputs within 1 gray level (plus fp16 rounding); NaN poison must be gone."""
    assert got.shape == ref.shape
    atol, rtol = gray_tolerance(out_dtype)
    g = got.astype(np.float32, copy=False)
    r = ref.astype(np.float32, copy=False)
    ok = np.abs(g - r) <= atol + rtol * np.abs(r)  # NaN (unwritten) compares False
    if not ok.all():
        bad = np.argwhere(~ok)
        i = tuple(bad[0])
        raise AssertionError(
            f"{len(bad)} of {ok.size} values differ beyond 1 gray level; first at {i}: "
            f"got {g[i]} expected {r[i]}"
        )


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Dense (out, in) float64 matrix of torch bilinear, align_corners=False, no antialias."""
    m = np.zeros((out_size, in_size))
    scale = in_size / out_size
    for o in range(out_size):
        src = max(scale * (o + 0.5) - 0.5, 0.0)
        i0 = min(int(src), in_size - 1)
        i1 = i0 + (1 if i0 < in_size - 1 else 0)
        lam = src - i0
        m[o, i0] += 1.0 - lam
        m[o, i1] += lam
    return m


@functools.lru_cache(maxsize=64)
def composed_matrix(resized: int, original: int) -> np.ndarray:
    """(original, 64) float64: 64 -> 256 bilinear, crop to `resized`, -> `original` bilinear."""
    up = _bilinear_matrix(64, 256)[:resized]
    return _bilinear_matrix(resized, original) @ up


def exact_logits(logits: np.ndarray, resized_hw, original_hw) -> np.ndarray:
    """The composed postprocessing logit maps (n, H, W) in float64."""
    my = composed_matrix(int(resized_hw[0]), int(original_hw[0]))
    mx = composed_matrix(int(resized_hw[1]), int(original_hw[1]))
    lg = logits.reshape(-1, 64, 64).astype(np.float64)
    return my[None] @ lg @ mx.T[None]


def assert_masks_match(got: np.ndarray, ref: np.ndarray, exact: np.ndarray) -> None:
    """Masks equal except where the exact composed logit is within 1e-3 of 0."""
    assert got.shape == ref.shape == exact.shape
    assert set(np.unique(got).tolist()) <= {0, 1}, "mask values outside {0, 1} (7 = unwritten)"
    diff = got != ref
    bad = diff & (np.abs(exact) >= 1e-3)
    assert not bad.any(), f"{int(bad.sum())} mask voxels differ where |logit| >= 1e-3"


def random_logits(n: int, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lg = rng.normal(0.0, 4.0, (n, 1, 64, 64))
    lg[:, :, ::7, ::5] = 0.0  # exact zeros: threshold is strictly > 0
    return lg.astype(dtype)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op torch thread for a module: small CPU batches are overhead-bound, and on a
    shared 2-core machine two OpenMP threads per process thrash."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

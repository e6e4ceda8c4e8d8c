"""Reference semantics (NumPy/PyTorch) of pre/postprocessing and box scaling.

This module is the specification in code of the pre/postprocessing; the C++ CPU and CUDA ops in
:mod:`sam_unet.ops` are tested against it. It favours clarity over speed, but is vectorised
enough to serve as the baseline of ``benchmarks/bench_ops.py``.

Preprocessing of one slice:

1. optional window ``(lo, hi)``: clip (in float64);
2. intensity to uint8: ``slice-minmax`` -> ``(x - min) / (max - min + 1e-6) * 255`` or ``window``
   -> ``(x - lo) / (hi - lo) * 255``, computed in float64 and truncated;
3. (gray to 3 identical channels: the three channels differ only by their mean/std);
4. resize the longest side to 256 exactly as Pillow's ``Image.resize(..., Image.BILINEAR)``
   resizes 8-bit images (separable triangle filter, support scaled by the downscale factor,
   22-bit fixed-point coefficients, horizontal pass first, each pass rounded to 8 bits);
5. normalise per channel with :data:`PIXEL_MEAN` / :data:`PIXEL_STD` (float32 arithmetic);
6. zero-pad bottom and right to 256x256;
7. NCHW float16 or float32.

Postprocessing of one 64x64 logit map: bilinear (align_corners=False, no antialias) to 256x256,
crop ``[:h', :w']``, bilinear to (H, W), threshold ``> 0`` -> uint8 {0, 1}.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 256
LOGIT_SIZE = 64
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
NORMALIZE_MODES = ("slice-minmax", "window")
SUPPORTED_DTYPES = (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64)
OUTPUT_DTYPES = (np.float16, np.float32)

# Pillow's fixed-point precision for 8-bit resampling (libImaging/Resample.c).
_PRECISION_BITS = 32 - 8 - 2

__all__ = [
    "IMAGE_SIZE",
    "LOGIT_SIZE",
    "NORMALIZE_MODES",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "SUPPORTED_DTYPES",
    "check_volume",
    "normalize_pad",
    "pil_resample_coefficients",
    "postprocess_batch",
    "postprocess_logits",
    "preprocess_slice",
    "preprocess_slices",
    "resize_mask",
    "resize_uint8",
    "resized_shape",
    "scale_boxes",
    "slice_shape",
    "to_uint8",
]


# --------------------------------------------------------------------------------------------
# geometry and validation
# --------------------------------------------------------------------------------------------
def resized_shape(h: int, w: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """Shape after resizing the longest side to ``size``: ``int(h * s + 0.5)``, s = size/max.

    A side that would round to 0 (an extreme aspect ratio such as 1x1000) is kept at 1 pixel,
    since an empty image cannot be resized.
    """
    h, w = int(h), int(w)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    scale = size * 1.0 / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def _check_dtype(array: np.ndarray, name: str) -> None:
    if array.dtype not in [np.dtype(d) for d in SUPPORTED_DTYPES]:
        supported = ", ".join(np.dtype(d).name for d in SUPPORTED_DTYPES)
        raise ValueError(f"{name}: unsupported dtype {array.dtype}; supported are {supported}")


def _check_finite(array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf intensities")


def check_window(mode: str, window: Sequence[float] | None) -> tuple[float, float] | None:
    """Validate a normalisation mode and optional (lo, hi) window; returns the window as floats
    or None. ValueError names the problem."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"mode must be one of {NORMALIZE_MODES}, got {mode!r}")
    if window is None:
        if mode == "window":
            raise ValueError("mode 'window' requires window=(lo, hi)")
        return None
    if len(window) != 2:
        raise ValueError(f"window must be (lo, hi), got {window!r}")
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"window bounds must be finite, got {window!r}")
    if lo >= hi:
        raise ValueError(f"window must have lo < hi, got lo={lo} hi={hi}")
    return lo, hi


def _as_numpy(array, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def check_volume(volume, name: str = "volume") -> np.ndarray:
    """Validate a (X, Y, Z) volume (ndim, empty axes, dtype); returns it as a NumPy array."""
    vol = _as_numpy(volume, name)
    if vol.ndim != 3:
        raise ValueError(f"{name} must be 3D (X, Y, Z), got {vol.ndim}D of shape {vol.shape}")
    if 0 in vol.shape:
        raise ValueError(f"{name} has an empty axis: shape {vol.shape}")
    _check_dtype(vol, name)
    return vol


def _norm_axis(axis: int, ndim: int = 3) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim - 1}], got {axis}")
    return axis % ndim


def slice_shape(volume_shape: Sequence[int], axis: int = -1) -> tuple[int, int]:
    """(H, W) of a slice along ``axis`` (see "Frames" in docs/architecture.md)."""
    ax = _norm_axis(axis, len(volume_shape))
    rest = [int(s) for i, s in enumerate(volume_shape) if i != ax]
    return rest[0], rest[1]


# --------------------------------------------------------------------------------------------
# intensity
# --------------------------------------------------------------------------------------------
def to_uint8(
    image2d, *, mode: str = "slice-minmax", window: Sequence[float] | None = None
) -> np.ndarray:
    """Intensity to 8 bits (float64 arithmetic, truncation), see the module docstring."""
    img = _as_numpy(image2d, "image")
    if img.ndim != 2:
        raise ValueError(f"image must be 2D (H, W), got {img.ndim}D of shape {img.shape}")
    if 0 in img.shape:
        raise ValueError(f"image has an empty axis: shape {img.shape}")
    _check_dtype(img, "image")
    _check_finite(img, "image")
    win = check_window(mode, window)
    x = img.astype(np.float64)
    if win is not None:
        x = np.clip(x, win[0], win[1])
    if mode == "slice-minmax":
        mn = x.min()
        mx = x.max()
        y = (x - mn) / (mx - mn + 1e-6) * 255
    else:
        lo, hi = win  # type: ignore[misc]
        y = (x - lo) / (hi - lo) * 255
    return np.clip(y, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Pillow-exact bilinear resize of 8-bit images
# --------------------------------------------------------------------------------------------
def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


@functools.lru_cache(maxsize=64)
def pil_resample_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear coefficients for one axis, as 8-bit-path fixed-point integers.

    Returns ``(bounds, coeffs)``: bounds int64 (out_size, 2) of (first input index, tap count)
    and coeffs int64 (out_size, ksize) (zeros beyond the tap count), mirroring
    ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` of Pillow's Resample.c operation by
    operation in float64 (so the C++/CUDA ops can reproduce them bit for bit).
    """
    scale = float(in_size) / float(out_size)
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    ss = 1.0 / filterscale
    bounds = np.zeros((out_size, 2), np.int64)
    coeffs = np.zeros((out_size, ksize), np.int64)
    one = float(1 << _PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = _triangle(((np.arange(xmax) + xmin) - center + 0.5) * ss)
        ww = 0.0
        for v in w:  # sequential sum, as in C
            ww += float(v)
        if ww != 0.0:
            w = w / ww
        fixed = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one))
        coeffs[xx, :xmax] = fixed.astype(np.int64)
        bounds[xx] = (xmin, xmax)
    return bounds, coeffs


def _resample_axis0(img: np.ndarray, out_size: int) -> np.ndarray:
    """One Pillow 8-bit pass along axis 0 of a uint8 (N, M) array."""
    in_size = img.shape[0]
    bounds, coeffs = pil_resample_coefficients(in_size, out_size)
    ksize = coeffs.shape[1]
    idx = np.minimum(bounds[:, :1] + np.arange(ksize)[None, :], in_size - 1)  # (out, k)
    acc = np.full((out_size, img.shape[1]), 1 << (_PRECISION_BITS - 1), np.int64)
    src = np.ascontiguousarray(img, dtype=np.int64)
    for k in range(ksize):
        acc += src[idx[:, k], :] * coeffs[:, k : k + 1]
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_uint8(image_u8, shape: Sequence[int]) -> np.ndarray:
    """Resize a uint8 (H, W) image to ``shape`` = (h2, w2) as Pillow's BILINEAR resize does."""
    img = _as_numpy(image_u8, "image")
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W), got {img.dtype} of shape {img.shape}")
    if 0 in img.shape:
        raise ValueError(f"image has an empty axis: shape {img.shape}")
    h2, w2 = int(shape[0]), int(shape[1])
    if h2 <= 0 or w2 <= 0:
        raise ValueError(f"output shape must be positive, got {(h2, w2)}")
    out = img
    if w2 != img.shape[1]:  # horizontal pass first, as Pillow
        out = _resample_axis0(out.T, w2).T
    if h2 != img.shape[0]:
        out = _resample_axis0(out, h2)
    return np.ascontiguousarray(out)


def resize_mask(mask, shape: Sequence[int]) -> np.ndarray:
    """Resize a binary mask with the same resampler (threshold at half): uint8 {0, 1}."""
    m = _as_numpy(mask, "mask")
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W), got shape {m.shape}")
    u8 = (m != 0).astype(np.uint8) * 255
    return (resize_uint8(u8, shape) >= 128).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# normalisation, full preprocessing
# --------------------------------------------------------------------------------------------
def normalize_pad(image_u8, dtype=np.float32) -> np.ndarray:
    """(h2, w2) uint8 -> (3, 256, 256): per-channel (x - mean) / std in float32, zero-padded."""
    img = _as_numpy(image_u8, "image")
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (h, w), got {img.dtype} of shape {img.shape}")
    h, w = img.shape
    if h > IMAGE_SIZE or w > IMAGE_SIZE:
        raise ValueError(f"image {img.shape} is larger than {IMAGE_SIZE}x{IMAGE_SIZE}")
    dtype = np.dtype(dtype)
    if dtype not in [np.dtype(d) for d in OUTPUT_DTYPES]:
        raise ValueError(f"dtype must be float16 or float32, got {dtype}")
    x = img.astype(np.float32)
    out = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for c in range(3):
        out[c, :h, :w] = (x - np.float32(PIXEL_MEAN[c])) / np.float32(PIXEL_STD[c])
    return out.astype(dtype)


def preprocess_slice(
    image2d,
    *,
    mode: str = "slice-minmax",
    window: Sequence[float] | None = None,
    dtype=np.float32,
) -> tuple[np.ndarray, tuple[int, int]]:
    """One slice -> ((3, 256, 256) normalised padded image, (h2, w2))."""
    u8 = to_uint8(image2d, mode=mode, window=window)
    shape = resized_shape(*u8.shape)
    return normalize_pad(resize_uint8(u8, shape), dtype), shape


def preprocess_slices(
    volume,
    z0: int,
    n: int,
    *,
    axis: int = -1,
    mode: str = "slice-minmax",
    window: Sequence[float] | None = None,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Slices [z0, z0 + n) along ``axis`` -> ((n, 3, 256, 256), sizes int32 (n, 2))."""
    vol = check_volume(volume)
    ax = _norm_axis(axis)
    _check_range(z0, n, vol.shape[ax], "volume")
    check_window(mode, window)
    out = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.dtype(dtype))
    sizes = np.empty((n, 2), np.int32)
    for i in range(n):
        index = [slice(None)] * 3
        index[ax] = z0 + i  # a view (np.take would copy, slowly for Fortran-ordered volumes)
        image, shape = preprocess_slice(vol[tuple(index)], mode=mode, window=window, dtype=dtype)
        out[i] = image
        sizes[i] = shape
    return out, sizes


def _check_range(z0: int, n: int, extent: int, name: str) -> None:
    if n < 0 or z0 < 0 or z0 + n > extent:
        raise ValueError(
            f"slices [z0, z0 + n) = [{z0}, {z0 + n}) outside {name}'s axis of length {extent}"
        )


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------
def scale_boxes(boxes, original_hw: Sequence[int], resized_hw: Sequence[int]) -> np.ndarray:
    """(N, 4) boxes (x0, y0, x1, y1) in slice pixels -> the resized frame: x * w'/W, y * h'/H."""
    b = _as_numpy(boxes, "boxes").astype(np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {b.shape}")
    h, w = int(original_hw[0]), int(original_hw[1])
    h2, w2 = int(resized_hw[0]), int(resized_hw[1])
    if min(h, w, h2, w2) <= 0:
        raise ValueError(f"sizes must be positive, got original {(h, w)} resized {(h2, w2)}")
    factor = np.array([w2 / w, h2 / h, w2 / w, h2 / h])
    return (b * factor).astype(np.float32)


# --------------------------------------------------------------------------------------------
# postprocessing
# --------------------------------------------------------------------------------------------
def postprocess_batch(logits, resized_hw: Sequence[int], original_hw: Sequence[int]) -> np.ndarray:
    """(n, 1, 64, 64) logits -> uint8 (n, H, W) masks {0, 1} (torch bilinear, float32)."""
    t = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
    t = t.detach().cpu().to(torch.float32)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or tuple(t.shape[1:]) != (1, LOGIT_SIZE, LOGIT_SIZE):
        raise ValueError(f"logits must be (n, 1, 64, 64), got shape {tuple(t.shape)}")
    h2, w2 = int(resized_hw[0]), int(resized_hw[1])
    h, w = int(original_hw[0]), int(original_hw[1])
    if not (0 < h2 <= IMAGE_SIZE and 0 < w2 <= IMAGE_SIZE):
        raise ValueError(f"resized_hw must be in [1, {IMAGE_SIZE}], got {(h2, w2)}")
    if h <= 0 or w <= 0:
        raise ValueError(f"original_hw must be positive, got {(h, w)}")
    up = F.interpolate(t, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    up = up[..., :h2, :w2]
    out = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
    return (out[:, 0] > 0).numpy().astype(np.uint8)


def postprocess_logits(logits, resized_hw: Sequence[int], original_hw: Sequence[int]) -> np.ndarray:
    """(64, 64) logits -> uint8 (H, W) mask {0, 1}."""
    t = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
    if t.ndim != 2:
        raise ValueError(f"logits must be (64, 64), got shape {tuple(t.shape)}")
    return postprocess_batch(t[None, None], resized_hw, original_hw)[0]

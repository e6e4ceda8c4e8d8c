"""Native (C++ CPU / CUDA) pre/postprocessing ops with the semantics of :mod:`sam_unet.transforms`.

Where the data lives decides where an op runs: NumPy arrays and torch CPU tensors run the C++ CPU
op (OpenMP), torch CUDA tensors and CuPy arrays run the CUDA op on their device, asynchronously on
``stream`` (default: the array library's current stream). Inputs are read in place with any
strides (negative included); outputs are written in place, nothing else is allocated per volume
(CUDA scratch memory comes from the array library's allocator).

:func:`reads_natively` says which volumes :func:`preprocess` reads in place (dtype and byte
order); :func:`gather_slices` / :func:`scatter_slices` move slices between a volume of any layout
and a contiguous slab (the host side of the GPU pipeline). A process forked after these ops ran
on threads runs them serially (GNU OpenMP's thread pool does not survive fork).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sam_unet._native import native
from sam_unet.transforms import check_window, resized_shape

__all__ = [
    "gather_slices",
    "postprocess",
    "preprocess",
    "reads_natively",
    "resized_shape",
    "scale_boxes",
    "scatter_slices",
]

ArrayLike = Any  # numpy.ndarray | torch.Tensor | cupy.ndarray


def _is_torch(x: object) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch")


def _is_cuda(x: object) -> bool:
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "is_cuda", False))


def _native_arg(x: ArrayLike, name: str, *, writable: bool = False) -> tuple[ArrayLike, str]:
    """(what sam_unet._C reads, dtype tag): torch CPU tensors become NumPy views (no copy), CUDA
    arrays pass through; bfloat16 (which NumPy's buffer protocol and torch's
    ``__cuda_array_interface__`` cannot name) travels as 2-byte items tagged "bfloat16"."""
    if _is_torch(x):
        import torch

        if writable and x.requires_grad:
            raise ValueError(f"{name} requires grad; pass a tensor without autograd history")
        t = x.detach()
        tag = "bfloat16" if t.dtype == torch.bfloat16 else ""
        if t.is_cuda:
            return t, tag
        return (t.view(torch.int16) if tag else t).numpy(), tag
    if isinstance(x, np.ndarray) and x.dtype.name == "bfloat16":  # ml_dtypes.bfloat16
        return x.view(np.uint16), "bfloat16"
    return x, ""


def _host_view(x: ArrayLike, name: str, *, writable: bool = False) -> ArrayLike:
    """torch CPU tensors -> NumPy views (no copy); CUDA tensors and NumPy arrays pass through."""
    return _native_arg(x, name, writable=writable)[0]


def _default_stream(*arrays: ArrayLike) -> int:
    for a in arrays:
        if _is_torch(a) and a.is_cuda:
            import torch

            return int(torch.cuda.current_stream(a.device).cuda_stream)
        if type(a).__module__.startswith("cupy"):
            import cupy

            return int(cupy.cuda.get_current_stream().ptr)
    return 0


def _workspace_allocator(array: ArrayLike, stream: int) -> Callable[[int], ArrayLike] | None:
    """For a CUDA array: nbytes -> a uint8 device buffer from the caller's allocator (CuPy's
    pool for CuPy arrays, else torch's caching allocator, so torch's memory statistics count it),
    on the array's device and safe to free once the op's work on ``stream`` is done."""
    if not _is_cuda(array):
        return None
    if type(array).__module__.startswith("cupy"):
        import cupy

        def cupy_alloc(nbytes: int) -> ArrayLike:
            s = cupy.cuda.ExternalStream(stream) if stream else cupy.cuda.Stream.null
            with cupy.cuda.Device(array.device.id), s:  # pooled for the op's own stream
                return cupy.empty(nbytes, dtype=cupy.uint8)

        return cupy_alloc

    def torch_alloc(nbytes: int) -> ArrayLike:  # called once the op has checked the device
        import torch

        if _is_torch(array):
            device = array.device
        else:
            ptr = int(array.__cuda_array_interface__["data"][0])
            device = torch.device("cuda", native().cuda_pointer_device(ptr))
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        if stream != torch.cuda.current_stream(device).cuda_stream:
            # allocated for the current stream but used on another: keep it until that is done
            other = (
                torch.cuda.default_stream(device)
                if stream == 0
                else torch.cuda.ExternalStream(stream, device=device)
            )
            buf.record_stream(other)
        return buf

    return torch_alloc


def preprocess(
    volume: ArrayLike,
    out: ArrayLike,
    *,
    z0: int,
    n: int,
    axis: int = -1,
    mode: str = "slice-minmax",
    window: Sequence[float] | None = None,
    stream: int | None = None,
) -> np.ndarray:
    """Preprocess slices ``[z0, z0 + n)`` along ``axis`` of a (X, Y, Z) volume into ``out``.

    Args:
        volume: NumPy, torch or CuPy volume, any strides, read in place: bool, int8/16/32/64,
            uint8/16/32/64, float16, bfloat16 (torch or ml_dtypes), float32 or float64, either
            byte order (see :func:`reads_natively`). 64-bit integers are read as float64, as
            ``astype(np.float64)`` would.
        out: (n, 3, 256, 256) float16, bfloat16 or float32 C-contiguous buffer on the volume's
            device.
        z0, n: the run of slices.
        axis: slicing axis (negative allowed); see "Frames" in docs/architecture.md.
        mode: ``"slice-minmax"`` or ``"window"`` (which needs ``window``).
        window: optional (lo, hi) clip applied first.
        stream: CUDA stream handle (int) for device arrays; default the current stream of the
            array's library (0 for the legacy default stream). The op waits for the stream an
            array's ``__cuda_array_interface__`` names (v3) before reading it; its scratch memory
            comes from the array library's allocator.

    Returns:
        int32 (n, 2) array of each slice's resized (h', w').

    Raises:
        ValueError: bad shapes, dtypes, ranges, window, or NaN/Inf intensities (CPU only).
        RuntimeError: a CUDA array without a CUDA build or a usable device (the message says
            why: no driver, a driver older than the runtime, no device).
    """
    win = check_window(mode, window)
    if hasattr(volume, "dtype") and not reads_natively(volume):
        raise ValueError(
            f"volume: unsupported dtype {volume.dtype}; supported are bool, int8/16/32/64, "
            "uint8/16/32/64, float16, bfloat16, float32 and float64 (convert it, e.g. to float32)"
        )
    vol, vol_tag = _native_arg(volume, "volume")
    dst, out_tag = _native_arg(out, "out", writable=True)
    if stream is None:
        stream = _default_stream(vol, dst)
    return native().preprocess(
        vol, dst, int(z0), int(n), int(axis), mode, win, int(stream), vol_tag, out_tag,
        _workspace_allocator(vol, int(stream)),
    )  # fmt: skip


def postprocess(
    logits: ArrayLike,
    out_volume: ArrayLike,
    *,
    z0: int,
    n: int,
    axis: int = -1,
    resized_hw: Sequence[int] | np.ndarray,
    stream: int | None = None,
) -> None:
    """Write the uint8 {0, 1} masks of ``logits`` into ``out_volume`` at slices ``[z0, z0+n)``.

    Args:
        logits: (n, 1, 64, 64) float16/bfloat16/float32 logits (NumPy, torch or CuPy).
        out_volume: uint8 (X, Y, Z) volume on the logits' device, any strides; written in place.
        z0, n, axis: the run of slices, as in :func:`preprocess`.
        resized_hw: (h', w') of every slice, or an (n, 2) array of per-slice sizes.
        stream: CUDA stream handle for device arrays (default: the library's current stream).
    """
    if _is_torch(logits) and not logits.is_contiguous():
        logits = logits.contiguous()
    lg, lg_tag = _native_arg(logits, "logits")
    dst, _ = _native_arg(out_volume, "out_volume", writable=True)
    if isinstance(lg, np.ndarray) and not lg.flags.c_contiguous:
        lg = np.ascontiguousarray(lg)
    hw = np.asarray(
        resized_hw.cpu().numpy() if _is_torch(resized_hw) else resized_hw, dtype=np.int32
    )
    if stream is None:
        stream = _default_stream(lg, dst)
    native().postprocess(lg, dst, int(z0), int(n), int(axis), hw, int(stream), lg_tag)


def scale_boxes(
    boxes: ArrayLike, original_hw: Sequence[int], resized_hw: Sequence[int]
) -> ArrayLike:
    """Scale (N, 4) boxes (x0, y0, x1, y1) by (w'/W, h'/H); float32, same library/device."""
    h, w = int(original_hw[0]), int(original_hw[1])
    h2, w2 = int(resized_hw[0]), int(resized_hw[1])
    if min(h, w, h2, w2) <= 0:
        raise ValueError(f"sizes must be positive, got original {(h, w)} resized {(h2, w2)}")
    if _is_cuda(boxes):  # device arrays: elementwise in their own library, no host round trip
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got shape {tuple(boxes.shape)}")
        fx, fy = w2 / w, h2 / h
        if _is_torch(boxes):
            import torch

            factor = torch.tensor([fx, fy, fx, fy], dtype=torch.float64, device=boxes.device)
            return (boxes.double() * factor).float()
        import cupy

        factor = cupy.asarray([fx, fy, fx, fy], dtype=cupy.float64)
        return (boxes.astype(cupy.float64) * factor).astype(cupy.float32)
    if _is_torch(boxes):
        import torch

        return torch.from_numpy(native().scale_boxes(boxes.detach().numpy(), h, w, h2, w2))
    b = np.asarray(boxes)
    if b.ndim != 2 or b.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {b.shape}")
    return native().scale_boxes(b, h, w, h2, w2)


# --------------------------------------------------------------------------------------------
# what preprocess reads in place
# --------------------------------------------------------------------------------------------
_NATIVE_KINDS = frozenset(
    {("b", 1), ("i", 1), ("u", 1), ("i", 2), ("u", 2), ("i", 4), ("u", 4), ("i", 8), ("u", 8),
     ("f", 2), ("f", 4), ("f", 8)}
)  # fmt: skip


def reads_natively(array: ArrayLike) -> bool:
    """Whether :func:`preprocess` reads ``array`` in place: bool, int8/16/32/64,
    uint8/16/32/64, float16, bfloat16, float32 and float64, in either byte order (NumPy,
    torch or CuPy arrays). Anything else (complex, structured, object, datetime) is converted
    per slab by the caller."""
    dtype = getattr(array, "dtype", None)
    if dtype is None:
        return False
    if _is_torch(array):
        import torch

        names = ("uint8", "int8", "bool", "int16", "uint16", "int32", "uint32", "int64",
                 "uint64", "float16", "bfloat16", "float32", "float64")  # fmt: skip
        return any(getattr(torch, name, None) == dtype for name in names)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return False
    return dt.name == "bfloat16" or (dt.kind, dt.itemsize) in _NATIVE_KINDS


# --------------------------------------------------------------------------------------------
# gather / scatter of slices (host side of the GPU pipeline)
# --------------------------------------------------------------------------------------------
def _raw_host(x: ArrayLike, name: str, *, writable: bool = False) -> np.ndarray:
    """A NumPy view of a host array (NumPy or torch CPU tensor) as unsigned integers of its item
    size: the copy moves bytes, so bool, float16, bfloat16 and either byte order all pass."""
    if _is_torch(x):
        if x.is_cuda:
            raise ValueError(
                f"{name} is a CUDA tensor; gather_slices/scatter_slices work on host arrays"
            )
        t = x.detach()
        if t.is_conj() or t.is_neg():
            lazy = "conjugate" if t.is_conj() else "negative"
            raise ValueError(f"{name} is a lazy {lazy} view whose memory does not hold its values; "
                             f"pass x.resolve_conj().resolve_neg()")
        size = t.element_size()
        if size not in (1, 2, 4, 8):
            raise ValueError(f"{name}: item size must be 1, 2, 4 or 8 bytes, got {size}")
        import torch

        unsigned = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
        a = t.view(unsigned).numpy()
    elif isinstance(x, np.ndarray):
        a = x
    elif hasattr(x, "__cuda_array_interface__"):
        raise ValueError(
            f"{name} is a CUDA array; gather_slices/scatter_slices work on host arrays"
        )
    else:
        raise ValueError(
            f"{name} must be a NumPy array or a torch CPU tensor, got {type(x).__name__}"
        )
    size = a.dtype.itemsize
    if a.dtype.hasobject or size not in (1, 2, 4, 8):
        raise ValueError(f"{name}: dtype {a.dtype} cannot be copied as raw items; give an array "
                         "of numbers with 1, 2, 4 or 8 bytes per item")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable (it is a read-only array)")
    return a.view(np.dtype(f"u{size}"))


def _dtype_name(x: ArrayLike) -> str:
    return str(x.dtype).replace("torch.", "")


def _check_same_dtype(a: ArrayLike, an: str, b: ArrayLike, bn: str) -> None:
    da, db = _dtype_name(a), _dtype_name(b)
    if da != db and not (
        isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
    ):
        raise ValueError(f"{an} is {da} but {bn} is {db}; both need the same dtype")


def gather_slices(volume: ArrayLike, out: ArrayLike, *, z0: int, n: int, axis: int = -1) -> None:
    """Copy slices ``[z0, z0 + n)`` along ``axis`` of a (X, Y, Z) host volume into ``out``.

    Args:
        volume: 3D NumPy array or torch CPU tensor, any dtype of 1, 2, 4 or 8 bytes, any strides
            (negative included, e.g. a flipped view).
        out: (n, H, W) array of the same dtype (NumPy or torch, pinned or not), any strides
            whose elements do not overlap, H and W the two remaining axes of the volume in order
            (slice k is ``volume[:, :, z0 + k]`` for axis -1).
        z0, n, axis: the run of slices (integers).

    Multi-threaded C++: row copies where both sides share their contiguous axis (a slab laid out
    in the volume's memory order: ``runtime.slab_io.slab_view``), tiled transposes where they
    do not (a C-contiguous slab of a C-order volume sliced along Z, or of a Fortran-order one).
    """
    vol = _raw_host(volume, "volume")
    dst = _raw_host(out, "out", writable=True)
    _check_same_dtype(volume, "volume", out, "out")
    native().gather_slices(vol, dst, *_run_args(z0, n, axis))


def scatter_slices(
    slab: ArrayLike, out_volume: ArrayLike, *, z0: int, n: int, axis: int = -1
) -> None:
    """The reverse of :func:`gather_slices`: an (n, H, W) ``slab`` of any strides -> slices
    ``[z0, z0 + n)`` along ``axis`` of ``out_volume`` (3D, same dtype, any strides whose
    elements do not overlap). Slices outside the run are left untouched."""
    src = _raw_host(slab, "slab")
    vol = _raw_host(out_volume, "out_volume", writable=True)
    _check_same_dtype(slab, "slab", out_volume, "out_volume")
    native().scatter_slices(src, vol, *_run_args(z0, n, axis))


def _run_args(z0: Any, n: Any, axis: Any) -> tuple[int, int, int]:
    """(z0, n, axis) as Python ints; ValueError for anything that is not an integer (a float
    would be truncated into another run)."""
    out = []
    for name, v in (("z0", z0), ("n", n), ("axis", axis)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
        out.append(int(v))
    return out[0], out[1], out[2]

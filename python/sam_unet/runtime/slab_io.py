"""Moving slabs of slices between a volume and a contiguous (n, H, W) buffer.

- :func:`reads_natively`: can the native preprocess read this volume in place (dtype and byte
  order)?
- :func:`convert_dtype`: the dtype a slab of a volume the ops cannot read is converted to,
  without losing precision (bool -> uint8, int8 -> int16, uint32/int64/uint64 -> float64,
  float16/bfloat16 -> float32, byte-swapped -> the same dtype in native order).
- :func:`gather` / :func:`scatter`: slices ``[z0, z0 + n)`` along ``axis`` <-> an (n, H, W)
  buffer of any strides; host arrays of one dtype go through the native multi-threaded copy
  (``ops.gather_slices`` / ``ops.scatter_slices``), anything else (a dtype conversion, device
  arrays) through the array library, on the current stream.
- :func:`memory_order`, :func:`empty_in_order`, :func:`slab_order`, :func:`slab_view`: buffers
  laid out in a volume's own memory order. A slab whose three axes sit in memory in the order
  the volume's do is filled by row copies at memcpy speed; a C-contiguous (n, H, W) slab of a
  C-order volume sliced along its contiguous Z, or of a Fortran-order one, needs a transpose on
  the host, which the GPU's strided reads make unnecessary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sam_unet import ops

# Lossless conversions of what the native ops do not read (byte-swapped: the same dtype, native)
_CONVERT = {"bool": "uint8", "int8": "int16", "uint32": "float64", "int64": "float64",
            "uint64": "float64", "float16": "float32", "bfloat16": "float32"}


def _name(dtype: Any) -> str:
    return dtype.name if isinstance(dtype, np.dtype) else str(dtype).replace("torch.", "")


def reads_natively(array: Any) -> bool:
    """True when the native preprocess reads ``array`` in place (its dtype and byte order)."""
    return bool(ops.reads_natively(array))


def convert_dtype(dtype: Any) -> np.dtype:
    """The native NumPy dtype a slab of ``dtype`` is converted to (lossless, see above)."""
    name = _name(dtype)
    return np.dtype(_CONVERT.get(name, name))


def torch_dtype(dtype: np.dtype) -> Any:
    """The torch dtype of a NumPy dtype (native byte order)."""
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype.newbyteorder("="))).dtype


def strides_of(array: Any) -> tuple[int, ...]:
    """Strides of a NumPy, torch or CuPy array (units do not matter: only their order is used)."""
    st = array.stride() if callable(getattr(array, "stride", None)) else array.strides
    return tuple(int(s) for s in st)


def memory_order(strides: Sequence[int], shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The axes from outermost to innermost in memory: by decreasing |stride|, axes of length
    1 outermost (their stride means nothing), ties as in C order."""
    shape = shape if shape is not None else (2,) * len(strides)
    return tuple(sorted(range(len(strides)),
                        key=lambda a: (shape[a] > 1, -abs(strides[a]), a)))


_PAGE = 4096


def empty_in_order(shape: Sequence[int], order: Sequence[int], dtype: Any,
                   fill: float = 0) -> np.ndarray:
    """A page-aligned NumPy array of ``shape`` filled with ``fill`` whose axes lie in memory in
    ``order`` (outermost first): a mask volume laid out like the volume it masks."""
    dims = [int(shape[a]) for a in order]
    base = page_aligned_empty(int(np.prod(dims)), dtype).reshape(dims)
    base.fill(fill)
    return base.transpose(np.argsort(order))


def page_aligned_empty(count: int, dtype: Any) -> np.ndarray:
    """An uninitialised 1D NumPy array starting on a page boundary, as pinned buffers do
    (NumPy aligns to 16 bytes): the native copies' rows of whole cache lines then take
    streaming stores."""
    dtype = np.dtype(dtype)
    nbytes = count * dtype.itemsize
    raw = np.empty(nbytes + _PAGE, np.uint8)
    skip = -raw.ctypes.data % _PAGE
    return raw[skip:skip + nbytes].view(dtype)


def slab_order(volume: Any, axis: int, row_axis: int, col_axis: int) -> tuple[int, ...]:
    """The memory order (outermost first) of a slab (n, H, W) laid out like ``volume``'s slices
    along ``axis``: 0 names the slice axis, 1 the rows, 2 the columns."""
    st, shape = strides_of(volume), tuple(volume.shape)
    return memory_order((st[axis], st[row_axis], st[col_axis]),
                        (2, shape[row_axis], shape[col_axis]))


def slab_view(flat: Any, n: int, hw: tuple[int, int], order: Sequence[int]) -> Any:
    """The first ``n * H * W`` elements of a 1D buffer (NumPy or torch) as an (n, H, W) view
    whose axes lie in memory in ``order``: slab ``n`` occupies one contiguous block, so it
    crosses to or from the device in one copy."""
    dims = (n, *hw)
    block = flat[:n * hw[0] * hw[1]].reshape([dims[a] for a in order])
    inverse = tuple(int(a) for a in np.argsort(order))
    return block.permute(*inverse) if hasattr(block, "permute") else block.transpose(inverse)


def _moved(volume: Any, axis: int, z0: int, n: int) -> Any:
    """The (n, H, W) view of slices [z0, z0 + n) along ``axis`` (no copy)."""
    if type(volume).__module__.startswith("torch"):
        return volume.narrow(axis, z0, n).movedim(axis, 0)
    if isinstance(volume, np.ndarray):
        return np.moveaxis(volume, axis, 0)[z0:z0 + n]
    import cupy

    return cupy.moveaxis(volume, axis, 0)[z0:z0 + n]


def gather(volume: Any, out: Any, *, z0: int, n: int, axis: int) -> None:
    """Copy slices [z0, z0 + n) along ``axis`` of ``volume`` into ``out`` (n, H, W), converting
    to ``out``'s dtype. Host arrays (NumPy, torch CPU) or device arrays of one library."""
    if _same_host_dtype(volume, out):
        ops.gather_slices(volume, out, z0=z0, n=n, axis=axis)
        return
    src = _moved(volume, axis, z0, n)
    if type(out).__module__.startswith("torch"):
        import torch

        if not isinstance(src, torch.Tensor):  # NumPy slab into a torch buffer
            src = torch.from_numpy(src.astype(convert_dtype(src.dtype)))
        out.copy_(src)
    elif isinstance(out, np.ndarray):
        if type(src).__module__.startswith("torch"):
            src = src.float() if _name(src.dtype) == "bfloat16" else src
            out[...] = src.numpy()
        else:
            np.copyto(out, src, casting="unsafe")
    else:
        import cupy

        cupy.copyto(out, src, casting="unsafe")


def scatter(slab: Any, out_volume: Any, *, z0: int, n: int, axis: int) -> None:
    """Copy ``slab`` (n, H, W) into slices [z0, z0 + n) along ``axis`` of ``out_volume``."""
    if _same_host_dtype(slab, out_volume):
        ops.scatter_slices(slab, out_volume, z0=z0, n=n, axis=axis)
        return
    dst = _moved(out_volume, axis, z0, n)
    if type(dst).__module__.startswith("torch"):
        dst.copy_(slab)
    elif isinstance(dst, np.ndarray):
        np.copyto(dst, slab.numpy() if hasattr(slab, "numpy") else slab, casting="unsafe")
    else:
        import cupy

        cupy.copyto(dst, slab, casting="unsafe")


def _same_host_dtype(a: Any, b: Any) -> bool:
    """Both host arrays (NumPy or torch CPU) of one native dtype: the native copy applies."""
    for x in (a, b):
        if type(x).__module__.startswith("torch"):
            if x.is_cuda:
                return False
        elif not isinstance(x, np.ndarray) or not x.dtype.isnative:
            return False
    return _name(a.dtype) == _name(b.dtype) and _name(a.dtype) != "bfloat16"

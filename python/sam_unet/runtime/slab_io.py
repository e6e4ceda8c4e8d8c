"""Moving slabs of slices between a volume and a contiguous (n, H, W) buffer.

- :func:`reads_natively`: can the native preprocess read this volume in place (dtype and byte
  order)?
- :func:`convert_dtype`: the dtype a slab of a volume the ops cannot read is converted to,
  without losing precision (bool -> uint8, int8 -> int16, uint32/int64/uint64 -> float64,
  float16/bfloat16 -> float32, byte-swapped -> the same dtype in native order).
- :func:`gather` / :func:`scatter`: slices ``[z0, z0 + n)`` along ``axis`` <-> a C-contiguous
  (n, H, W) buffer; host arrays of one dtype go through the native multi-threaded copy
  (``ops.gather_slices`` / ``ops.scatter_slices``), anything else (a dtype conversion, device
  arrays) through the array library, on the current stream.
"""

from __future__ import annotations

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

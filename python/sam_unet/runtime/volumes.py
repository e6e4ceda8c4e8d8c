"""Accepting volumes of any array kind (NumPy, torch, CuPy) and real numeric dtype, and giving
masks back in kind.

A volume is validated once (3D, no empty axis, a real numeric dtype, finite intensities) and
wrapped in a :class:`VolumeView` that keeps the caller's array itself: nothing is copied here.
What the native ops cannot read in place (see :func:`sam_unet.runtime.slab_io.reads_natively`)
is converted slab by slab by the pipeline, never as a whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# What segment accepts (the pipeline converts the last seven per slab).
ACCEPTED_DTYPES = ("uint8", "int16", "uint16", "int32", "float32", "float64", "int8", "uint32",
                   "int64", "uint64", "float16", "bfloat16", "bool")


@dataclass
class VolumeView:
    """A validated volume.

    kind: "numpy", "torch" or "cupy" (what the caller gave and gets back).
    array: the caller's array itself (NumPy array, torch tensor, CuPy array), any strides.
    device: "cpu" or "cuda:N".
    dtype: the dtype's name without byte order ("int16", "bfloat16", ...).
    """

    kind: str
    array: Any
    device: str
    dtype: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")


def dtype_name(dtype: Any) -> str:
    """'int16', 'bfloat16', ... for a NumPy, torch or CuPy dtype (byte order dropped)."""
    if isinstance(dtype, np.dtype):
        return dtype.name
    return str(dtype).replace("torch.", "")


def as_volume(volume: Any, *, name: str = "volume", check_finite: bool = True) -> VolumeView:
    """Validate ``volume`` (3D, non-empty, real numeric dtype, finite) and wrap it, uncopied.

    Raises ValueError naming ``name`` and the problem; TypeError for unknown array kinds.
    """
    module = type(volume).__module__
    if isinstance(volume, np.ndarray):
        kind, device = "numpy", "cpu"
    elif module.startswith("torch"):
        import torch

        if not isinstance(volume, torch.Tensor):
            raise TypeError(f"{name}: expected an array or tensor, got {type(volume).__name__}")
        kind, device = "torch", str(volume.device)  # "cpu" or "cuda:N"
        if volume.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: tensors on {volume.device} are not supported; use CPU "
                             "or CUDA tensors")
    elif module.startswith("cupy"):
        kind, device = "cupy", f"cuda:{volume.device.id}"
    else:
        raise TypeError(
            f"{name}: expected a NumPy array, torch tensor or CuPy array, got "
            f"{type(volume).__name__}"
        )
    if volume.ndim != 3:
        raise ValueError(f"{name}: expected a 3D volume (X, Y, Z), got {volume.ndim} dimensions "
                         f"with shape {tuple(volume.shape)}")
    if any(int(s) == 0 for s in volume.shape):
        raise ValueError(f"{name}: an axis has size 0 (shape {tuple(volume.shape)})")
    dt = dtype_name(volume.dtype)
    if dt not in ACCEPTED_DTYPES:
        raise ValueError(
            f"{name}: unsupported dtype {dt} (intensities must be real numbers); supported: "
            f"{', '.join(ACCEPTED_DTYPES)}"
        )
    if kind == "torch" and volume.requires_grad:
        volume = volume.detach()
    if check_finite and (dt.startswith("float") or dt == "bfloat16"):
        # min and max propagate NaN and expose +-Inf: two reductions, no volume-sized mask
        lo, hi = float(volume.min()), float(volume.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{name}: contains NaN or Inf intensities")
    return VolumeView(kind, volume, device, dt)


def host_array(a: Any) -> Any:
    """A prompt array (boxes, coarse mask) on the host: NumPy as is, torch/CuPy copied over."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return a


def to_caller_kind(mask: Any, view: VolumeView) -> Any:
    """Return ``mask`` (NumPy for host volumes, torch for device volumes) as the caller's kind:
    NumPy, torch on the volume's device, or CuPy (a zero-copy view of the torch tensor)."""
    if view.kind == "numpy":
        return mask if isinstance(mask, np.ndarray) else mask.cpu().numpy()
    if view.kind == "torch":
        if isinstance(mask, np.ndarray):
            import torch

            return torch.from_numpy(mask)
        return mask
    import cupy

    return cupy.asarray(mask)

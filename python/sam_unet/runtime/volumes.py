"""Accepting volumes of any array kind (NumPy, torch, CuPy) and giving masks back in kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SUPPORTED_DTYPES = ("uint8", "int16", "uint16", "int32", "float32", "float64")


@dataclass
class VolumeView:
    """A validated volume.

    kind: "numpy", "torch" or "cupy" (what the caller gave and gets back).
    array: a NumPy array (host) or a torch tensor (host or CUDA); CuPy is viewed as torch.
    device: "cpu" or "cuda:N".
    """

    kind: str
    array: Any
    device: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")


def _dtype_name(dtype: Any) -> str:
    name = str(dtype)
    return name.replace("torch.", "")


def as_volume(volume: Any, *, name: str = "volume", check_finite: bool = True) -> VolumeView:
    """Validate ``volume`` (3D, non-empty, supported dtype, finite) and wrap it.

    Raises ValueError naming ``name`` and the problem; TypeError for unknown array kinds.
    """
    kind: str
    if isinstance(volume, np.ndarray):
        kind, arr, device = "numpy", volume, "cpu"
    elif type(volume).__module__.startswith("torch"):
        import torch

        if not isinstance(volume, torch.Tensor):
            raise TypeError(f"{name}: expected an array or tensor, got {type(volume).__name__}")
        kind, arr = "torch", volume
        device = "cpu" if volume.device.type == "cpu" else str(volume.device)
        if device == "cuda":
            device = f"cuda:{torch.cuda.current_device()}"
    elif type(volume).__module__.startswith("cupy"):
        import torch

        kind = "cupy"
        arr = torch.as_tensor(volume, device=f"cuda:{volume.device.id}")
        device = f"cuda:{volume.device.id}"
    else:
        raise TypeError(
            f"{name}: expected a NumPy array, torch tensor or CuPy array, got "
            f"{type(volume).__name__}"
        )
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a 3D volume (X, Y, Z), got {arr.ndim} dimensions "
                         f"with shape {tuple(arr.shape)}")
    if any(int(s) == 0 for s in arr.shape):
        raise ValueError(f"{name}: an axis has size 0 (shape {tuple(arr.shape)})")
    dt = _dtype_name(arr.dtype)
    if dt not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{name}: unsupported dtype {dt}; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    if check_finite and dt.startswith("float"):
        # min and max propagate NaN and expose +-Inf: two reductions, no volume-sized mask
        lo, hi = (arr.min(), arr.max())
        finite = bool(np.isfinite(float(lo)) and np.isfinite(float(hi)))
        if not finite:
            raise ValueError(f"{name}: contains NaN or Inf intensities")
    return VolumeView(kind, arr, device)


def empty_mask_like(view: VolumeView) -> Any:
    """A zero uint8 mask of the volume's shape, in the volume's memory (NumPy or torch)."""
    if view.kind == "numpy":
        return np.zeros(view.shape, dtype=np.uint8)
    import torch

    return torch.zeros(view.shape, dtype=torch.uint8, device=view.array.device)


def to_caller_kind(mask: Any, view: VolumeView) -> Any:
    """Return ``mask`` as the caller's array kind: NumPy, torch (same device), or CuPy."""
    if view.kind == "numpy":
        return mask if isinstance(mask, np.ndarray) else mask.cpu().numpy()
    if view.kind == "torch":
        return mask
    import cupy

    return cupy.asarray(mask)

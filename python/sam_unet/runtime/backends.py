"""The backend protocol and :func:`make_backend`.

A backend runs the whole model, ``(images, boxes) -> logits``:

- ``images`` (B, 3, 256, 256) float16 or float32, ``boxes`` (B, 4) float (256 frame), both on
  ``backend.device``;
- returns ``logits`` (B, 1, 64, 64) float32 on ``backend.device``.

Backends that also run SAM's split say so with ``can_split = True`` and offer
``encode(images) -> (image_embeddings (B, C, 16, 16), features (B, C/8, 64, 64))`` (on
``backend.device``, in the backend's compute dtype) and ``decode(image_embeddings, features,
boxes (B, 4)) -> logits (B, 1, 64, 64) float32`` (see :func:`check_split_inputs`).

Batches larger than ``max_batch`` are split. Implementations: ``torch`` (torch_backend.py),
``onnxruntime`` (onnxruntime_backend.py), ``tensorrt`` (tensorrt_backend.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sam_unet.runtime.backend_checks import (  # noqa: F401 - re-exported for callers
    check_images,
    check_inputs,
    check_split_inputs,
    run_in_chunks,
)

if TYPE_CHECKING:
    import torch

BACKENDS = ("torch", "onnxruntime", "tensorrt")
ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}
PRECISIONS = ("fp32", "fp16", "bf16")
_PRECISION_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}


@runtime_checkable
class Backend(Protocol):
    name: str
    device: str
    precision: str
    max_batch: int

    def run(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str: ...


@runtime_checkable
class SplitBackend(Backend, Protocol):
    """A backend with ``can_split = True``: the encoder once per image, the decoder per box."""

    can_split: bool

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, image_embeddings: torch.Tensor, features: torch.Tensor,
               boxes: torch.Tensor) -> torch.Tensor: ...


def normalize_precision(precision: str) -> str:
    p = _PRECISION_ALIASES.get(str(precision).lower(), str(precision).lower())
    if p not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: must be one of {PRECISIONS}")
    return p


def normalize_device(device) -> str:
    """'cpu', 'cuda' -> 'cuda:0', 'cuda:N' (:func:`sam_unet.runtime.devices.resolve_device`
    without the availability check: the backend reports that); anything else is a ValueError."""
    from sam_unet.runtime.devices import resolve_device

    return resolve_device(device, check=False)


def make_backend(
    kind: str,
    *,
    model=None,
    checkpoint: str | os.PathLike | None = None,
    onnx_path: str | os.PathLike | None = None,
    engine_path: str | os.PathLike | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    max_batch: int = 32,
    variant: str | None = None,
    **options,
) -> Backend:
    """Build a backend by name.

    - ``"torch"``: ``model`` (an nn.Module) or ``checkpoint`` (+ optional ``variant``); options:
      ``cuda_graphs`` (default True on CUDA), ``compile`` (torch.compile, default False).
    - ``"onnxruntime"``: ``onnx_path``; options: ``threads`` (intra-op), ``provider``
      ("auto" | "cpu" | "cuda" | "tensorrt").
    - ``"tensorrt"``: ``engine_path`` (device must be CUDA, precision is the engine's).
    """
    name = ALIASES.get(str(kind).lower(), str(kind).lower())
    precision = normalize_precision(precision)
    device = normalize_device(device)
    if max_batch < 1:
        raise ValueError(f"max_batch {max_batch}: must be >= 1")
    if name == "torch":
        from sam_unet.runtime.torch_backend import TorchBackend

        if model is None:
            if checkpoint is None:
                raise ValueError("torch backend: pass model= or checkpoint=")
            from sam_unet.checkpoints import load_model

            model = load_model(checkpoint, variant=variant, map_location="cpu")
        return TorchBackend(
            model, device=device, precision=precision, max_batch=max_batch, **options
        )
    if name == "onnxruntime":
        from sam_unet.runtime.onnxruntime_backend import OnnxRuntimeBackend

        if onnx_path is None:
            raise ValueError("onnxruntime backend: pass onnx_path=")
        return OnnxRuntimeBackend(
            onnx_path, device=device, precision=precision, max_batch=max_batch, **options
        )
    if name == "tensorrt":
        from sam_unet.runtime.tensorrt_backend import TensorRTBackend

        if engine_path is None:
            raise ValueError("tensorrt backend: pass engine_path= (build one with build-engine)")
        return TensorRTBackend(engine_path, device=device, max_batch=max_batch, **options)
    raise ValueError(f"backend {kind!r}: must be one of {BACKENDS}")

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


def check_images(images: torch.Tensor) -> int:
    """Validate an image batch (B, 3, 256, 256) float; returns the batch size."""
    import torch

    if not isinstance(images, torch.Tensor):
        raise TypeError("images must be a torch tensor")
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, 256, 256):
        raise ValueError(f"images: expected shape (B, 3, 256, 256), got {tuple(images.shape)}")
    if images.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"images: unsupported dtype {images.dtype} (float16/float32)")
    return int(images.shape[0])


def check_inputs(images: torch.Tensor, boxes: torch.Tensor) -> int:
    """Validate shapes and dtypes; returns the batch size."""
    import torch

    if not isinstance(boxes, torch.Tensor):
        raise TypeError("images and boxes must be torch tensors")
    check_images(images)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != images.shape[0]:
        raise ValueError(
            f"boxes: expected shape ({images.shape[0]}, 4) to match images, got "
            f"{tuple(boxes.shape)}"
        )
    if not boxes.is_floating_point():
        raise ValueError(f"boxes: expected a float tensor, got {boxes.dtype}")
    return int(images.shape[0])


def check_split_inputs(image_embeddings: torch.Tensor, features: torch.Tensor,
                       boxes: torch.Tensor) -> int:
    """Validate ``decode``'s inputs (4D float embeddings and features of one batch, (B, 4) float
    boxes); returns the batch size."""
    import torch

    for name, t in (("image_embeddings", image_embeddings), ("features", features),
                    ("boxes", boxes)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch tensor")
    b = int(image_embeddings.shape[0])
    if image_embeddings.ndim != 4 or features.ndim != 4 or features.shape[0] != b:
        raise ValueError(
            f"image_embeddings {tuple(image_embeddings.shape)} and features "
            f"{tuple(features.shape)}: expected (B, C, 16, 16) and (B, C/8, 64, 64)"
        )
    if boxes.ndim != 2 or tuple(boxes.shape) != (b, 4):
        raise ValueError(f"boxes: expected shape ({b}, 4), got {tuple(boxes.shape)}")
    return b


def run_in_chunks(fn, images, boxes, max_batch: int):
    """Call ``fn`` on slices of at most ``max_batch`` and concatenate the logits."""
    import torch

    b = images.shape[0]
    if b <= max_batch:
        return fn(images, boxes)
    outs = [fn(images[i : i + max_batch], boxes[i : i + max_batch]) for i in range(0, b, max_batch)]
    return torch.cat(outs, dim=0)


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

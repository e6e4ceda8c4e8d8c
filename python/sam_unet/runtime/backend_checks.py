"""Input checks and batching shared by the backends (torch_backend.py, onnxruntime_backend.py,
tensorrt_backend.py). A module of its own, so backends never import :mod:`backends` (which
imports them): no import circle."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def encode_in_chunks(fn, images, max_batch: int):
    """Call ``fn(images_chunk) -> (embeddings, features)`` on slices of at most ``max_batch``
    images and concatenate both outputs along the batch."""
    import torch

    pairs = [fn(images[i : i + max_batch]) for i in range(0, images.shape[0], max_batch)]
    if len(pairs) == 1:
        return pairs[0]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

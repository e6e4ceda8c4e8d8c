"""One device resolver for the engine, the backends, training and the command line."""

from __future__ import annotations

from typing import Any


def resolve_device(device: Any = None, *, local_rank: int | None = None,
                   check: bool = True) -> str:
    """A device spec -> "cpu" or "cuda:N".

    ``None``/"auto": "cuda:<local_rank or 0>" when torch sees a CUDA device, else "cpu";
    "cuda": "cuda:<local_rank or 0>" (under torchrun each rank takes the GPU of its
    LOCAL_RANK); "cuda:N" and "cpu" as given (a ``torch.device`` is accepted too; case and
    surrounding spaces are ignored).

    ``check``: a CUDA device must exist (``RuntimeError`` naming the fix otherwise). Any other
    spelling is a ``ValueError``.
    """
    import torch

    text = "auto" if device is None else str(device).strip().lower()
    index = int(local_rank or 0)
    if text == "auto":
        return f"cuda:{index}" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda":
        text = f"cuda:{index}"
    if not (text.startswith("cuda:") and text[5:].isdigit()):
        raise ValueError(f"device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if check:
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {text!r} was asked for but torch sees no CUDA device (CPU build of "
                "torch, or no driver); use --device cpu or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if int(text[5:]) >= count:
            raise RuntimeError(
                f"device {text!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
            )
    return text


__all__ = ["resolve_device"]

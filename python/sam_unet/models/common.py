"""Blocks shared by the components: LayerNorm2d, the two-layer MLP block, merging heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor.

    Written as permute + ``F.layer_norm`` + permute so that ONNX (opset >= 17) exports it as a
    single ``LayerNormalization`` node. Numerically the same function as SAM's LayerNorm2d
    (biased variance, ``eps`` inside the square root).

    Input (B, C, H, W) float; output (B, C, H, W), same dtype.
    Parameters: ``weight`` (C,) initialised to 1, ``bias`` (C,) initialised to 0.
    """

    def __init__(self, num_channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.num_channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class MLPBlock(nn.Module):
    """SAM's ``MLPBlock``: ``lin2(act(lin1(x)))``, (..., dim) -> (..., dim) with a hidden width
    ``mlp_dim``.

    The ViT blocks use GELU, the two-way transformer ReLU. The mask decoder's multi-layer ReLU
    head is :class:`~sam_unet.models.mask_decoder.MLPHead`.
    """

    def __init__(self, *, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, hd) -> (B, N, heads * hd).

    Under torch.export the transposed attention output is copied explicitly: SDPA's fake strides
    can make ``contiguous()`` a no-op that later decomposes into an invalid ``view``.
    """
    b, n, t, c = x.shape
    x = x.transpose(1, 2)
    if torch.compiler.is_compiling():
        x = x.clone(memory_format=torch.contiguous_format)
    return x.reshape(b, t, n * c)

"""ResNet residual blocks with torchvision's parameter names."""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """torchvision's projection shortcut (``downsample.0`` conv1x1, ``downsample.1`` BN) when the
    block changes size or width, else None (identity)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """ResNet-18/34 block: conv3x3(stride)-bn-relu-conv3x3-bn + shortcut, relu.

    (B, c_in, H, W) -> (B, planes, H/stride, W/stride). ``downsample`` is
    Sequential(conv1x1, BatchNorm) when the shape changes (keys ``downsample.0/.1``).
    """

    expansion = 1

    def __init__(self, *, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = shortcut(c_in, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50 block (torchvision v1.5: stride on the 3x3 conv).

    conv1x1-bn-relu, conv3x3(stride)-bn-relu, conv1x1(4 * planes)-bn, + shortcut, relu.
    (B, c_in, H, W) -> (B, 4 * planes, H/stride, W/stride).
    """

    expansion = 4

    def __init__(self, *, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(c_in, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

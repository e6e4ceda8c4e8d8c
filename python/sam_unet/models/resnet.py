"""The CNN branch of SAM-UNet: a ResNet without its classifier (torchvision's parameter names),
returning four feature maps, and its residual blocks."""

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


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


class ResNetBranch(nn.Module):
    """ResNet-34/50 (or a narrower variant) as four feature stages, torchvision-compatible.

    ``stage0`` = Sequential(conv 7x7 s2 (0), BatchNorm (1), ReLU (2), MaxPool 3x3 s2 (3)) holds
    torchvision's ``conv1``/``bn1``; ``stage1..4`` are torchvision's ``layer1..4``.

    forward: (B, 3, H, W) float -> [f1, f2, f3, f4] with strides 4, 8, 16, 32 and channels
    ``widths[i] * block.expansion`` (ResNet-34: 64, 128, 256, 512; ResNet-50: 256 ... 2048).
    """

    def __init__(
        self,
        *,
        block: str = "basic",
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        stem_width: int = 64,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {block!r}; expected one of {sorted(BLOCKS)}")
        block_cls = BLOCKS[block]
        self.stage0 = nn.Sequential(
            nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        c_in = stem_width
        self.out_channels: list[int] = []
        stages = []
        for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block_cls(c_in=c_in, planes=planes, stride=stride if j == 0 else 1))
                c_in = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
            self.out_channels.append(c_in)
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage0(x)
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        f4 = self.stage4(f3)
        return [f1, f2, f3, f4]

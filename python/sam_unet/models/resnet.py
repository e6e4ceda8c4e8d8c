"""The CNN branch of SAM-UNet: a ResNet without its classifier, returning four feature maps."""

from __future__ import annotations

import torch
from torch import nn

from .resnet_blocks import BasicBlock, Bottleneck

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

"""A ViTDet-style simple feature pyramid built from one stride-16 map (the SAM embedding).

Each level is the embedding resampled by a fixed factor, then projected to the pyramid's
width: factor 4 is two 2x transposed convolutions (with a norm and GELU between them),
2 is one, 1 keeps the map, 1/2 and 1/4 are max pooling. Every level then goes through a
1x1 convolution and a 3x3 convolution, each followed by a channel layer norm (no biases).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from model.common import LayerNorm2d

EMBEDDING_STRIDE = 16
SCALES = (4.0, 2.0, 1.0, 0.5, 0.25)


def level_strides(scales: tuple[float, ...]) -> tuple[int, ...]:
    """The stride in model-input pixels of each level: 16 / scale."""
    return tuple(int(EMBEDDING_STRIDE / scale) for scale in scales)


def check_scales(scales: tuple[float, ...]) -> None:
    """ValueError unless the scales are distinct, from the known set, largest first."""
    if not scales:
        raise ValueError("detector.scales must name at least one pyramid level")
    if any(scale not in SCALES for scale in scales):
        raise ValueError(f"detector.scales must be taken from {list(SCALES)}, got {list(scales)}")
    if list(scales) != sorted(set(scales), reverse=True):
        raise ValueError(f"detector.scales must be distinct and decreasing, got {list(scales)}")


def _resampler(scale: float, channels: int) -> tuple[nn.Module, int]:
    """The module that resamples the embedding by `scale`, and its output channels."""
    if scale == 4.0:
        half, quarter = channels // 2, channels // 4
        layers = nn.Sequential(
            nn.ConvTranspose2d(channels, half, kernel_size=2, stride=2),
            LayerNorm2d(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
        )
        return layers, quarter
    if scale == 2.0:
        return nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2), channels // 2
    if scale == 1.0:
        return nn.Identity(), channels
    return nn.MaxPool2d(kernel_size=int(1 / scale), stride=int(1 / scale)), channels


class SimpleFeaturePyramid(nn.Module):
    """B x in_channels x h x w (stride 16) -> one B x out_channels x (h*s) x (w*s) map per
    scale s, as an ordered dict keyed by level index ('0' is the finest)."""

    def __init__(
        self, in_channels: int, out_channels: int, scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    ) -> None:
        super().__init__()
        check_scales(scales)
        if in_channels % 4:
            raise ValueError(f"the embedding's channels must be a multiple of 4, got {in_channels}")
        self.scales = scales
        self.out_channels = out_channels
        self.resample = nn.ModuleList()
        self.project = nn.ModuleList()
        for scale in scales:
            resampler, channels = _resampler(scale, in_channels)
            self.resample.append(resampler)
            self.project.append(
                nn.Sequential(
                    nn.Conv2d(channels, out_channels, kernel_size=1, bias=False),
                    LayerNorm2d(out_channels),
                    nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                    LayerNorm2d(out_channels),
                )
            )

    @property
    def strides(self) -> tuple[int, ...]:
        return level_strides(self.scales)

    def forward(self, embedding: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        levels: OrderedDict[str, torch.Tensor] = OrderedDict()
        for index, (resample, project) in enumerate(zip(self.resample, self.project)):
            levels[str(index)] = project(resample(embedding))
        return levels

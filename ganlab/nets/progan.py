"""ProGAN generator and discriminator (Karras, Aila, Laine & Lehtinen 2018), grown from 4x4 to the image size.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.nets.layers import MinibatchStdDev, check_positive

START = 4  # the paper's first resolution
HE_GAIN = math.sqrt(2.0)  # He et al. 2015, for (leaky) ReLU layers


def resolutions_up_to(size: int, key: str = "data.image_size") -> list[int]:
    """[4, 8, ..., size]; one clear message unless size is a power of two >= 4."""
    if not isinstance(size, int) or size < START or size & (size - 1):
        raise GanlabError(f"{key}={size}: ProGAN grows from 4x4 by doubling, so the image size must be a power "
                          "of two >= 4 (e.g. data.image_size=32 for MNIST)")
    return [START * 2**i for i in range(int(math.log2(size // START)) + 1)]


class EqualizedLinear(nn.Module):
    """Linear layer with the equalized learning rate: weight ~ N(0, 1), used as weight * gain / sqrt(fan_in)."""

    def __init__(self, in_features: int, out_features: int, gain: float = HE_GAIN) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    """Conv2d (stride 1, 'same' padding) with the equalized learning rate: scale = gain / sqrt(in * k * k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = HE_GAIN,
                 padding: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2 if padding is None else padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit average square: x / sqrt(mean_c(x^2) + eps) (paper 4.2)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


def widths_for(sizes: Sequence[int], base_width: int, max_width: int) -> list[int]:
    """Feature maps per resolution: base_width at the largest, doubling per halving, capped at max_width."""
    return [min(max_width, base_width * (sizes[-1] // s)) for s in sizes]


def _conv_act(in_ch: int, out_ch: int, kernel: int, pixel_norm: bool, padding: int | None = None) -> list[nn.Module]:
    return [EqualizedConv2d(in_ch, out_ch, kernel, padding=padding), nn.LeakyReLU(0.2),
            *([PixelNorm()] if pixel_norm else [])]


def _check_image_shape(owner: str, key: str, shape: Sequence[int]) -> tuple[tuple[int, int, int], list[int]]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] < 1 or shape[1] != shape[2]:
        raise GanlabError(f"{owner}: {key} must be square (C, H, H) with C >= 1, got {list(shape)}")
    return shape, resolutions_up_to(shape[1])  # type: ignore[return-value]


class _Progressive(nn.Module):
    """The stage bookkeeping G and D share: the resolutions, and the index of one of them."""

    resolutions: list[int]

    def stage_of(self, resolution: int) -> int:
        if resolution not in self.resolutions:
            raise GanlabError(f"{type(self).__name__}: resolution {resolution} is not one of {self.resolutions}")
        return self.resolutions.index(resolution)


class ProGANGenerator(_Progressive):
    """z -> PixelNorm -> dense to 4x4 -> conv3x3 (block 0); per doubling: upsample, conv3x3, conv3x3; each
    conv followed by leaky ReLU and PixelNorm. ``to_rgb[i]``: a linear 1x1 conv at resolution i."""

    def __init__(self, latent_dim: int, out_shape: Sequence[int], base_width: int = 16, max_width: int = 512) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(name, latent_dim=latent_dim, base_width=base_width, max_width=max_width)
        self.out_shape, self.resolutions = _check_image_shape(name, "out_shape", out_shape)
        self.latent_dim, self.num_classes = latent_dim, 0
        self.widths = widths_for(self.resolutions, base_width, max_width)
        w0 = self.widths[0]
        # The paper's first layer is a 4x4 transposed conv of the 1x1 latent, i.e. a dense layer (gain sqrt(2)/4
        # as in the authors' code), reshaped to w0 x 4 x 4.
        first = nn.Sequential(PixelNorm(), EqualizedLinear(latent_dim, w0 * START * START, gain=HE_GAIN / 4),
                              nn.Unflatten(1, (w0, START, START)), nn.LeakyReLU(0.2), PixelNorm(),
                              *_conv_act(w0, w0, 3, pixel_norm=True))
        self.blocks = nn.ModuleList([first])
        for w_in, w_out in zip(self.widths, self.widths[1:]):
            self.blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             *_conv_act(w_in, w_out, 3, True), *_conv_act(w_out, w_out, 3, True)))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(w, self.out_shape[0], 1, gain=1.0) for w in self.widths)

    def forward(self, z: Tensor, y: Tensor | None = None, resolution: int | None = None,
                alpha: float = 1.0) -> Tensor:
        """Images (N, C, resolution, resolution); the full size when resolution is None."""
        name = type(self).__name__
        if y is not None:
            raise GanlabError(f"{name} is unconditional (num_classes=0) but labels y were passed")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise GanlabError(f"{name} expects z of shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        stage = self.stage_of(self.resolutions[-1] if resolution is None else resolution)
        h = self.blocks[0](z)
        for block in self.blocks[1:stage]:
            h = block(h)
        if stage == 0:
            return self.to_rgb[0](h)
        old = F.interpolate(self.to_rgb[stage - 1](h), scale_factor=2, mode="nearest") if alpha < 1 else None
        if old is not None and alpha <= 0:
            return old  # the new block gets no gradient (None, not zero) until its fade starts
        new = self.to_rgb[stage](self.blocks[stage](h))
        return new if old is None else torch.lerp(old, new, alpha)


class ProGANDiscriminator(_Progressive):
    """``from_rgb[i]``: 1x1 conv at resolution i; per halving: conv3x3, conv3x3, average pool; last block at
    4x4: minibatch std channel, conv3x3, conv4x4 (valid, i.e. dense), linear -> one score (no sigmoid)."""

    def __init__(self, in_shape: Sequence[int], base_width: int = 16, max_width: int = 512,
                 minibatch_std_group_size: int = 4) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(name, base_width=base_width, max_width=max_width)
        self.in_shape, self.resolutions = _check_image_shape(name, "in_shape", in_shape)
        self.num_classes, self.pack = 0, 1
        self.widths = widths_for(self.resolutions, base_width, max_width)
        w0 = self.widths[0]
        last = nn.Sequential(MinibatchStdDev(minibatch_std_group_size), *_conv_act(w0 + 1, w0, 3, False),
                             *_conv_act(w0, w0, START, False, padding=0), nn.Flatten(),
                             EqualizedLinear(w0, 1, gain=1.0))
        self.blocks = nn.ModuleList([last])
        for w_out, w_in in zip(self.widths, self.widths[1:]):
            self.blocks.append(nn.Sequential(*_conv_act(w_in, w_in, 3, False), *_conv_act(w_in, w_out, 3, False),
                                             nn.AvgPool2d(2)))
        self.from_rgb = nn.ModuleList(nn.Sequential(EqualizedConv2d(self.in_shape[0], w, 1), nn.LeakyReLU(0.2))
                                      for w in self.widths)

    def forward(self, x: Tensor, y: Tensor | None = None, alpha: float = 1.0) -> Tensor:
        """Scores (N,) for images at any grown resolution (taken from x's size)."""
        name = type(self).__name__
        if y is not None:
            raise GanlabError(f"{name} is unconditional (num_classes=0) but labels y were passed")
        if x.dim() != 4 or x.shape[1] != self.in_shape[0] or x.shape[2] != x.shape[3] \
                or x.shape[2] not in self.resolutions:
            raise GanlabError(f"{name} expects (N, {self.in_shape[0]}, R, R) images with R in {self.resolutions}, "
                              f"got {tuple(x.shape)}")
        stage = self.stage_of(x.shape[2])
        old = self.from_rgb[stage - 1](F.avg_pool2d(x, 2)) if stage and alpha < 1 else None
        if old is not None and alpha <= 0:
            h = old  # the new block gets no gradient (None, not zero) until its fade starts
        else:
            h = self.blocks[stage](self.from_rgb[stage](x)) if stage else self.from_rgb[0](x)
            if old is not None:
                h = torch.lerp(old, h, alpha)
        for block in reversed(self.blocks[1:stage]):
            h = block(h)
        return self.blocks[0](h).squeeze(1)

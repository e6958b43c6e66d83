"""A small CNN image classifier whose last layer is global average pooling + one linear head.

That shape is deliberate: with logits = W · GAP(A) + b, the class activation map of class c is
sum_k W[c, k] A_k (Zhou et al. 2016), so CAM and Grad-CAM apply without changing the network; and
GAP(A) (`embed`) is a compact feature space for FID/KID/precision/recall of generated images.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab.errors import GanlabError

MIN_SIZE = 8  # with the default strides an 8x8 input still ends as 2x2 maps (8 -> 4 -> 2 -> 2)
# How a stride-2 stage halves the resolution. A strided 3x3 conv covers every other pixel twice, so every
# backward pass (guided backprop, deconvnet) carries a 2-pixel checkerboard; a stride-1 conv followed by
# 2x2 average pooling (whose backward spreads evenly over each 2x2 block) or a binomial blur before the
# subsampling (Zhang 2019) does not. Max pooling routes each gradient to one pixel of four; its anti-aliased
# form (dense 2x2 max, then blur-subsample; Zhang's MaxBlurPool) keeps the max's input-dependent "switches",
# which are what lets a deconvnet's backward pass see the image at all.
DOWNSAMPLING = ("stride", "avgpool", "blurpool", "maxpool", "maxblurpool")


class BlurPool(nn.Module):
    """Anti-aliased subsampling by 2 (Zhang 2019): a fixed [1, 2, 1] x [1, 2, 1] / 16 blur per channel,
    then every other pixel. Hand-written: torch has no blur-pool layer; kornia's would be a dependency for
    three lines. Reflect padding keeps border pixels from darkening; output size is ceil(H / 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :]) / 16
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=x.shape[1])


def conv_block(in_channels: int, out_channels: int, stride: int, downsample: str = "stride") -> nn.Sequential:
    """Conv 3x3 - BatchNorm - ReLU [- pooling]; the conv has no bias because BatchNorm's shift replaces it.

    Pooling modules own no parameters, so every mode has the same state_dict keys."""
    pooled = stride == 2 and downsample != "stride"
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1 if pooled else stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pooled:
        layers.append({"avgpool": lambda: nn.AvgPool2d(2, ceil_mode=True),
                       "maxpool": lambda: nn.MaxPool2d(2, ceil_mode=True),
                       "blurpool": lambda: BlurPool(out_channels),
                       "maxblurpool": lambda: nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, stride=1),
                                                            BlurPool(out_channels))}[downsample]())
    return nn.Sequential(*layers)


def pixel_coordinates(x: Tensor) -> Tensor:
    """(N, 2, H, W): each pixel's row and column, scaled to [-1, 1] (pixel centres, so symmetric)."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * (2 / h) - 1
    cols = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * (2 / w) - 1
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return grid.expand(x.shape[0], 2, h, w)


class CNNClassifier(nn.Module):
    """Images in [-1, 1], (N, C, H, W) with H, W >= 8 -> class logits (N, num_classes).

    Stage i is a Conv-BN-ReLU block of `widths[i]` channels with stride `strides[i]`; a stride-2 stage
    downsamples as `downsample` says (one mode of DOWNSAMPLING for all, or one per stage; "stride" is the
    default so that runs saved before
    the option existed rebuild as they were trained). A 28x28 digit ends as 7x7 maps with the configs'
    strides: fine enough for class activation maps.

    `coords` appends two channels of pixel coordinates in [-1, 1] to the input (CoordConv, Liu et al.
    2018). Convolutions and global average pooling are blind to position, so without them a net cannot
    learn "tumour in the centre 32x32" (PCam's label) apart from "tumour anywhere"; attributions still
    refer to the image channels only.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128),
                 strides: Sequence[int] = (2, 2, 1), downsample: str | Sequence[str] = "stride",
                 coords: bool = False) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or not widths or any(w < 1 for w in widths):
            raise GanlabError(f"CNNClassifier: need in_channels >= 1, num_classes >= 2 and positive widths, got "
                             f"in_channels={in_channels}, num_classes={num_classes}, widths={list(widths)}")
        if len(strides) != len(widths) or any(s not in (1, 2) for s in strides):
            raise GanlabError(f"CNNClassifier: strides needs one entry of 1 or 2 per width, got "
                             f"widths={list(widths)}, strides={list(strides)}")
        modes = [downsample] * len(widths) if isinstance(downsample, str) else [str(d) for d in downsample]
        if len(modes) != len(widths) or any(m not in DOWNSAMPLING for m in modes):
            raise GanlabError(f"CNNClassifier: downsample must be one of {', '.join(DOWNSAMPLING)} or a list of "
                             f"them, one per width; got {downsample!r} for widths={list(widths)}")
        self.in_channels, self.num_classes, self.coords = int(in_channels), int(num_classes), bool(coords)
        channels = [self.in_channels + 2 * self.coords, *(int(w) for w in widths)]
        self.features = nn.Sequential(*(
            conv_block(c_in, c_out, int(stride), mode)
            for c_in, c_out, stride, mode in zip(channels[:-1], channels[1:], strides, modes)
        ))
        self.num_features: int = channels[-1]
        self.head = nn.Linear(self.num_features, self.num_classes)

    def feature_maps(self, x: Tensor) -> Tensor:
        """The last conv block's activations A, (N, K, h, w): what class activation maps are made of."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or min(x.shape[-2:]) < MIN_SIZE:
            raise GanlabError(f"CNNClassifier expects images (N, {self.in_channels}, H, W) with H, W >= {MIN_SIZE}, "
                             f"got {tuple(x.shape)}")
        if self.coords:
            x = torch.cat([x, pixel_coordinates(x)], dim=1)
        return self.features(x)

    def embed(self, x: Tensor) -> Tensor:
        """Global average pooling of the feature maps, (N, K): the input of `head`."""
        return self.feature_maps(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))

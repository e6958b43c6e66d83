"""Does a map show the image's structure or the network's? The 2-pixel checkerboard share and the
attribution mass on the image's own strokes. All functions work per image and return (N,) tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab.errors import GanlabError


def _images(owner: str, x: Tensor) -> Tensor:
    if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise GanlabError(f"{owner}: expected (N, C, H, W) with even H and W (the 2-pixel period is the FFT's "
                          f"Nyquist row and column), got {tuple(x.shape)}")
    return x.detach().double().sum(dim=1)


def nyquist_share(x: Tensor) -> Tensor:
    """Share of an image's (or map's) variance at the 2-pixel period, (N,), in [0, 1].

    Channels are summed and the mean removed; the share is the power of the 2-D FFT on its Nyquist row
    and column (period 2 along H or along W) over the total power. A checkerboard scores 1, white noise
    about (H + W - 1) / (H W), a smooth image ~0. A constant image has no variance: NaN.
    """
    plane = _images("nyquist_share", x)
    plane = plane - plane.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(plane).abs().square()
    h, w = plane.shape[-2:]
    at_nyquist = power[:, h // 2, :].sum(dim=1) + power[:, :, w // 2].sum(dim=1) - power[:, h // 2, w // 2]
    total = power.flatten(1).sum(dim=1)
    return torch.where(total > 0, at_nyquist / total, torch.full_like(total, float("nan")))


def checkerboard_ratio(maps: Tensor, inputs: Tensor) -> float:
    """How much more of the maps' variance sits at the 2-pixel period than of the inputs' own: the mean
    Nyquist share of the maps over that of the inputs (ratios of means: one smooth input cannot blow it up).

    ~1: the maps have the images' texture; an edge map of MNIST digits scores 7-8; a strided-conv
    checkerboard tens to hundreds.
    """
    if maps.shape[0] != inputs.shape[0] or maps.shape[-2:] != inputs.shape[-2:]:
        raise GanlabError(f"checkerboard_ratio: maps {tuple(maps.shape)} and inputs {tuple(inputs.shape)} "
                          "must have the same N, H, W")
    return float(torch.nanmean(nyquist_share(maps)) / torch.nanmean(nyquist_share(inputs)))


def stroke_mask(inputs: Tensor, threshold: float = 0.0, dilation: int = 1) -> Tensor:
    """Pixels brighter than ``threshold`` (any channel; 0 = mid-grey in [-1, 1]), grown by ``dilation``
    pixels in every direction, (N, 1, H, W) bool: where an MNIST digit's strokes are."""
    if inputs.dim() != 4 or dilation < 0:
        raise GanlabError(f"stroke_mask: need inputs (N, C, H, W) and dilation >= 0, got {tuple(inputs.shape)}, "
                          f"{dilation}")
    bright = (inputs.detach() > threshold).any(dim=1, keepdim=True).float()
    if dilation:
        bright = F.max_pool2d(bright, 2 * dilation + 1, stride=1, padding=dilation)
    return bright > 0


def mass_in_mask(maps: Tensor, mask: Tensor) -> Tensor:
    """Fraction of the positive attribution mass (channels summed) inside ``mask`` (N, 1, H, W), (N,);
    NaN for an image whose map has no positive mass."""
    if maps.dim() != 4 or mask.shape != (maps.shape[0], 1, *maps.shape[-2:]):
        raise GanlabError(f"mass_in_mask: maps (N, C, H, W) and mask (N, 1, H, W) must match, got "
                          f"{tuple(maps.shape)} and {tuple(mask.shape)}")
    positive = maps.detach().sum(dim=1, keepdim=True).clamp(min=0)
    total = positive.flatten(1).sum(dim=1)
    inside = (positive * mask.to(positive.dtype)).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total, torch.full_like(total, float("nan")))

"""PatchGAN discriminator (Isola et al. 2017): a fully convolutional D that scores overlapping patches.

Each output pixel judges one receptive field of the input (70x70 pixels at n_layers=3, the "70x70
PatchGAN" of pix2pix and CycleGAN), so D models high-frequency texture while the L1 or cycle term takes
care of low frequencies; it runs on any image size. Layout: C64 (no norm) - C128 - C256 (stride 2) -
C512 (stride 1) - 1-channel conv (stride 1), all 4x4 kernels, LeakyReLU(0.2); widths cap at 8x.

For pix2pix, D is conditioned on the input image: it sees cat(a, b) along channels, so `cond_channels`
(the input a's channels) are added to `in_channels` (the judged image b's channels).
"""

from __future__ import annotations

from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.nets.unet import check_channels, norm_layer


def patchgan_receptive_field(n_layers: int) -> int:
    """Receptive field of one output pixel: n_layers stride-2 4x4 convs, then two stride-1 4x4 convs."""
    rf = 1
    for stride in reversed([2] * n_layers + [1, 1]):
        rf = rf * stride + (4 - stride)
    return rf


class PatchGANDiscriminator(nn.Module):
    """(N, cond_channels + in_channels, H, W) -> (N, 1, h, w) patch logits (or scores, for LSGAN)."""

    def __init__(self, in_channels: int, base_width: int = 64, n_layers: int = 3, norm: str = "batch",
                 cond_channels: int = 0) -> None:
        super().__init__()
        name = type(self).__name__
        check_channels(name, in_channels=in_channels, base_width=base_width)
        if not isinstance(n_layers, int) or n_layers < 1 or not isinstance(cond_channels, int) or cond_channels < 0:
            raise GanlabError(f"{name}: need n_layers >= 1 and cond_channels >= 0, got {n_layers!r}, {cond_channels!r}")
        self.in_channels, self.cond_channels, self.n_layers = in_channels, cond_channels, n_layers
        self.receptive_field = patchgan_receptive_field(n_layers)
        bias = norm != "batch"
        width = base_width
        layers: list[nn.Module] = [nn.Conv2d(in_channels + cond_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        for n in range(1, n_layers + 1):
            stride = 2 if n < n_layers else 1
            out = base_width * min(2 ** n, 8)
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=bias), norm_layer(norm, out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        channels = self.in_channels + self.cond_channels
        if x.dim() != 4 or x.shape[1] != channels:
            raise GanlabError(f"{type(self).__name__}: expected (N, {channels}, H, W) "
                              f"({self.cond_channels} conditioning + {self.in_channels} image channels), "
                              f"got {tuple(x.shape)}")
        return self.net(x)

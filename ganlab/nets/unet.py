"""The pix2pix U-Net generator (Isola et al. 2017, "U-Net-256" at depth 8).

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError

NORMS = ("batch", "instance", "none")


def norm_layer(norm: str, width: int) -> nn.Module:
    """BatchNorm (pix2pix's default), affine-free InstanceNorm (CycleGAN's) or nothing."""
    if norm == "batch":
        return nn.BatchNorm2d(width)
    if norm == "instance":
        return nn.InstanceNorm2d(width)
    if norm == "none":
        return nn.Identity()
    raise GanlabError(f"norm={norm!r} is not supported; expected one of {', '.join(NORMS)}")


def check_channels(owner: str, **channels: int) -> None:
    bad = {k: v for k, v in channels.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise GanlabError(f"{owner}: channel counts and widths must be positive ints, got "
                         + ", ".join(f"{k}={v!r}" for k, v in bad.items()))


class UNetGenerator(nn.Module):
    """(N, in_channels, S, S) -> (N, out_channels, S, S) in [-1, 1]; S must be divisible by 2**depth."""

    def __init__(self, in_channels: int, out_channels: int, base_width: int = 64, depth: int = 8,
                 norm: str = "batch", dropout: float = 0.5, full_res_head: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        check_channels(name, in_channels=in_channels, out_channels=out_channels, base_width=base_width)
        if not isinstance(depth, int) or depth < 2:
            raise GanlabError(f"{name}: depth must be an int >= 2, got {depth!r}")
        if not 0 <= dropout < 1:
            raise GanlabError(f"{name}: dropout must lie in [0, 1), got {dropout}")
        norm_layer(norm, 1)  # validates the name
        self.in_channels, self.out_channels, self.depth = in_channels, out_channels, depth
        bias = norm != "batch"  # a BatchNorm right after the conv has its own shift
        widths = [base_width * 2 ** min(i, 3) for i in range(depth)]

        self.down = nn.ModuleList()
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(in_channels if i == 0 else widths[i - 1], width, 4, 2, 1, bias=bias or i == 0))
            if 0 < i < depth - 1:
                layers.append(norm_layer(norm, width))
            self.down.append(nn.Sequential(*layers))

        # up[i] maps level i's features (its input: the innermost map, or decoder + skip concatenated) to
        # level i - 1's size and width; up[0] makes the image.
        self.up = nn.ModuleList()
        for i in range(depth):
            in_width = widths[i] if i == depth - 1 else 2 * widths[i]
            if i == 0 and not full_res_head:
                layers = [nn.ReLU(), nn.ConvTranspose2d(in_width, out_channels, 4, 2, 1), nn.Tanh()]
            elif i == 0:  # up to full resolution as features; the head below makes the image
                layers = [nn.ReLU(), nn.ConvTranspose2d(in_width, widths[0], 4, 2, 1, bias=bias),
                          norm_layer(norm, widths[0]), nn.ReLU()]
            else:
                layers = [nn.ReLU(), nn.ConvTranspose2d(in_width, widths[i - 1], 4, 2, 1, bias=bias),
                          norm_layer(norm, widths[i - 1])]
                if 4 <= i < depth - 1 and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        # full_res_head: the paper's last layer upsamples from half resolution, so edges one or two pixels wide
        # (skin, skull tables) are drawn by a stride-2 transposed conv. This head sees the input itself, at
        # full resolution, beside the decoder's features: two 3x3 convs that place such edges pixel-exactly.
        self.head = nn.Sequential(
            nn.Conv2d(widths[0] + in_channels, widths[0], 3, 1, 1, bias=bias), norm_layer(norm, widths[0]),
            nn.ReLU(), nn.Conv2d(widths[0], out_channels, 3, 1, 1), nn.Tanh()) if full_res_head else None

    def forward(self, x: Tensor) -> Tensor:
        image, size, step = x, x.shape[-1], 2 ** self.depth
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-2] != size or size % step:
            raise GanlabError(f"{type(self).__name__}: expected (N, {self.in_channels}, S, S) with S divisible by "
                             f"2**depth = {step}, got {tuple(x.shape)}; change data.image_size or model depth")
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = skips.pop()
        for i in range(self.depth - 1, -1, -1):
            x = self.up[i](x)
            if i > 0:
                x = torch.cat([x, skips[i - 1]], dim=1)
        return x if self.head is None else self.head(torch.cat([x, image], dim=1))

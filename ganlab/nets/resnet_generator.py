"""CycleGAN's ResNet generator (Zhu et al. 2017, after Johnson et al. 2016).

c7s1-w, d2w, d4w, n_blocks x R4w, u2w, uw, c7s1-out: a 7x7 stem with reflection padding, two stride-2
downsamplings, residual blocks at 1/4 resolution (reflection-padded 3x3 convs, so borders do not darken),
two transposed-conv upsamplings, a 7x7 output conv and Tanh. The residual blocks keep the input's
structure by default and learn the change of appearance, which is what unpaired translation needs.
"""

from __future__ import annotations

from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.nets.unet import check_channels, norm_layer


class ResidualBlock(nn.Module):
    """x + [pad, conv3, norm, ReLU, pad, conv3, norm](x)."""

    def __init__(self, width: int, norm: str, bias: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=bias), norm_layer(norm, width), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=bias), norm_layer(norm, width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(N, in_channels, S, S) -> (N, out_channels, S, S) in [-1, 1]; S must be divisible by 4."""

    def __init__(self, in_channels: int, out_channels: int, base_width: int = 64, n_blocks: int = 9,
                 norm: str = "instance") -> None:
        super().__init__()
        name = type(self).__name__
        check_channels(name, in_channels=in_channels, out_channels=out_channels, base_width=base_width)
        if not isinstance(n_blocks, int) or n_blocks < 0:
            raise GanlabError(f"{name}: n_blocks must be an int >= 0, got {n_blocks!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        bias = norm != "batch"
        w = base_width
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, w, 7, bias=bias),
                                   norm_layer(norm, w), nn.ReLU()]
        for _ in range(2):  # downsample: d2w, d4w
            layers += [nn.Conv2d(w, 2 * w, 3, 2, 1, bias=bias), norm_layer(norm, 2 * w), nn.ReLU()]
            w *= 2
        layers += [ResidualBlock(w, norm, bias) for _ in range(n_blocks)]
        for _ in range(2):  # upsample: u2w, uw
            layers += [nn.ConvTranspose2d(w, w // 2, 3, 2, 1, output_padding=1, bias=bias),
                       norm_layer(norm, w // 2), nn.ReLU()]
            w //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] % 4 or x.shape[-2] % 4 or x.shape[-1] < 8:
            raise GanlabError(f"{type(self).__name__}: expected (N, {self.in_channels}, H, W) with H and W divisible "
                              f"by 4 and at least 8, got {tuple(x.shape)}; change data.image_size")
        return self.net(x)

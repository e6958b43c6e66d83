"""DCGAN generator and discriminator (Radford, Metz & Chintala 2016), optionally conditional.

The paper's recipe: no pooling or fully connected hidden layers, strided convolutions to change resolution
(k4, s2, p1 doubles or halves H and W), BatchNorm in both networks except G's output and D's input layers,
ReLU in G with Tanh at the output, LeakyReLU(0.2) in D, weights drawn from N(0, 0.02).

Image sizes: powers of two from 8 to 256 start from (or end at) a 4x4 map; 28x28 (MNIST) uses 7x7 ->
14 -> 28. Widths double per halving of the resolution, so with ``base_width=64`` a 64x64 G projects z to
512x4x4 and D ends at 512x4x4, as in the paper.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.nets.layers import Discriminator, Generator, MinibatchStdDev, add_spectral_norm, check_positive

SIZES = (8, 16, 28, 32, 64, 128, 256)


def _resolution_steps(owner: str, shape: Sequence[int]) -> tuple[int, int]:
    """(size of the smallest map, number of x2 resolution steps) for a (C, H, W) image shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] < 1:
        raise GanlabError(f"{owner}: image shape must be (C, H, W) with C >= 1, got {list(shape)}")
    _, h, w = shape
    if h != w or h not in SIZES:
        raise GanlabError(f"{owner}: image size {h}x{w} is not supported; use square images of "
                          f"{', '.join(map(str, SIZES))} pixels (e.g. data.image_size=32)")
    start = 7 if h == 28 else 4
    return start, (h // start).bit_length() - 1


def dcgan_init_(module: nn.Module) -> None:
    """The paper's initialisation: conv/linear weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _block(conv: nn.Module, width: int, batchnorm: bool, activation: nn.Module) -> list[nn.Module]:
    return [conv, *([nn.BatchNorm2d(width)] if batchnorm else []), activation]


class DCGANGenerator(Generator):
    """[z, embed(y)] -> k x k map (ConvTranspose with a k x k kernel on the 1x1 input, k = 4 or 7) ->
    ConvTranspose2d(k4, s2, p1) + BatchNorm + ReLU per doubling, halving the width -> C channels.

    ``out_activation`` defaults to ``nn.Tanh()`` (images live in [-1, 1] in ganlab); unlike
    ``MLPGenerator``, None here means that default, so pass ``nn.Identity()`` for an unbounded output.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        base_width: int = 64,
        num_classes: int = 0,
        embed_dim: int | None = None,
        out_activation: nn.Module | None = None,
    ) -> None:
        super().__init__(latent_dim, out_shape, num_classes, embed_dim)
        name = type(self).__name__
        check_positive(name, base_width=base_width)
        start, steps = _resolution_steps(name, self.out_shape)
        width = base_width * 2 ** (steps - 1)
        layers = _block(nn.ConvTranspose2d(self.input_dim, width, start, bias=False), width, True, nn.ReLU())
        for _ in range(steps - 1):
            layers += _block(nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), width // 2, True, nn.ReLU())
            width //= 2
        layers.append(nn.ConvTranspose2d(width, self.out_shape[0], 4, 2, 1))
        layers.append(out_activation if out_activation is not None else nn.Tanh())
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)

    def decode(self, h: Tensor) -> Tensor:
        return self.net(h[:, :, None, None])


class DCGANDiscriminator(Discriminator):
    """x -> Conv2d(k4, s2, p1) + [BatchNorm] + LeakyReLU per halving, doubling the width, down to 4x4
    (7x7 for 28x28) -> [minibatch std channel] -> flatten -> Linear -> one logit.

    The final Linear on the flattened k x k map is the paper's last convolution (a k x k kernel over a
    k x k map is a linear layer); the flattened map is phi(x) for the projection term. BatchNorm is used
    from the second block on, and not at all with ``spectral_norm=True``: as in SN-GAN (Miyato et al. 2018),
    spectral normalization replaces it, and batch statistics would undo the per-layer Lipschitz bound.
    With ``pack`` the first layer sees ``pack * C`` channels; with ``conditioning="concat"`` it also sees
    ``embed_dim`` label maps. See ``ganlab.nets.layers.Discriminator`` for the options.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        base_width: int = 64,
        num_classes: int = 0,
        embed_dim: int | None = None,
        conditioning: str = "projection",
        spectral_norm: bool = False,
        minibatch_std: bool = False,
        minibatch_std_group_size: int = 4,
        pack: int = 1,
        negative_slope: float = 0.2,
    ) -> None:
        name = type(self).__name__
        start, steps = _resolution_steps(name, in_shape)  # before super(), so a bad size is the first error
        super().__init__(in_shape, num_classes, conditioning, pack, embed_dim)
        check_positive(name, base_width=base_width)
        layers: list[nn.Module] = []
        width, in_channels = base_width, pack * self.in_shape[0] + self.label_dim
        for i in range(steps):
            batchnorm = i > 0 and not spectral_norm
            conv = nn.Conv2d(in_channels, width, 4, 2, 1, bias=not batchnorm)
            layers += _block(conv, width, batchnorm, nn.LeakyReLU(negative_slope))
            in_channels, width = width, width * 2
        if minibatch_std:
            layers.append(MinibatchStdDev(minibatch_std_group_size))
            in_channels += 1
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        features = in_channels * start * start
        self.head = nn.Linear(features, 1)
        self.conditioning_setup(features)
        dcgan_init_(self)
        if spectral_norm:
            add_spectral_norm(self)

    def features(self, h: Tensor) -> Tensor:
        return self.body(h)

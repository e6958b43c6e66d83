"""Fully connected generator and discriminator (the lecture's MNIST slide, any sizes), optionally conditional.

The unconditional defaults build exactly the lecture's networks and keep their state-dict keys
(``net.<i>.weight``/``net.<i>.bias``); conditioning adds ``label.embed.weight`` (concat) or
``projection.embed.weight`` (projection discriminator), and the discriminator options are described in
``ganlab.nets.layers``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ganlab.nets.layers import Discriminator, Generator, MinibatchStdDev, add_spectral_norm, check_positive


class MLPGenerator(Generator):
    """[z, embed(y)] -> hidden... -> prod(out_shape), reshaped. Lecture: z(10) -> 256 -> 512 -> 1024 -> 784.

    ``out_activation`` is applied last (``nn.Tanh()`` for images in [-1, 1]; None means none).
    """

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int],
        out_shape: Sequence[int],
        out_activation: nn.Module | None = None,
        batchnorm: bool = True,
        negative_slope: float = 0.2,
        num_classes: int = 0,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__(latent_dim, out_shape, num_classes, embed_dim)
        check_positive(type(self).__name__, hidden=list(hidden))
        layers: list[nn.Module] = []
        width = self.input_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.LeakyReLU(negative_slope))
            width = h
        layers.append(nn.Linear(width, math.prod(self.out_shape)))
        layers.append(out_activation if out_activation is not None else nn.Identity())
        self.net = nn.Sequential(*layers)

    def decode(self, h: Tensor) -> Tensor:
        return self.net(h)


class Maxout(nn.Module):
    """A linear map to `pieces` candidates per unit, keeping the largest (Goodfellow et al. 2013): the
    activation of PacGAN's toy discriminator (3 x 200 units, 5 pieces)."""

    def __init__(self, in_features: int, out_features: int, pieces: int) -> None:
        super().__init__()
        self.out_features, self.pieces = out_features, pieces
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).view(*x.shape[:-1], self.out_features, self.pieces).amax(dim=-1)


class MLPDiscriminator(Discriminator):
    """x -> hidden... -> one logit (D(x) = sigmoid(logit)). Lecture: 784 -> 1024 -> 512 -> 256 -> 1.

    ``self.net`` is the whole stack; its last Linear is the head and everything before it is phi(x), so the
    unconditional default keeps the lecture network's layout. With ``minibatch_std`` the statistic is
    appended as one extra feature right before the head; with ``pack`` the flattened samples of a pack are
    concatenated (first layer ``pack * prod(in_shape)`` wide); with ``conditioning="concat"`` the label
    embedding is concatenated to the flattened input; ``maxout_pieces > 1`` makes every hidden layer a
    ``Maxout`` instead of Linear + LeakyReLU. See ``ganlab.nets.layers.Discriminator``.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        hidden: Sequence[int],
        negative_slope: float = 0.2,
        num_classes: int = 0,
        embed_dim: int | None = None,
        conditioning: str = "projection",
        spectral_norm: bool = False,
        minibatch_std: bool = False,
        minibatch_std_group_size: int = 4,
        pack: int = 1,
        maxout_pieces: int = 1,
    ) -> None:
        super().__init__(in_shape, num_classes, conditioning, pack, embed_dim)
        check_positive(type(self).__name__, hidden=list(hidden), maxout_pieces=maxout_pieces)
        layers: list[nn.Module] = []
        width = pack * math.prod(self.in_shape) + self.label_dim
        for h in hidden:
            layers += [Maxout(width, h, maxout_pieces)] if maxout_pieces > 1 else [nn.Linear(width, h),
                                                                                 nn.LeakyReLU(negative_slope)]
            width = h
        if minibatch_std:
            layers.append(MinibatchStdDev(minibatch_std_group_size))
            width += 1
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.conditioning_setup(width)
        if spectral_norm:
            add_spectral_norm(self)

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        return self.net[-1]

    def prepare(self, x: Tensor) -> Tensor:
        return torch.flatten(x, 1)

    def features(self, h: Tensor) -> Tensor:
        return self.net[:-1](h)

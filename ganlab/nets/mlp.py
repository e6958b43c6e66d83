"""Fully connected generator and discriminator (the lecture's MNIST slide, any sizes)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class MLPGenerator(nn.Module):
    """z -> hidden... -> prod(out_shape), reshaped. Lecture: z(10) -> 256 -> 512 -> 1024 -> 784."""

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int],
        out_shape: Sequence[int],
        out_activation: nn.Module | None = None,
        batchnorm: bool = True,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if latent_dim < 1 or any(h < 1 for h in hidden) or any(s < 1 for s in out_shape):
            raise ValueError(f"MLPGenerator: sizes must be positive, got latent_dim={latent_dim}, "
                             f"hidden={list(hidden)}, out_shape={list(out_shape)}")
        self.latent_dim = latent_dim
        self.out_shape = tuple(int(s) for s in out_shape)
        layers: list[nn.Module] = []
        width = latent_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.LeakyReLU(negative_slope))
            width = h
        layers.append(nn.Linear(width, math.prod(self.out_shape)))
        layers.append(out_activation if out_activation is not None else nn.Identity())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    """x -> hidden... -> one logit (D(x) = sigmoid(logit)). Lecture: 784 -> 1024 -> 512 -> 256 -> 1."""

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int], negative_slope: float = 0.2) -> None:
        super().__init__()
        if any(h < 1 for h in hidden) or any(s < 1 for s in in_shape):
            raise ValueError(f"MLPDiscriminator: sizes must be positive, got in_shape={list(in_shape)}, "
                             f"hidden={list(hidden)}")
        self.in_shape = tuple(int(s) for s in in_shape)
        layers: list[nn.Module] = []
        width = math.prod(self.in_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(negative_slope)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"MLPDiscriminator expects inputs of shape (N, {', '.join(map(str, self.in_shape))}), "
                             f"got {tuple(x.shape)}")
        return self.net(torch.flatten(x, 1)).squeeze(1)

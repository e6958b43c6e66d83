"""Uniform mixtures of 2-D gaussians: the mode-collapse toys of Unrolled GAN, VEEGAN and PacGAN.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from ganlab.data.on_the_fly import OnTheFlyDataModule, stream_seed
from ganlab.errors import GanlabError

# As in ganlab.data.gaussian: the dataset yields whole batches in the main process, so its length is exact.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")


def ring_centers(num_modes: int = 8, radius: float = 2.0) -> Tensor:
    """(num_modes, 2) points equally spaced on a circle, the first at angle 0: r (cos 2πk/K, sin 2πk/K)."""
    if num_modes < 1 or radius <= 0:
        raise GanlabError(f"ring_centers: need num_modes >= 1 and radius > 0, got {num_modes}, {radius}")
    angles = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def grid_centers(size: int = 5, spacing: float = 2.0) -> Tensor:
    """(size^2, 2) points of a square grid centred on the origin; size=5, spacing=2 gives -4, -2, 0, 2, 4.

    Row-major: index i * size + j is the point (coords[i], coords[j]).
    """
    if size < 1 or spacing <= 0:
        raise GanlabError(f"grid_centers: need size >= 1 and spacing > 0, got {size}, {spacing}")
    coords = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * spacing
    xs, ys = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1).float()


def sample_mixture(centers: Tensor, std: float, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n points of the uniform mixture: a mode index drawn uniformly, then centre + std * N(0, I)."""
    labels = torch.randint(len(centers), (n,), generator=generator)
    points = centers[labels] + std * torch.randn(n, centers.shape[1], generator=generator)
    return points, labels


class MixtureBatches(IterableDataset):
    """`num_batches` batches of `batch_size` mixture samples; a new draw each epoch."""

    def __init__(self, centers: Tensor, std: float, batch_size: int, num_batches: int, seed: int) -> None:
        super().__init__()
        self.centers, self.std = centers, std
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed
        self.epoch, self.rank = 0, 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        rng = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, self.rank))
        self.epoch += 1
        for _ in range(self.num_batches):
            x, labels = sample_mixture(self.centers, self.std, self.batch_size, rng)
            yield {"image": x, "label": labels}


class FixedPointBatches(MixtureBatches):
    """`num_batches` batches from one fixed draw of `num_points` mixture points, reshuffled every epoch
    (a finite training set, as in PacGAN's experiments, rather than a fresh draw per batch)."""

    def __init__(self, centers: Tensor, std: float, batch_size: int, num_batches: int, seed: int,
                 num_points: int) -> None:
        super().__init__(centers, std, batch_size, num_batches, seed)
        self.points, self.labels = sample_mixture(centers, std, num_points, torch.Generator().manual_seed(seed))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        rng = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, self.rank))
        self.epoch += 1
        needed = self.num_batches * self.batch_size
        order = torch.cat([torch.randperm(len(self.points), generator=rng)
                           for _ in range(-(-needed // len(self.points)))])
        for i in range(self.num_batches):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield {"image": self.points[index], "label": self.labels[index]}


class GaussianMixtureDataModule(OnTheFlyDataModule):
    """Batches {"image": (B, 2) float32, "label": (B,) mode index} from a uniform 2-D gaussian mixture.

    `centers` ((K, 2) tensor) and `std` stay public: the mode metrics and the scatter plots read them.
    """

    def __init__(
        self,
        centers: Tensor | Sequence[Sequence[float]],
        std: float,
        dim: int = 2,
        batch_size: int = 256,
        batches_per_epoch: int = 100,
        val_samples: int = 2500,
        seed: int = 0,
        train_points: int | None = None,
    ) -> None:
        super().__init__()
        if dim != 2:
            raise GanlabError(f"gaussian mixture data is 2-D: data.dim must be 2, got {dim}")
        centers = torch.as_tensor(centers, dtype=torch.float32)
        if centers.ndim != 2 or centers.shape[1] != 2 or len(centers) < 1:
            raise GanlabError(f"gaussian mixture data: centers must have shape (K, 2), got {tuple(centers.shape)}")
        if std <= 0 or batch_size < 1 or batches_per_epoch < 1 or val_samples < 1:
            raise GanlabError(f"gaussian mixture data: need std > 0 and positive sizes, got std={std}, "
                              f"batch_size={batch_size}, batches_per_epoch={batches_per_epoch}, "
                              f"val_samples={val_samples}")
        # The centres are a tensor built from config; keep them out of hparams (and checkpoints).
        self.save_hyperparameters(ignore=["centers"])
        self.centers, self.std = centers, float(std)
        if train_points is not None and (isinstance(train_points, bool) or not isinstance(train_points, int)
                                         or train_points < batch_size):
            raise GanlabError(f"gaussian mixture data: data.train_points={train_points!r}: expected null (a fresh "
                              f"draw per batch) or an integer >= data.batch_size ({batch_size})")
        self.train_batches = (MixtureBatches(centers, self.std, batch_size, batches_per_epoch, seed)
                              if train_points is None else
                              FixedPointBatches(centers, self.std, batch_size, batches_per_epoch, seed, train_points))
        self.val_set, self.val_labels = sample_mixture(centers, self.std, val_samples,
                                                       torch.Generator().manual_seed(seed + 999_983))

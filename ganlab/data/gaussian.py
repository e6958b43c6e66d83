"""Samples from a normal distribution, drawn on the fly (the lecture's first GAN exercise).

Training batches come from a seeded generator that advances every epoch; the validation set is a fixed
draw from an independent seed, so metrics compare G against samples it never trained on.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import torch
from torch.utils.data import IterableDataset

from ganlab.data.on_the_fly import OnTheFlyDataModule, stream_seed
from ganlab.errors import GanlabError


# Lightning warns that an IterableDataset's __len__ may be wrong with several workers; ours yields whole
# batches in the main process (num_workers=0), so the length is exact.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")


class GaussianBatches(IterableDataset):
    """`num_batches` batches of shape (batch_size, dim) from N(mean, std^2); a new draw each epoch."""

    def __init__(self, mean: float, std: float, dim: int, batch_size: int, num_batches: int, seed: int) -> None:
        super().__init__()
        self.mean, self.std, self.dim = mean, std, dim
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed
        self.epoch, self.rank = 0, 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, self.rank))
        self.epoch += 1
        for _ in range(self.num_batches):
            x = self.mean + self.std * torch.randn(self.batch_size, self.dim, generator=rng)
            yield {"image": x, "label": torch.zeros(self.batch_size, dtype=torch.long)}


class GaussianDataModule(OnTheFlyDataModule):
    def __init__(
        self,
        mean: float = 4.0,
        std: float = 1.25,
        dim: int = 1,
        batch_size: int = 256,
        batches_per_epoch: int = 100,
        val_samples: int = 10_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if std <= 0 or dim < 1 or batch_size < 1 or batches_per_epoch < 1 or val_samples < 1:
            raise GanlabError(f"gaussian data: need std > 0 and positive sizes, got std={std}, dim={dim}, "
                              f"batch_size={batch_size}, batches_per_epoch={batches_per_epoch}, "
                              f"val_samples={val_samples}")
        self.save_hyperparameters()
        self.train_batches = GaussianBatches(mean, std, dim, batch_size, batches_per_epoch, seed)
        held_out = torch.Generator().manual_seed(seed + 999_983)
        self.val_set = mean + std * torch.randn(val_samples, dim, generator=held_out)
        self.val_labels = torch.zeros(val_samples, dtype=torch.long)

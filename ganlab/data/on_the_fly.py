"""Shared plumbing of the toy data modules whose training batches are drawn on the fly."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from ganlab.data.loaders import resolve_workers


def pinned() -> bool:
    """Pinned batches with a GPU: a copy from pageable memory first waits for the GPU (a host sync per batch)."""
    return resolve_workers(0, "auto")[1]


def stream_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of one rank's draws in one epoch. Rank 0 keeps the single-process stream (so a 1-device run is
    unchanged); under DDP every other rank gets an independent stream instead of a copy of rank 0's batches."""
    base = seed * 100_003 + epoch
    return base if rank == 0 else int(np.random.SeedSequence([base, rank]).generate_state(1)[0])


class OnTheFlyDataModule(pl.LightningDataModule):
    """Subclasses set `train_batches` (an IterableDataset of whole batches with an `epoch` counter),
    `val_set` and `val_labels` (a fixed held-out draw), and `hparams.batch_size`."""

    train_batches: IterableDataset
    val_set: Tensor
    val_labels: Tensor

    def state_dict(self) -> dict[str, int]:
        # Saved in Lightning checkpoints so a resumed run continues the sequence of draws.
        return {"epoch": self.train_batches.epoch}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.train_batches.epoch = int(state_dict["epoch"])

    def train_dataloader(self) -> DataLoader:
        # Lightning shards map-style datasets across DDP ranks; these batches are drawn, so each rank draws its own.
        self.train_batches.rank = self.trainer.global_rank if self.trainer is not None else 0
        # The dataset yields whole batches; batch_size=None stops the loader from batching again.
        return DataLoader(self.train_batches, batch_size=None, pin_memory=pinned())

    def val_dataloader(self) -> DataLoader:
        data = [{"image": x, "label": y} for x, y in zip(self.val_set, self.val_labels)]
        return DataLoader(data, batch_size=self.hparams.batch_size * 4, pin_memory=pinned())

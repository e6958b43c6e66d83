"""Shared plumbing of the toy data modules whose training batches are drawn on the fly."""

from __future__ import annotations

import pytorch_lightning as pl
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset


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
        # The dataset yields whole batches; batch_size=None stops the loader from batching again.
        return DataLoader(self.train_batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        data = [{"image": x, "label": y} for x, y in zip(self.val_set, self.val_labels)]
        return DataLoader(data, batch_size=self.hparams.batch_size * 4)

"""The DataLoader every map-style ganlab data module serves, so loader policy lives in one place."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from ganlab.errors import GanlabError


def split_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Training (shuffle=True) drops a ragged last batch, unless that would leave no batch at all (tiny
    datasets in tests); held-out splits keep every sample. Workers persist across epochs."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) >= batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


class SplitDataModule(pl.LightningDataModule):
    """A data module whose `setup()` fills `self.datasets` ("train", "val", optionally "test") with map-style
    datasets; the loaders follow from that. Subclasses set `batch_size`, `num_workers` and `pin_memory`."""

    datasets: dict[str, Dataset]
    batch_size: int
    num_workers: int = 0
    pin_memory: bool = False

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return split_loader(self.datasets[split], self.batch_size, shuffle, self.num_workers, self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise GanlabError(f"{type(self).__name__} has no test split (it has {', '.join(self.datasets)})")
        return self._loader("test", shuffle=False)

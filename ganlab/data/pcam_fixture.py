"""A small stand-in for PatchCamelyon, written in exactly the official file format.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

from ganlab.errors import GanlabError

SIZE = 96
CENTRE = (32, 64)  # the centre 32x32 region [32, 64) x [32, 64) that decides the label
SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}
STORAGES = ("contiguous", "chunked")
OUTSIDE_PROBABILITY = 0.5  # share of patches (either class) with tumour-like nuclei outside the centre


def file_names(split: str) -> tuple[str, str]:
    """The official (images, labels) file names of a ganlab split ("train", "val" or "test")."""
    stem = f"camelyonpatch_level_2_split_{SPLIT_FILES[split]}"
    return f"{stem}_x.h5", f"{stem}_y.h5"


@functools.lru_cache(maxsize=1)
def _tissue_stains() -> np.ndarray:
    """(512, 512, 3) float32 stain concentrations (hematoxylin, eosin, unused) of scikit-image's IHC slide."""
    from skimage import color, data

    hed = color.rgb2hed(data.immunohistochemistry())
    return np.stack([hed[..., 0], 0.6 * hed[..., 2], np.zeros_like(hed[..., 0])], axis=-1).astype(np.float32)


def _stamp_nucleus(h: np.ndarray, rng: np.random.Generator, cy: float, cx: float, radius: float) -> None:
    """Add one dark elliptical nucleus (soft edge, grainy chromatin) to the hematoxylin channel `h`."""
    b = radius * rng.uniform(0.6, 1.0)
    angle = rng.uniform(0, np.pi)
    r = int(np.ceil(radius)) + 1
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, SIZE)
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, SIZE)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    d = np.sqrt((u / radius) ** 2 + (v / b) ** 2)
    mask = np.clip((1.0 - d) * 3.0, 0.0, 1.0)
    grain = rng.uniform(0.75, 1.0, size=mask.shape).astype(np.float32)
    h[y0:y1, x0:x1] += rng.uniform(0.10, 0.16) * mask * grain


def _outside_centre(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    """A nucleus centre whose whole disc (plus a margin) lies outside the centre region."""
    lo, hi, margin = CENTRE[0], CENTRE[1], radius + 2
    while True:
        cy, cx = rng.uniform(radius, SIZE - radius, size=2)
        if not (lo - margin < cy < hi + margin and lo - margin < cx < hi + margin):
            return float(cy), float(cx)


def _patch(rng: np.random.Generator, positive: bool, decoys: float = OUTSIDE_PROBABILITY) -> np.ndarray:
    """One (96, 96, 3) stain-concentration patch, before rendering to RGB; tumour-like nuclei outside the
    centre with probability `decoys`."""
    tissue = _tissue_stains()
    top, left = rng.integers(0, tissue.shape[0] - SIZE + 1, size=2)
    crop = np.rot90(tissue[top:top + SIZE, left:left + SIZE], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    stains = crop * rng.uniform(0.8, 1.2, size=3).astype(np.float32)  # stain jitter (H and E separately)
    h = np.ascontiguousarray(stains[..., 0])
    if positive:  # a dense tumour cluster centred inside the centre region
        for _ in range(int(rng.integers(6, 11))):
            radius = rng.uniform(3.5, 6.0)
            _stamp_nucleus(h, rng, *rng.uniform(CENTRE[0] + 2, CENTRE[1] - 2, size=2), radius)
    if rng.random() < decoys:  # tumour-like nuclei that do not touch the centre region
        for _ in range(int(rng.integers(3, 9))):
            radius = rng.uniform(3.5, 6.0)
            _stamp_nucleus(h, rng, *_outside_centre(rng, radius), radius)
    stains[..., 0] = h
    return stains


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 96, 96, 3) uint8, labels (n,) uint8), exactly half positive (n even), shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2).astype(np.uint8)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = render(_patch(rng, bool(label)), rng)
    return images, labels


def render(stains: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain concentrations -> (96, 96, 3) uint8 RGB, by Beer-Lambert as skimage.color.hed2rgb (float32 to
    keep memory small); a random optical-density scale gives lighter or darker slides."""
    from skimage.color import rgb_from_hed

    absorb = (-np.log(1e-6) * rgb_from_hed).astype(np.float32)
    density = stains @ absorb * np.float32(rng.uniform(0.9, 1.1))
    return np.clip(np.exp(-density) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def decoy_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(without decoys, with decoys) image sets (n, 96, 96, 3) uint8 and labels (n,), alternating 0/1: the
    same tissue and centre per index, differing only by tumour-like nuclei outside the centre. For
    measuring whether a classifier looks where PCam's label is."""
    labels = (np.arange(n) % 2).astype(np.uint8)
    sets = []
    for decoys in (0.0, 1.0):
        images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
        for i, label in enumerate(labels):
            rng = np.random.default_rng((seed, i))  # per index, so both sets share everything but the decoys
            images[i] = render(_patch(rng, bool(label), decoys), rng)
        sets.append(images)
    return sets[0], sets[1], labels


def write_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray,
                storage: str = "contiguous") -> None:
    """Write one split as the two official files; `storage="chunked"` uses per-image gzip chunks."""
    if storage not in STORAGES:
        raise GanlabError(f"storage must be one of {STORAGES}, got {storage!r}")
    chunked = storage == "chunked"
    x_name, y_name = file_names(split)
    with h5py.File(directory / x_name, "w") as f:
        f.create_dataset("x", data=images, chunks=(1, SIZE, SIZE, 3) if chunked else None,
                         compression="gzip" if chunked else None)
    with h5py.File(directory / y_name, "w") as f:
        f.create_dataset("y", data=labels.reshape(-1, 1, 1, 1), chunks=(min(1024, len(labels)), 1, 1, 1)
                         if chunked else None, compression="gzip" if chunked else None)


def write_pcam_fixture(directory: str | Path, n_per_split: int, seed: int = 0,
                       storage: str = "contiguous") -> Path:
    """Write all six official files (train/valid/test x/y) into `directory`; return it."""
    if n_per_split < 2 or n_per_split % 2:
        raise GanlabError(f"n_per_split must be an even number >= 2 (balanced labels), got {n_per_split}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(SPLIT_FILES):
        images, labels = make_split(n_per_split, seed * 1000 + i)
        write_split(directory, split, images, labels, storage)
    return directory


def materialize_fixture(cache_dir: Path, n_per_split: int, seed: int, storage: str) -> Path:
    """Generate the stand-in once into `<cache_dir>/pcam_fixture_<params>/` (temp dir, then rename)."""
    root = cache_dir / f"pcam_fixture_n{n_per_split}_seed{seed}_{storage}"
    if root.is_dir():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pcam_fixture_", dir=cache_dir))
    try:
        write_pcam_fixture(tmp, n_per_split, seed, storage)
        os.rename(tmp, root)
    except OSError:
        if not root.is_dir():  # a concurrent writer that won the rename is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root

"""Patients of a SynthRAD-style folder: find them, validate every file once, and cache the normalised
volumes as .npy so that training reads memory-mapped arrays instead of re-decoding gzip'd NIfTI.

A cache entry is keyed by (file path, mtime, size, normalisation), so editing a file or changing
`data.mr_norm` makes a new entry; entries are validated when written (finite, 3-D, non-empty mask), and
their grid (shape, affine) is kept in a JSON beside them, so a later run checks the grids without opening
a NIfTI at all. Entries are written to a temp file and renamed: concurrent runs (DDP ranks, sweeps) at
worst decode the same file twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ganlab.data.intensity import HU_MAX, HU_MIN, ct_to_unit, normalize_mr
from ganlab.data.nifti import Grid, check_same_grid, read_volume
from ganlab.errors import GanlabError

REQUIRED = ("mr", "ct", "mask")
OPTIONAL = ("labels",)
CACHE_SUBDIR = "mr_ct_cache"
CACHE_VERSION = 1


def nifti_path(patient_dir: Path, kind: str) -> Path | None:
    """`<patient>/<kind>.nii.gz` (SynthRAD's spelling) or `<kind>.nii`, whichever exists."""
    for name in (f"{kind}.nii.gz", f"{kind}.nii"):
        if (patient_dir / name).is_file():
            return patient_dir / name
    return None


def find_patients(root: Path) -> list[Path]:
    """Sorted patient dirs of a SynthRAD region folder: every subdir holding any of mr/ct/mask (so e.g.
    SynthRAD's `overview/` folder is skipped, but a patient missing one file is reported, not skipped)."""
    layout = "<root>/<patient>/{mr,ct,mask}.nii.gz (labels.nii.gz optional), as in SynthRAD2023"
    if not root.is_dir():
        raise GanlabError(f"data.root={root}: no such directory; expected {layout}, or data.root=null for the "
                          "synthetic phantom")
    patients = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and any(nifti_path(d, kind) for kind in REQUIRED))
    if not patients:
        raise GanlabError(f"data.root={root}: no patient folders found; expected {layout}")
    return patients


class VolumeCache:
    """Normalised volumes as .npy files under `<cache_dir>/mr_ct_cache/`, one per (file, recipe)."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = Path(cache_dir) / CACHE_SUBDIR

    def key(self, source: Path, recipe: dict) -> str:
        stat = source.stat()
        ident = {"version": CACHE_VERSION, "file": str(source.resolve()), "mtime_ns": stat.st_mtime_ns,
                 "size": stat.st_size, **recipe}
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, source: Path, recipe: dict, make: Callable[[], tuple[np.ndarray, Grid, dict]]) -> tuple[Path, dict]:
        """(the .npy path, its metadata); `make()` decodes and validates only when the entry is missing."""
        key = self.key(source, recipe)
        npy, meta_path = self.dir / f"{key}.npy", self.dir / f"{key}.json"
        if meta_path.is_file() and npy.is_file():
            return npy, json.loads(meta_path.read_text())
        array, grid, extra = make()
        meta = {"source": str(source), "key": key, "shape": list(grid.shape),
                "affine": np.asarray(grid.affine).tolist(), **recipe, **extra}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array))
            os.replace(tmp, npy)
            tmp.write_text(json.dumps(meta))  # the JSON last: its presence means the entry is complete
            os.replace(tmp, meta_path)
        finally:
            tmp.unlink(missing_ok=True)
        return npy, meta


@dataclass
class Patient:
    """One validated patient: its files, the cached arrays ("a" MR, "b" CT, "mask", "tissue") and grid."""

    id: str
    dir: Path
    files: dict[str, Path]
    arrays: dict[str, Path] = field(default_factory=dict)
    shape: tuple[int, int, int] = (0, 0, 0)
    affine: np.ndarray | None = None


def _grid(meta: dict) -> Grid:
    return Grid(meta["source"], tuple(meta["shape"]), np.asarray(meta["affine"]))


def load_patient(patient_dir: Path, cache: VolumeCache, mr_norm: str = "percentile",
                 mr_percentiles: tuple[float, float] = (0.5, 99.5)) -> Patient:
    """Validate one patient (files present, same grid, finite, non-empty mask) and cache its volumes."""
    files: dict[str, Path] = {}
    for kind in REQUIRED + OPTIONAL:
        path = nifti_path(patient_dir, kind)
        if path is None and kind in REQUIRED:
            raise GanlabError(f"{patient_dir / (kind + '.nii.gz')}: missing; every patient folder needs "
                              f"{', '.join(k + '.nii.gz' for k in REQUIRED)}")
        if path is not None:
            files[kind] = path

    def make_mask() -> tuple[np.ndarray, Grid, dict]:
        data, image = read_volume(files["mask"])
        mask = (data > 0).astype(np.uint8)
        if not mask.any():
            raise GanlabError(f"{files['mask']}: the mask is empty (no voxel > 0); expected the body outline")
        return mask, Grid.of(image, str(files["mask"])), {"voxels": int(mask.sum())}

    def make_ct() -> tuple[np.ndarray, Grid, dict]:
        data, image = read_volume(files["ct"])
        return ct_to_unit(data).astype(np.float32), Grid.of(image, str(files["ct"])), {}

    def make_labels() -> tuple[np.ndarray, Grid, dict]:
        data, image = read_volume(files["labels"])
        return np.clip(np.rint(data), 0, 255).astype(np.uint8), Grid.of(image, str(files["labels"])), {}

    mask_npy, mask_meta = cache.get(files["mask"], {"kind": "mask"}, make_mask)
    ct_npy, ct_meta = cache.get(files["ct"], {"kind": "ct", "hu_range": [HU_MIN, HU_MAX]}, make_ct)
    check_same_grid([_grid(mask_meta), _grid(ct_meta)])

    def make_mr() -> tuple[np.ndarray, Grid, dict]:
        data, image = read_volume(files["mr"])
        grid = Grid.of(image, str(files["mr"]))
        check_same_grid([_grid(mask_meta), grid])  # before the mask is used to normalise it
        mr = normalize_mr(data, np.load(mask_npy), mr_norm, tuple(mr_percentiles), source=str(files["mr"]))
        return mr, grid, {}

    mr_recipe = {"kind": "mr", "method": mr_norm, "percentiles": list(mr_percentiles), "mask": mask_meta["key"]}
    mr_npy, mr_meta = cache.get(files["mr"], mr_recipe, make_mr)
    metas = [mask_meta, ct_meta, mr_meta]
    arrays = {"a": mr_npy, "b": ct_npy, "mask": mask_npy}
    if "labels" in files:
        labels_npy, labels_meta = cache.get(files["labels"], {"kind": "labels"}, make_labels)
        metas.append(labels_meta)
        arrays["tissue"] = labels_npy
    check_same_grid([_grid(m) for m in metas])
    return Patient(patient_dir.name, patient_dir, files, arrays, tuple(mask_meta["shape"]),
                   np.asarray(mask_meta["affine"]))

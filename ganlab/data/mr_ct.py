"""MR ("a") and CT ("b") head slices for pix2pix (paired) and CycleGAN (unpaired) MR-to-CT synthesis.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
from torch.utils.data import DataLoader, Dataset

from ganlab.data.intensity import MR_METHODS
from ganlab.data.phantom import write_phantom_dataset
from ganlab.data.slices import Crop, ImageSlices, PairedSlices, UnpairedSlices, VolumeSlices, restack
from ganlab.data.tissue_names import names_for_labels, read_tissue_names
from ganlab.data.volumes import Patient, VolumeCache, find_patients, load_patient
from ganlab.data.loaders import SplitDataModule
from ganlab.errors import GanlabError

PHANTOM_DEFAULTS = {"n_patients": 12, "shape": (64, 64, 24), "seed": 0}


def split_patients(ids: list[str], val: int | float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, val ids), both sorted: `val` patients (a count, or a fraction in (0, 1)) are held out
    by a seeded shuffle of the sorted ids, so the split depends only on the ids and the seed."""
    ids = sorted(ids)
    if isinstance(val, float) and 0.0 < val < 1.0:
        n_val = max(1, round(val * len(ids)))
    elif float(val) == int(val) and int(val) >= 1:
        n_val = int(val)
    else:
        raise GanlabError(f"data.val_patients={val}: expected a count >= 1 or a fraction in (0, 1)")
    if n_val >= len(ids):
        raise GanlabError(f"data.val_patients={val} holds out {n_val} of {len(ids)} patients; at least one must "
                          "be left for training")
    order = np.random.default_rng(seed).permutation(len(ids))
    val_ids = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in val_ids], val_ids


class MRCTDataModule(SplitDataModule):
    def __init__(
        self,
        root: str | None = None,
        cache_dir: str = "data",
        paired: bool = True,
        disjoint_patients: bool = False,
        axis: int = 2,
        context: int = 0,
        channels_a: int = 1,
        channels_b: int = 1,
        image_size: int = 64,
        val_patients: int | float = 0.15,
        mr_norm: str = "percentile",
        mr_percentiles: tuple[float, float] = (0.5, 99.5),
        split_seed: int = 0,
        min_mask_fraction: float = 0.05,
        batch_size: int = 4,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        phantom: Mapping[str, Any] | None = None,
        images: str | None = None,
    ) -> None:
        super().__init__()
        if axis not in (0, 1, 2):
            raise GanlabError(f"data.axis={axis}: expected 0, 1 or 2 (the volume axis to slice along)")
        if int(context) != context or context < 0:
            raise GanlabError(f"data.context={context}: expected a number of neighbouring slices >= 0")
        if channels_a != 2 * context + 1:
            raise GanlabError(f"data.channels_a={channels_a} but data.context={context} gives 2*context+1="
                              f"{2 * context + 1} MR channels; set data.channels_a={2 * context + 1}")
        if channels_b != 1:
            raise GanlabError(f"data.channels_b={channels_b}: CT is one channel; expected data.channels_b=1")
        if image_size < 8:
            raise GanlabError(f"data.image_size={image_size}: expected at least 8 pixels")
        if mr_norm not in MR_METHODS:
            raise GanlabError(f"data.mr_norm={mr_norm!r}: expected one of {', '.join(MR_METHODS)}")
        if disjoint_patients and paired:
            raise GanlabError("data.disjoint_patients=true draws MR and CT from different patients, which "
                              "only unpaired training can use; set data.paired=false (CycleGAN)")
        if not 0.0 <= min_mask_fraction < 1.0:
            raise GanlabError(f"data.min_mask_fraction={min_mask_fraction}: expected a fraction in [0, 1)")
        if images not in (None, "a", "b"):
            raise GanlabError(f"data.images={images!r}: expected null (a/b pairs), 'a' (MR slices as images) or "
                              "'b' (CT slices as images)")
        self.paired, self.disjoint_patients, self.images = bool(paired), bool(disjoint_patients), images
        self.axis, self.context, self.image_size = int(axis), int(context), int(image_size)
        self.min_mask_fraction = float(min_mask_fraction)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.cache_dir = Path(cache_dir).expanduser()
        self.root = Path(root).expanduser() if root is not None else self._phantom_root(phantom)

        # Validate (and cache) every patient now: one clear error before training, not at epoch 3.
        cache = VolumeCache(self.cache_dir)
        self.patients: dict[str, Patient] = {
            d.name: load_patient(d, cache, mr_norm, tuple(mr_percentiles)) for d in find_patients(self.root)}
        self.train_patients, self.val_patients = split_patients(list(self.patients), val_patients, split_seed)
        # Unpaired, disjoint: MR from every other training patient, CT from the rest (the lecture's setting).
        if self.disjoint_patients:
            if len(self.train_patients) < 2:
                raise GanlabError(f"data.disjoint_patients=true needs at least 2 training patients, got "
                                  f"{len(self.train_patients)} (lower data.val_patients)")
            self.mr_patients, self.ct_patients = self.train_patients[0::2], self.train_patients[1::2]
        else:
            self.mr_patients = self.ct_patients = list(self.train_patients)
        # Class names of the "tissue" maps, as the dataset declares them (tissues.json, the phantom's
        # phantom.json), else tissue0, tissue1, ...; None without labels.
        labels = [self.patients[i].arrays.get("tissue") for i in self.val_patients]
        self.tissues = None if None in labels else names_for_labels(
            read_tissue_names(self.root), max(int(np.load(path, mmap_mode="r").max()) for path in labels))
        self.datasets: dict[str, Dataset] = {}
        self._val_volumes = self._slices(self.val_patients)

    def _phantom_root(self, phantom: Mapping[str, Any] | None) -> Path:
        params = {**PHANTOM_DEFAULTS, **dict(phantom or {})}
        shape = [int(s) for s in params["shape"]]
        root = self.cache_dir / (f"mr_ct_phantom_n{int(params['n_patients'])}_{'x'.join(map(str, shape))}"
                                 f"_seed{int(params['seed'])}")
        if "voxel_size" in params:
            root = root.with_name(root.name + f"_vox{'x'.join(f'{float(v):g}' for v in params['voxel_size'])}")
        write_phantom_dataset(root, **{**params, "shape": tuple(shape)})  # reuses an identical existing one
        return root

    def _slices(self, ids: list[str]) -> VolumeSlices:
        patients = [self.patients[i] for i in ids]
        return VolumeSlices([p.arrays for p in patients], [p.shape for p in patients], self.axis, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.images is not None:  # one domain as plain images; disjoint halves still apply
            volumes = self._slices(self.mr_patients if self.images == "a" else self.ct_patients)
            train: Dataset = ImageSlices(volumes, volumes.items(self.min_mask_fraction), self.images, self.context)
        elif self.paired:
            volumes = self._slices(self.train_patients)
            train = PairedSlices(volumes, volumes.items(self.min_mask_fraction), self.context)
        else:
            mr, ct = self._slices(self.mr_patients), self._slices(self.ct_patients)
            train = UnpairedSlices(mr, mr.items(self.min_mask_fraction), ct, ct.items(self.min_mask_fraction),
                                   self.context)
        if len(train) == 0:
            raise GanlabError(f"data.min_mask_fraction={self.min_mask_fraction} leaves no training slice; "
                              "lower it")
        # Pairs: validation keeps every slice, in patient-then-slice order, so predictions re-stack into volumes.
        # Plain images are never re-stacked: near-empty slices are skipped as in training.
        if self.images is not None:
            val: Dataset = ImageSlices(self._val_volumes, self._val_volumes.items(self.min_mask_fraction),
                                       self.images, self.context)
        else:
            val = PairedSlices(self._val_volumes, self._val_volumes.items(), self.context, indexed=True)
        self.datasets = {"train": train, "val": val}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()  # loaders may be asked for before Lightning's setup (sampling, tests)
        return super()._loader(split, shuffle)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    # --- 3-D access for metrics and NIfTI output -------------------------------------------------------
    def val_crop(self, i: int) -> Crop:
        """How val patient i's slices were cropped/padded to image_size."""
        return self._val_volumes.crops[i]

    def val_volume(self, i: int) -> dict[str, Any]:
        """Val patient i's full volumes in normalised units on the original grid: "a" MR and "b" CT in
        [-1, 1], "mask" float 0/1, "tissue" int64 (None without labels), plus "reference" (the CT's nibabel
        image, header only, for `write_like`), "id", "axis" and "crop"."""
        patient = self.patients[self.val_patients[i]]
        arrays = {kind: np.load(path) for kind, path in patient.arrays.items()}
        return {"a": arrays["a"], "b": arrays["b"], "mask": arrays["mask"].astype(np.float32),
                "tissue": arrays["tissue"].astype(np.int64) if "tissue" in arrays else None,
                "reference": nib.load(str(patient.files["ct"])), "id": patient.id, "axis": self.axis,
                "crop": self.val_crop(i)}

    def restack(self, i: int, slices: np.ndarray, fill: float = -1.0) -> np.ndarray:
        """Per-slice images (n_slices, [1,] image_size, image_size) of val patient i -> its 3-D volume."""
        depth = self.patients[self.val_patients[i]].shape[self.axis]
        if len(slices) != depth:
            raise GanlabError(f"restack of val patient {self.val_patients[i]}: got {len(slices)} slices, "
                              f"its volume has {depth} along data.axis={self.axis}")
        return restack(slices, self.val_crop(i), self.axis, fill)

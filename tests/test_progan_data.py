"""Single-domain images from the MR/CT module (`data.images`), as ProGAN on CT reads them: CT slices checked
against the NIfTI files by hand (HU -> [-1, 1], padded with air), MR with context, the patient halves, the
near-empty-slice rule on both splits, and the default a/b pairs left as they were."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ganlab.data.intensity import ct_to_unit
from ganlab.data.mr_ct import MRCTDataModule
from ganlab.data.phantom import write_phantom_dataset
from ganlab.errors import GanlabError

SHAPE = (30, 30, 8)  # plane 30x30, padded by one voxel of air on every side to 32x32
MIN_MASK = 0.3


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("progan_ct") / "brain"
    write_phantom_dataset(root, n_patients=5, shape=SHAPE, seed=7)
    return root


def _dm(root: Path, cache: Path, **kw) -> MRCTDataModule:
    kw = {"image_size": 32, "val_patients": 1, "batch_size": 4, "min_mask_fraction": MIN_MASK, **kw}
    dm = MRCTDataModule(root=str(root), cache_dir=str(cache), **kw)
    dm.setup("fit")
    return dm


def _nifti(root: Path, patient: str, name: str) -> np.ndarray:
    return np.asarray(nib.load(str(root / patient / f"{name}.nii.gz")).dataobj).astype(np.float64)


def _expected_items(root: Path, patients: list[str]) -> list[tuple[str, int]]:
    """(patient, slice) with at least MIN_MASK body voxels, from the mask files."""
    return [(pid, s) for pid in patients for s in range(SHAPE[2])
            if _nifti(root, pid, "mask")[:, :, s].mean() >= MIN_MASK]


def test_ct_slices_as_images_match_the_nifti_by_hand(phantom, tmp_path):
    dm = _dm(phantom, tmp_path, images="b")
    for split, patients in (("train", dm.train_patients), ("val", dm.val_patients)):
        dataset, expected = dm.datasets[split], _expected_items(phantom, patients)
        assert 0 < len(dataset) == len(expected) < len(patients) * SHAPE[2]  # near-empty slices skipped
        for i in (0, len(expected) // 2, len(expected) - 1):
            pid, s = expected[i]
            oracle = np.full((32, 32), -1.0)  # air around the 30x30 plane
            oracle[1:31, 1:31] = ct_to_unit(_nifti(phantom, pid, "ct")[:, :, s])
            item = dataset[i]
            assert set(item) == {"image", "label"} and item["image"].shape == (1, 32, 32)
            torch.testing.assert_close(item["image"][0], torch.from_numpy(oracle).float(), rtol=0, atol=1e-6)
            assert item["label"].dtype == torch.int64 and int(item["label"]) == 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].tolist() == [0, 0, 0, 0]
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1


def test_mr_images_keep_context_and_the_default_pairs_are_unchanged(phantom, tmp_path):
    pairs = _dm(phantom, tmp_path, context=1, channels_a=3)
    mr = _dm(phantom, tmp_path, context=1, channels_a=3, images="a")
    assert len(mr.datasets["train"]) == len(pairs.datasets["train"])
    for i in (0, 5, len(pairs.datasets["train"]) - 1):
        torch.testing.assert_close(mr.datasets["train"][i]["image"], pairs.datasets["train"][i]["a"], rtol=0, atol=0)
    assert mr.datasets["train"][0]["image"].shape == (3, 32, 32)
    # images=null: a/b/mask pairs for training, every val slice with its indices for re-stacking.
    assert set(next(iter(pairs.train_dataloader()))) == {"a", "b", "mask"}
    assert len(pairs.datasets["val"]) == SHAPE[2] and "slice" in pairs.datasets["val"][0]


def test_disjoint_halves_apply_to_images(phantom, tmp_path):
    dm = _dm(phantom, tmp_path, images="b", paired=False, disjoint_patients=True)
    assert len(dm.datasets["train"]) == len(_expected_items(phantom, dm.ct_patients))
    ct = _dm(phantom, tmp_path, images="b").datasets["train"]
    assert len(dm.datasets["train"]) < len(ct)


def test_bad_images_value_names_the_key(phantom, tmp_path):
    with pytest.raises(GanlabError, match=r"data.images='ct'.*'b' \(CT"):
        MRCTDataModule(root=str(phantom), cache_dir=str(tmp_path), images="ct")

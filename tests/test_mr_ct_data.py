"""MR/CT data: NIfTI I/O round trips, the synthetic phantom, the patient split, paired/unpaired batches,
2.5-D context, intensity maps, the decode cache and one clear error per broken input."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from ganlab.data.intensity import HU_MAX, HU_MIN, ct_to_unit, normalize_mr, unit_to_ct
from ganlab.data.mr_ct import MRCTDataModule
from ganlab.data.nifti import GEOMETRY_FIELDS, check_same_grid, read_volume, write_like
from ganlab.data.phantom import AIR, BONE, BRAIN, CSF, FAT, SOFT, TISSUES, write_phantom_dataset
from ganlab.errors import GanlabError

SHAPE = (40, 40, 12)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthrad") / "brain"
    write_phantom_dataset(root, n_patients=6, shape=SHAPE, seed=3)
    return root


def _dm(root: Path, cache: Path, **kw) -> MRCTDataModule:
    kw = {"image_size": 40, "val_patients": 2, "batch_size": 8, "min_mask_fraction": 0.0, **kw}
    return MRCTDataModule(root=str(root), cache_dir=str(cache), **kw)


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).astype(np.float64)


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_write_like_round_trip_keeps_geometry_and_values(tmp_path):
    # An oblique, anisotropic grid whose qform and sform differ, with their own codes.
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [-80.5, 12.25, 33.0]
    ref = nib.Nifti1Image(np.zeros((7, 6, 5), np.int16), affine)
    ref.set_qform(affine, code=1)
    shifted = affine.copy()
    shifted[:3, 3] += [0.5, 0.0, -1.0]
    ref.set_sform(shifted, code=4)
    ref.header.set_xyzt_units("mm", "sec")
    ref.header.set_dim_info(0, 1, 2)
    nib.save(ref, tmp_path / "ref.nii.gz")
    reference = nib.load(tmp_path / "ref.nii.gz")
    values = np.random.default_rng(0).integers(-1000, 2000, (7, 6, 5)).astype(np.float64)
    for dtype in (np.int16, np.float32):
        out = write_like(tmp_path / f"out_{np.dtype(dtype).name}.nii.gz", values, reference, dtype=dtype)
        back = nib.load(out)
        assert back.shape == reference.shape and back.get_data_dtype() == dtype
        np.testing.assert_array_equal(back.affine, reference.affine)
        np.testing.assert_array_equal(back.header.get_zooms(), reference.header.get_zooms())
        for form in ("qform", "sform"):
            matrix, code = getattr(back, f"get_{form}")(coded=True)
            ref_matrix, ref_code = getattr(reference, f"get_{form}")(coded=True)
            assert code == ref_code and code in (1, 4)
            np.testing.assert_array_equal(matrix, ref_matrix)
        for field in GEOMETRY_FIELDS:
            np.testing.assert_array_equal(back.header[field], reference.header[field], err_msg=field)
        np.testing.assert_array_equal(back.get_fdata(), values)
    with pytest.raises(GanlabError, match="bad.nii.gz.*shape"):
        write_like(tmp_path / "bad.nii.gz", values[:, :, :4], reference)


def test_phantom_is_deterministic_with_plausible_tissues(phantom, tmp_path):
    again = write_phantom_dataset(tmp_path / "again", n_patients=2, shape=SHAPE, seed=3)
    other = write_phantom_dataset(tmp_path / "other", n_patients=2, shape=SHAPE, seed=4)
    assert [p.name for p in again] == ["phantom000", "phantom001"]
    for kind in ("mr", "ct", "mask", "labels"):
        np.testing.assert_array_equal(_load(again[1] / f"{kind}.nii.gz"), _load(phantom / "phantom001" / f"{kind}.nii.gz"))
    assert not np.array_equal(_load(other[1] / "labels.nii.gz"), _load(again[1] / "labels.nii.gz"))
    assert not list(tmp_path.glob(".*tmp*"))  # the temp dir was renamed away

    labels, ct, mr, mask = (_load(phantom / "phantom002" / f"{k}.nii.gz") for k in ("labels", "ct", "mr", "mask"))
    assert set(np.unique(labels)) == set(range(len(TISSUES)))
    hu = {t: np.median(ct[labels == t]) for t in range(len(TISSUES))}
    assert abs(hu[AIR] + 1000) < 5 and abs(hu[FAT] + 100) < 15 and abs(hu[SOFT] - 40) < 10
    assert abs(hu[BRAIN] - 35) < 8 and abs(hu[CSF] - 10) < 8 and 1000 < hu[BONE] < 1600
    assert np.percentile(ct[labels == BONE], 5) > 900 and ct.min() >= HU_MIN
    # T1: bone and air both dark (the ambiguity), fat brightest, brain in between.
    sig = {t: np.median(mr[labels == t]) for t in range(len(TISSUES))}
    assert sig[AIR] < 0.15 * sig[BRAIN] and sig[BONE] < 0.15 * sig[BRAIN]
    assert sig[FAT] > sig[BRAIN] > sig[SOFT] > sig[CSF] > max(sig[AIR], sig[BONE])
    assert (labels[mask == 0] == AIR).all() and mask[labels != AIR].all()  # mask = the (filled) body
    # A frontal sinus: air inside the body, -1000 HU in CT, dark in MR like the bone around it.
    sinus = [(_load(d / "labels.nii.gz") == AIR) & (_load(d / "mask.nii.gz") > 0) for d in sorted(phantom.iterdir())
             if d.is_dir()]
    assert sum(s.any() for s in sinus) >= 3
    images = [nib.load(phantom / "phantom002" / f"{k}.nii.gz") for k in ("mr", "ct", "mask", "labels")]
    check_same_grid(images)
    assert images[0].header.get_zooms() == (1.0, 1.0, 2.5) and np.abs(images[0].affine[:3, 3]).min() > 1


def test_intensity_maps_are_exact_inverses():
    assert ct_to_unit(np.array([HU_MIN, HU_MAX, 988.0, -5000.0, 9000.0])).tolist() == [-1.0, 1.0, 0.0, -1.0, 1.0]
    hu = np.random.default_rng(0).uniform(HU_MIN, HU_MAX, 1000)
    np.testing.assert_allclose(unit_to_ct(ct_to_unit(hu)), hu, rtol=0, atol=1e-9)
    t = torch.linspace(-1, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(ct_to_unit(unit_to_ct(t)), t, rtol=0, atol=1e-12)
    assert unit_to_ct(torch.tensor([-3.0, 3.0])).tolist() == [HU_MIN, HU_MAX]
    # MR: statistics only inside the mask, so the huge values outside change nothing inside.
    vol = np.arange(1000.0).reshape(10, 10, 10)
    mask = np.zeros_like(vol)
    mask[2:8, 2:8, 2:8] = 1
    out = normalize_mr(vol, mask, "percentile", (0.0, 100.0))
    inside = vol[mask > 0]
    assert out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    assert out[mask > 0].min() == -1.0 and out[mask > 0].max() == 1.0
    np.testing.assert_allclose(out[5, 5, 5], 2 * (555 - inside.min()) / (inside.max() - inside.min()) - 1, atol=1e-6)
    z = normalize_mr(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), method="zscore")  # mean 2, std sqrt(2)
    np.testing.assert_allclose(z, (np.arange(5) - 2) / (3 * np.sqrt(2)), atol=1e-6)
    with pytest.raises(GanlabError, match="mr_norm"):
        normalize_mr(vol, method="minmax")


def test_split_is_by_patient_and_deterministic(phantom, tmp_path):
    dm = _dm(phantom, tmp_path, val_patients=0.34)
    again = _dm(phantom, tmp_path / "other_cache", val_patients=0.34)
    assert (dm.train_patients, dm.val_patients) == (again.train_patients, again.val_patients)
    assert len(dm.val_patients) == 2 and not set(dm.train_patients) & set(dm.val_patients)
    assert sorted(dm.train_patients + dm.val_patients) == [f"phantom{i:03d}" for i in range(6)]
    dm.setup()
    train_sources = {str(a["b"]) for a in dm.datasets["train"].volumes.arrays}
    assert train_sources == {str(dm.patients[p].arrays["b"]) for p in dm.train_patients}
    seen = torch.cat([b["patient"] for b in dm.val_dataloader()])
    assert seen.tolist() == sorted(seen.tolist()) and set(seen.tolist()) == {0, 1}


def _slice_index(dm: MRCTDataModule, ids: list[str], kind: str) -> dict[bytes, tuple[str, int]]:
    """Every slice of `kind` of these patients, by its exact bytes (as the loader crops it)."""
    index = {}
    for pid in ids:
        vol = np.load(dm.patients[pid].arrays[kind])
        for s in range(vol.shape[2]):
            index[vol[:, :, s].astype(np.float32).tobytes()] = (pid, s)
    return index


def test_paired_batches_come_from_one_slice(phantom, tmp_path):
    dm = _dm(phantom, tmp_path)
    by_ct = _slice_index(dm, dm.train_patients, "b")
    checked = 0
    for batch in dm.train_dataloader():
        for a, b, m in zip(batch["a"], batch["b"], batch["mask"]):
            pid, s = by_ct[b[0].numpy().tobytes()]
            labels = _load(dm.patients[pid].files["labels"])[:, :, s]
            air, bone = labels == AIR, labels == BONE
            assert (b[0].numpy()[air] < ct_to_unit(-900.0)).all() and (b[0].numpy()[bone] > ct_to_unit(700.0)).all()
            np.testing.assert_array_equal(a[0].numpy(), np.load(dm.patients[pid].arrays["a"])[:, :, s])
            np.testing.assert_array_equal(m[0].numpy(), _load(dm.patients[pid].files["mask"])[:, :, s])
            assert (m[0].numpy()[labels != AIR] == 1).all()
            checked += 1
    assert checked == len(dm.datasets["train"]) // 8 * 8
    val = next(iter(dm.val_dataloader()))
    tissue, b = val["tissue"][:, 0].numpy(), val["b"][:, 0].numpy()
    assert set(val) == {"a", "b", "mask", "patient", "slice", "tissue"} and val["slice"].tolist() == list(range(8))
    assert dm.tissues == TISSUES
    assert (b[tissue == AIR] < ct_to_unit(-900.0)).all() and (b[tissue == BONE] > ct_to_unit(700.0)).all()


def test_unpaired_disjoint_patients(phantom, tmp_path):
    dm = _dm(phantom, tmp_path, paired=False, disjoint_patients=True)
    assert not set(dm.mr_patients) & set(dm.ct_patients)
    assert sorted(dm.mr_patients + dm.ct_patients) == dm.train_patients
    mr_of = _slice_index(dm, dm.train_patients, "a")
    ct_of = _slice_index(dm, dm.train_patients, "b")
    mr_seen, ct_seen = set(), set()
    for batch in dm.train_dataloader():
        mr_seen |= {mr_of[a[0].numpy().tobytes()][0] for a in batch["a"]}
        ct_seen |= {ct_of[b[0].numpy().tobytes()][0] for b in batch["b"]}
    assert mr_seen == set(dm.mr_patients) and ct_seen == set(dm.ct_patients)
    with pytest.raises(GanlabError, match="data.paired=false"):
        _dm(phantom, tmp_path, paired=True, disjoint_patients=True)


def test_context_channels_and_restack(phantom, tmp_path):
    flat = _dm(phantom, tmp_path, axis=0, image_size=32)  # plane (40, 12): cropped to 32 rows, padded to 32 cols
    deep = _dm(phantom, tmp_path, axis=0, image_size=32, context=1, channels_a=3)
    flat.setup(), deep.setup()
    f_val, d_val = flat.datasets["val"], deep.datasets["val"]
    for i in (0, 1, 17, 39):
        a0, a1 = f_val[i]["a"], d_val[i]["a"]
        assert a0.shape == (1, 32, 32) and a1.shape == (3, 32, 32)
        torch.testing.assert_close(a1[1:2], a0, rtol=0, atol=0)
        below = f_val[max(i - 1, 0)]["a"] if i % 40 else a0  # edge slice: the missing neighbour is repeated
        torch.testing.assert_close(a1[0:1], below, rtol=0, atol=0)
    assert (f_val[0]["a"][0, :, 26:] == -1).all()  # padding is air
    # Re-stacking the val batches gives back each patient's volume (inside the crop).
    batches = list(flat.val_dataloader())
    b = torch.cat([x["b"] for x in batches])
    patient = torch.cat([x["patient"] for x in batches])
    full = flat.val_volume(1)
    vol = flat.restack(1, b[patient == 1])
    assert vol.shape == SHAPE and full["reference"].shape == SHAPE
    np.testing.assert_array_equal(vol[:, 4:36, :], full["b"][:, 4:36, :])
    assert (vol[:, :4] == -1).all() and full["tissue"].dtype == np.int64


def test_cache_avoids_redecoding(phantom, tmp_path, monkeypatch):
    calls = []
    real_load = nib.load
    monkeypatch.setattr(nib, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    dm = _dm(phantom, tmp_path)
    assert len(calls) == 6 * 4  # mr, ct, mask, labels of 6 patients, once each
    for _ in range(2):
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            list(loader)
    assert len(calls) == 24
    calls.clear()
    again = _dm(phantom, tmp_path)
    list(again.train_dataloader()), list(again.val_dataloader())
    assert calls == []  # a later run opens no NIfTI at all
    _dm(phantom, tmp_path, mr_norm="zscore")  # another normalisation: only the MR volumes are decoded again
    assert sorted(Path(c).name for c in calls) == ["mr.nii.gz"] * 6


def _bad(root: Path, case: str) -> str:
    """Break patient phantom001 (or the root) one way; return what the error must name."""
    p = root / "phantom001"
    image = nib.load(p / "mr.nii.gz")
    data = image.get_fdata()
    if case == "missing_ct":
        (p / "ct.nii.gz").unlink()
        return r"phantom001/ct\.nii\.gz"
    if case == "shape":
        write_like(p / "mr.nii.gz", data[:, :, :-1], nib.Nifti1Image(data[:, :, :-1], image.affine))
        return r"phantom001/mr\.nii\.gz.*shape.*phantom001/mask\.nii\.gz"
    if case == "affine":
        moved = image.affine.copy()
        moved[0, 3] += 0.5
        write_like(p / "ct.nii.gz", nib.load(p / "ct.nii.gz").get_fdata(), nib.Nifti1Image(data, moved))
        return r"phantom001/ct\.nii\.gz.*affine.*phantom001/mask\.nii\.gz"
    if case == "nan":
        data[3, 4, 5] = np.nan
        write_like(p / "mr.nii.gz", data, image)
        return r"phantom001/mr\.nii\.gz.*NaN"
    if case == "empty_mask":
        write_like(p / "mask.nii.gz", np.zeros(data.shape, np.uint8), image)
        return r"phantom001/mask\.nii\.gz.*empty"
    if case == "truncated":
        raw = (p / "ct.nii.gz").read_bytes()
        (p / "ct.nii.gz").write_bytes(raw[: len(raw) // 2])
        return r"phantom001/ct\.nii\.gz.*truncated"
    if case == "not_3d":
        write_like(p / "mr.nii.gz", data[..., None], nib.Nifti1Image(data[..., None], image.affine))
        return r"phantom001/mr\.nii\.gz.*3-D"
    if case == "garbage":
        (p / "mask.nii.gz").write_text("not a volume")
        return r"phantom001/mask\.nii\.gz: not a readable NIfTI"
    if case == "empty_root":
        for d in root.iterdir():
            (d.rename(root.parent / f"elsewhere_{d.name}") if d.is_dir() else d.unlink())
        return "data.root=.*no patient folders"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_ct", "shape", "affine", "nan", "empty_mask", "truncated", "not_3d",
                                  "garbage", "empty_root"])
def test_bad_inputs_name_the_file(case, tmp_path):
    root = tmp_path / "user" / "brain"
    write_phantom_dataset(root, n_patients=3, shape=(16, 16, 6), seed=1)
    pattern = _bad(root, case)
    before = _snapshot(root)
    with pytest.raises(GanlabError, match=pattern):
        _dm(root, tmp_path / "cache", val_patients=1, image_size=16)
    assert _snapshot(root) == before


def test_bad_keys_and_missing_root(phantom, tmp_path):
    with pytest.raises(GanlabError, match=r"data\.channels_a=1 but data\.context=1.*data\.channels_a=3"):
        _dm(phantom, tmp_path, context=1)
    with pytest.raises(GanlabError, match=r"data\.root=.*nowhere: no such directory"):
        _dm(tmp_path / "nowhere", tmp_path)
    with pytest.raises(GanlabError, match=r"data\.val_patients=6"):
        _dm(phantom, tmp_path, val_patients=6)
    with pytest.raises(GanlabError, match=r"missing\.nii\.gz: no such file"):
        read_volume(tmp_path / "missing.nii.gz")


def test_nothing_written_into_the_data_root(phantom, tmp_path):
    before = _snapshot(phantom)
    dm = _dm(phantom, tmp_path / "cache", paired=False, context=1, channels_a=3)
    list(dm.train_dataloader()), list(dm.val_dataloader()), dm.val_volume(0)
    assert _snapshot(phantom) == before and any((tmp_path / "cache" / "mr_ct_cache").glob("*.npy"))


def test_default_phantom_goes_through_the_same_loader(tmp_path):
    dm = MRCTDataModule(cache_dir=str(tmp_path), phantom={"n_patients": 3, "shape": [24, 24, 8], "seed": 0},
                        val_patients=1, image_size=24, batch_size=2)
    assert dm.root == tmp_path / "mr_ct_phantom_n3_24x24x8_seed0" and len(dm.patients) == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["a"].shape == (2, 1, 24, 24) and batch["a"].min() >= -1 and batch["a"].max() <= 1
    assert MRCTDataModule(cache_dir=str(tmp_path), phantom={"n_patients": 3, "shape": [24, 24, 8]},
                          val_patients=1, image_size=24).root == dm.root  # generated once, then reused


def test_config_instantiates_with_hydra(tmp_path):
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "data=mr_ct", f"paths.data_dir={tmp_path}", "data.context=2", "data.channels_a=5", "data.image_size=24",
            "data.val_patients=0.4", "data.phantom.n_patients=3", "data.phantom.shape=[24,24,8]"])
    dm = instantiate(cfg.data)
    assert (cfg.data.channels_a, cfg.data.channels_b) == (5, 1) and len(dm.val_patients) == 1
    assert next(iter(dm.val_dataloader()))["a"].shape == (4, 5, 24, 24)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_come_from_a_slice_first_copy_written_once(tmp_path, axis):
    from ganlab.data.slices import VolumeSlices

    rng = np.random.default_rng(axis)
    volume = rng.normal(size=(5, 6, 7)).astype(np.float32)
    mask = (rng.random((5, 6, 7)) > 0.5).astype(np.float32)
    arrays = {"a": tmp_path / "a.npy", "mask": tmp_path / "mask.npy"}
    np.save(arrays["a"], volume)
    np.save(arrays["mask"], mask)
    slices = VolumeSlices([arrays], [volume.shape], axis, size=8)
    for s in range(volume.shape[axis]):
        index = np.clip(np.arange(s - 1, s + 2), 0, volume.shape[axis] - 1)
        expected = np.moveaxis(np.take(volume, index, axis=axis), axis, 0)
        got = slices.take(0, "a", s, context=1)
        h, w = expected.shape[1:]
        top, left = (8 - h) // 2, (8 - w) // 2
        assert np.array_equal(got[:, top:top + h, left:left + w], expected)  # padded with air around it
    other = tuple(i for i in range(3) if i != axis)
    np.testing.assert_allclose(slices.mask_fractions(0), mask.mean(axis=other), rtol=1e-6)
    copies = sorted(p.name for p in tmp_path.glob("*.axis*.npy"))
    assert copies == ([] if axis == 0 else [f"a.axis{axis}.npy", f"mask.axis{axis}.npy"])
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.axis*.npy")}
    again = VolumeSlices([arrays], [volume.shape], axis, size=8)
    again.take(0, "a", 0)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.axis*.npy")} == stamps  # reused, not rewritten
    assert not list(tmp_path.glob(".*tmp"))

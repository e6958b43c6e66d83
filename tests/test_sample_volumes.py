"""`ganlab sample` on image-to-image runs: NIfTI volumes in, synthetic CT (or MR) volumes out on the same grid.

Most tests swap the run's model for a stand-in whose `translate` is a known intensity map of the centre
slice and its neighbours, so the expected HU of every voxel can be written down by hand: that proves
normalisation, slicing (axis, context), padding, cropping, stacking and the HU mapping. One test trains a
real tiny pix2pix through the console script and samples a phantom patient folder.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torchvision.io import decode_png, read_file

import ganlab.tasks.sample as sample_task
from ganlab.errors import GanlabError

MULTIPLE = 8


class StandIn(torch.nn.Module):
    """translate(a) = 0.5 centre + 0.25 (next - previous slice) + 0.1; translate(b) = 0.8 b - 0.05.

    Like the real generators it insists on square inputs whose side is a multiple of its stride."""

    size_multiple = MULTIPLE

    def __init__(self, directions: tuple[str, ...] = ("a2b", "b2a")) -> None:
        super().__init__()
        self.directions = directions
        self.seen: list[tuple[int, ...]] = []

    def translate(self, x: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        assert x.shape[-1] == x.shape[-2] and x.shape[-1] % MULTIPLE == 0, x.shape
        self.seen.append(tuple(x.shape))
        if direction == "b2a":
            return 0.8 * x - 0.05
        c = x.shape[1] // 2
        return 0.5 * x[:, c:c + 1] + 0.25 * (x[:, -1:] - x[:, :1]) + 0.1


def oblique_affine() -> np.ndarray:
    """Anisotropic voxels (1.2 x 0.8 x 2.5 mm), rotated about two axes, off-origin."""
    a, b = math.radians(20), math.radians(-35)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.2, 0.8, 2.5])
    affine[:3, 3] = [-71.5, 12.25, 40.0]
    return affine


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None, dtype=np.float32) -> Path:
    image = nib.Nifti1Image(data.astype(dtype), oblique_affine() if affine is None else affine)
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=2)  # codes differ from each other and from nibabel's defaults
    image.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def head(shape=(13, 11, 9), seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mr, mask, ct): random MR in scanner units, an ellipsoid body mask, a CT in HU."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = sum(g ** 2 for g in grid) < 0.8
    mr = np.where(mask, rng.uniform(200, 900, shape), rng.uniform(0, 20, shape))
    mr[0, 0, 0] = 50000.0  # a hot voxel outside the mask: the mask must keep it out of the statistics
    ct = np.where(mask, rng.uniform(-200, 1500, shape), -1000.0)
    return mr, mask, ct


def expected_sct(mr, mask, axis, context, method="percentile", percentiles=(2.0, 98.0)):
    """The stand-in's synthetic CT, by hand: normalise in the mask, neighbours clamped at the ends, HU."""
    values = mr[mask]
    if method == "percentile":
        lo, hi = np.percentile(values, percentiles)
    else:
        lo, hi = values.mean() - 3 * values.std(), values.mean() + 3 * values.std()
    unit = np.clip((mr - lo) * 2 / (hi - lo) - 1, -1, 1)
    n = mr.shape[axis]
    idx = np.arange(n)
    prev = np.take(unit, np.clip(idx - context, 0, n - 1), axis=axis)
    nxt = np.take(unit, np.clip(idx + context, 0, n - 1), axis=axis)
    y = np.clip(0.5 * unit + 0.25 * (nxt - prev) + 0.1, -1, 1)
    return (y + 1) * 2012.0 - 1024.0


def make_run(root: Path, axis=2, context=1, method="percentile", percentiles=(2.0, 98.0), image_size=8,
             target="ganlab.models.pix2pix.Pix2Pix") -> tuple[Path, object]:
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"stand-in")
    cfg = OmegaConf.create({"model": {"_target_": target}, "data": {
        "_target_": "ganlab.data.mr_ct.MRCTDataModule", "axis": axis, "context": context, "mr_norm": method,
        "mr_percentiles": list(percentiles), "image_size": image_size, "channels_a": 2 * context + 1}})
    OmegaConf.save(cfg, run / "config.yaml")
    (run / "run.yaml").write_text("status: completed\nlast_checkpoint: checkpoints/last.ckpt\n")
    return run, cfg


def sample(run: Path, model, run_cfg, monkeypatch, *overrides: str) -> Path:
    """In-process `ganlab sample run=<run> ...` with the run's model replaced by `model`."""
    monkeypatch.setattr(sample_task, "load_model", lambda ref, device: (model, run_cfg))
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name="sample", overrides=[f"run={run}", "device=cpu", *overrides])
    return sample_task.sample(cfg)


def assert_same_grid(written: Path, source: Path) -> None:
    out, ref = nib.load(str(written)), nib.load(str(source))
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.header.get_zooms() == ref.header.get_zooms()
    for form in ("get_qform", "get_sform"):
        (a, code_a), (b, code_b) = getattr(out, form)(coded=True), getattr(ref, form)(coded=True)
        assert code_a == code_b and code_a > 0
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("axis,context,method", [(0, 1, "percentile"), (1, 1, "zscore"), (2, 1, "percentile"),
                                                 (2, 0, "percentile")])
def test_volume_round_trip_values_and_grid(tmp_path, monkeypatch, axis, context, method):
    mr, mask, _ = head()
    src = save(tmp_path / "data" / "p7" / "mr.nii.gz", mr)
    save(tmp_path / "data" / "p7" / "mask.nii.gz", mask, dtype=np.uint8)
    run, run_cfg = make_run(tmp_path, axis=axis, context=context, method=method)
    model = StandIn()
    out = sample(run, model, run_cfg, monkeypatch, f"input={tmp_path / 'data'}", "batch_size=4")

    assert out.parent == run / "samples"
    written = out / "p7_sct.nii.gz"
    assert_same_grid(written, src)
    sct = nib.load(str(written)).get_fdata()
    np.testing.assert_allclose(sct, expected_sct(mr, mask, axis, context, method), atol=0.05)
    # Odd in-plane sizes were padded to a square multiple of the stride, in batches of at most 4, channels 2k+1.
    plane = [s for i, s in enumerate(mr.shape) if i != axis]
    side = max(plane) + -max(plane) % MULTIPLE
    assert {s[1:] for s in model.seen} == {(2 * context + 1, side, side)}
    assert sum(s[0] for s in model.seen) == mr.shape[axis] and max(s[0] for s in model.seen) <= 4
    info = yaml.safe_load((out / "sample.yaml").read_text())
    assert info["axis"] == axis and info["mr_norm"] == method and info["volumes"]["p7"]["output"] == written.name


def test_single_file_with_reference_writes_panels_and_metrics(tmp_path, monkeypatch):
    mr, mask, ct = head(shape=(12, 10, 9))
    src = save(tmp_path / "case.nii", mr)
    save(tmp_path / "ct.nii.gz", ct, dtype=np.int16)
    run, run_cfg = make_run(tmp_path, axis=2, context=1, image_size=16)
    model = StandIn()
    out = sample(run, model, run_cfg, monkeypatch, f"input={src}", f"reference={tmp_path / 'ct.nii.gz'}",
                 f"output={tmp_path / 'elsewhere'}", "panel_slices=3")
    assert out.parent == tmp_path / "elsewhere" and not (run / "samples").exists()
    assert {s[-1] for s in model.seen} == {16}  # never smaller than the training image size
    sct = nib.load(str(out / "case_sct.nii.gz")).get_fdata()
    # No mask given for a single file: the whole volume's percentiles.
    np.testing.assert_allclose(sct, expected_sct(mr, np.ones_like(mask), 2, 1), atol=0.05)
    metrics = yaml.safe_load((out / "sample.yaml").read_text())["volumes"]["case"]["metrics"]
    ct_clip, sct_clip = np.clip(ct, -1024, 3000), np.clip(sct, -1024, 3000)
    assert metrics["mae_hu"] == pytest.approx(np.abs(ct - sct).mean(), rel=1e-4)
    mse = ((ct_clip - sct_clip) ** 2).mean()
    assert metrics["psnr"] == pytest.approx(10 * np.log10(4024 ** 2 / mse), rel=1e-4)
    assert -1 <= metrics["ssim"] <= 1
    png = decode_png(read_file(str(out / "case_panels.png")))
    assert png.shape[0] in (3, 4) and png.shape[2] > png.shape[1] > 200  # 4 columns, 3 rows
    # mask= normalises inside the body, as training did.
    save(tmp_path / "case_mask.nii.gz", mask, dtype=np.uint8)
    out = sample(run, model, run_cfg, monkeypatch, f"input={src}", f"mask={tmp_path / 'case_mask.nii.gz'}")
    np.testing.assert_allclose(nib.load(str(out / "case_sct.nii.gz")).get_fdata(), expected_sct(mr, mask, 2, 1),
                               atol=0.05)


def test_folder_of_files_and_earlier_samples_untouched(tmp_path, monkeypatch):
    run, run_cfg = make_run(tmp_path)
    earlier = run / "samples" / "2020-01-01_00-00-00"
    earlier.mkdir(parents=True)
    (earlier / "keep.txt").write_text("old")
    for i, name in enumerate(["a.nii.gz", "b.nii", "c.nii.gz"]):
        save(tmp_path / "in" / name, head(seed=i)[0])
    (tmp_path / "in" / "notes.txt").write_text("not a volume")
    first = sample(run, StandIn(), run_cfg, monkeypatch, f"input={tmp_path / 'in'}")
    second = sample(run, StandIn(), run_cfg, monkeypatch, f"input={tmp_path / 'in'}")
    assert first != second
    for out in (first, second):
        assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a_sct.nii.gz", "b_sct.nii.gz", "c_sct.nii.gz"]
    assert (earlier / "keep.txt").read_text() == "old" and sorted(p.name for p in earlier.iterdir()) == ["keep.txt"]


def test_one_patient_folder(tmp_path, monkeypatch):
    """input= a patient's own folder: its MR is translated (not its CT and mask), named after the patient."""
    mr, mask, ct = head()
    for name, volume in {"mr": mr, "mask": mask, "ct": ct}.items():
        save(tmp_path / "1BA001" / f"{name}.nii.gz", volume)
    run, run_cfg = make_run(tmp_path, axis=0, context=1)
    out = sample(run, StandIn(), run_cfg, monkeypatch, f"input={tmp_path / '1BA001'}")
    assert sorted(p.name for p in out.iterdir()) == ["1BA001_panels.png", "1BA001_sct.nii.gz", "metrics.csv",
                                                     "sample.yaml"]
    sct = nib.load(str(out / "1BA001_sct.nii.gz")).get_fdata()
    np.testing.assert_allclose(sct, expected_sct(mr, mask, 0, 1), atol=0.05)


def test_b2a_writes_normalised_mr(tmp_path, monkeypatch):
    _, _, ct = head()
    src = save(tmp_path / "ct.nii.gz", ct, dtype=np.int16)
    run, run_cfg = make_run(tmp_path, axis=1, context=1, target="ganlab.models.cyclegan.CycleGAN")
    model = StandIn()
    out = sample(run, model, run_cfg, monkeypatch, f"input={src}", "direction=b2a")
    assert_same_grid(out / "ct_smr.nii.gz", src)
    smr = nib.load(str(out / "ct_smr.nii.gz")).get_fdata()
    stored = nib.load(str(src)).get_fdata()  # int16 on disk
    unit = (np.clip(stored, -1024, 3000) + 1024) / 2012.0 - 1
    np.testing.assert_allclose(smr, 0.8 * unit - 0.05, atol=1e-5)
    assert {s[1] for s in model.seen} == {1}  # CT in: one channel, no MR context


def errors(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    mr, mask, ct = head()
    save(tmp_path / "mr.nii.gz", mr)
    save(tmp_path / "shifted_ct.nii.gz", ct, affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    save(tmp_path / "4d.nii.gz", np.zeros((9, 9, 9, 2)))
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b garbage")
    (tmp_path / "volume.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    return {
        "missing": ([f"input={tmp_path / 'nope.nii.gz'}"], "no such file or folder"),
        "not nifti": ([f"input={tmp_path / 'volume.txt'}"], "expected a NIfTI file"),
        "corrupt": ([f"input={tmp_path / 'corrupt.nii.gz'}"], "not a readable NIfTI"),
        "4-D": ([f"input={tmp_path / '4d.nii.gz'}"], "expected a 3-D volume"),
        "empty folder": ([f"input={tmp_path / 'empty'}"], "no *.nii.gz"),
        "pix2pix b2a": ([f"input={tmp_path / 'mr.nii.gz'}", "direction=b2a"], "only translates a2b"),
        "bad direction": ([f"input={tmp_path / 'mr.nii.gz'}", "direction=up"], "expected a2b"),
        "reference grid": ([f"input={tmp_path / 'mr.nii.gz'}", f"reference={tmp_path / 'shifted_ct.nii.gz'}"],
                           "affine differs"),
        "no input": ([], "give input="),
    }


def test_clear_errors(tmp_path, monkeypatch):
    run, run_cfg = make_run(tmp_path)
    for case, (overrides, message) in errors(tmp_path).items():
        with pytest.raises(GanlabError, match=message.replace("*", r"\*")) as info:
            sample(run, StandIn(directions=("a2b",)), run_cfg, monkeypatch, *overrides)
        assert "\n" not in str(info.value), case
    assert not (run / "samples").exists() or not any((run / "samples").iterdir())  # no empty sample dirs left


def test_input_refused_on_a_gan_run(tmp_path, monkeypatch):
    run, _ = make_run(tmp_path)
    gan_cfg = OmegaConf.create({"model": {"_target_": "ganlab.models.gan.GAN"}, "data": {}})
    gan = torch.nn.Linear(1, 1)
    gan.generate = lambda z, y=None: z
    with pytest.raises(GanlabError, match="only image-to-image runs"):
        sample(run, gan, gan_cfg, monkeypatch, f"input={tmp_path / 'mr.nii.gz'}")


def test_trained_pix2pix_samples_a_phantom_patient(tmp_path, data_dir):
    """End to end through the console script: a tiny 2.5-D pix2pix run, then its held-out phantom patient
    sampled as a whole volume, which must score exactly what the run's own validation scored on it."""
    from conftest import manifest, run_dirs, run_ganlab, tiny_overrides

    from ganlab.data.mr_ct import split_patients

    experiment = "pix2pix_mr2ct"
    phantom = ["data.phantom.n_patients=3", "data.phantom.shape=[20,27,10]", "data.val_patients=1"]
    run_ganlab("train", f"+experiment={experiment}", *tiny_overrides(experiment), f"paths.data_dir={data_dir}",
               *phantom, "data.image_size=32", "model.g_ab.depth=5", "data.context=1", "data.channels_a=3",
               "trainer.limit_val_batches=1.0", "logger=none", cwd=tmp_path)
    (run,) = run_dirs(tmp_path, experiment)
    (root,) = data_dir.glob("mr_ct_phantom_n3_20x27x10*")
    _, (held_out,) = split_patients([f"phantom{i:03d}" for i in range(3)], 1, 0)
    patients = tmp_path / "patients"
    patients.mkdir()
    (patients / held_out).symlink_to(root / held_out, target_is_directory=True)

    proc = run_ganlab("sample", f"run={run}", f"input={patients}", "batch_size=3", cwd=tmp_path)
    (out,) = (run / "samples").iterdir()
    assert str(out) in proc.stdout
    assert_same_grid(out / f"{held_out}_sct.nii.gz", root / held_out / "mr.nii.gz")
    sct = nib.load(str(out / f"{held_out}_sct.nii.gz")).get_fdata()
    assert sct.min() >= -1024 and sct.max() <= 3000 and sct.std() > 0
    info = yaml.safe_load((out / "sample.yaml").read_text())["volumes"][held_out]
    assert info["mask"].endswith("mask.nii.gz") and (out / info["panel"]).is_file()
    ct = nib.load(str(root / held_out / "ct.nii.gz")).get_fdata()
    mask = nib.load(str(root / held_out / "mask.nii.gz")).get_fdata() > 0
    assert info["metrics"]["mae_hu"] == pytest.approx(np.abs(ct - sct)[mask].mean(), rel=1e-4)
    # Same normalisation, context, padding and HU mapping as training, and validation scores the volume on the
    # original grid (padding cropped away): the run's validation numbers again, every one of them.
    val = manifest(run)["metrics"]
    assert {"mae_hu", "psnr", "ssim", "mae_air", "mae_bone", "mae_soft_tissue", "mae_brain"} <= set(info["metrics"])
    assert {f"val/{k}" for k in info["metrics"]} <= set(val)
    for key in info["metrics"]:
        assert info["metrics"][key] == pytest.approx(val[f"val/{key}"], rel=1e-3, abs=1e-3), key
    # The same numbers as CSV tables, per volume (sample) and per validation and patient (train).
    (row,) = list(csv.DictReader((out / "metrics.csv").open()))
    assert row["volume"] == held_out
    assert all(float(row[k]) == pytest.approx(v, rel=1e-5) for k, v in info["metrics"].items())
    history = list(csv.DictReader((run / "val_patients.csv").open()))
    assert {r["patient"] for r in history} == {held_out} and len(history) == len({r["step"] for r in history})
    assert int(history[-1]["step"]) == manifest(run)["global_step"]
    assert float(history[-1]["mae_hu"]) == pytest.approx(val["val/mae_hu"], rel=1e-5)

    # The real model's refusals, in-process (the CLI's one-line error for a GanlabError is tested elsewhere).
    for overrides, message in [([f"input={patients}", "direction=b2a"], "only translates a2b"), ([], "give input=")]:
        with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
            cfg = compose(config_name="sample", overrides=[f"run={run}", "device=cpu", *overrides])
        with pytest.raises(GanlabError, match=message):
            sample_task.sample(cfg)
    assert len(list((run / "samples").iterdir())) == 1

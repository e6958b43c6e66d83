"""End to end through the installed `ganlab` console script, as a user would type it."""

from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.io import decode_png, read_file

from conftest import EXPERIMENTS, TINY, manifest, run_dirs, run_ganlab, tiny_overrides


def _tensorboard_tags(run_dir: Path) -> dict[str, list[str]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return acc.Tags()


def test_experiments_are_found():
    assert {"gan_gaussian", "gan_mnist"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_train_then_sample(experiment, tmp_path, data_dir):
    run_ganlab("train", f"+experiment={experiment}", *tiny_overrides(experiment), f"paths.data_dir={data_dir}",
               cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path, experiment)
    info = manifest(run_dir)
    assert info["status"] == "completed" and info["global_step"] == 8
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "${" not in (run_dir / "config.yaml").read_text() and resolved["paths"]["output_dir"] == str(run_dir)
    assert any(k.startswith("val/") for k in info["metrics"])  # final held-out validation ran
    tags = _tensorboard_tags(run_dir)

    if "g_ab" in resolved["model"]:  # image-to-image (pix2pix, CycleGAN): losses, SynthRAD metrics, panels
        assert {"train/loss_d", "train/loss_g", "val/mae_hu", "val/psnr", "val/ssim"} <= set(tags["scalars"])
        assert "val/mr_sct_ct_error" in tags["images"]
        assert 0 < info["metrics"]["val/mae_hu"] < 4024 and -1 <= info["metrics"]["val/ssim"] <= 1
        assert any(k.startswith("val/mae_") and k != "val/mae_hu" for k in info["metrics"])  # per tissue
        return  # `ganlab sample` of NIfTI volumes is tested with the MR/CT data

    if "generator" not in resolved["model"]:  # a classifier: accuracy logged, nothing to sample
        assert {"train/loss", "train/acc", "val/acc"} <= set(tags["scalars"])
        assert 0 <= info["metrics"]["val/acc"] <= 1
        proc = run_ganlab("sample", "run=latest", cwd=tmp_path, check=False)
        assert proc.returncode != 0 and "not a GAN run" in proc.stderr and "Traceback" not in proc.stderr
        return

    assert {"train/loss_d", "train/loss_g"} <= set(tags["scalars"])
    assert {"train/D(x)", "train/D(G(z))"} <= set(tags["scalars"]) or "train/D_score(x)" in tags["scalars"]
    conditional = resolved["model"]["generator"].get("num_classes", 0) > 0
    if resolved["data"]["_target_"] == "ganlab.data.mnist.MNISTDataModule":  # image metrics with no extra step
        image_metrics = {"val/fid", "val/kid", "val/precision", "val/recall", *(["val/cond_acc"] * conditional)}
        assert image_metrics <= set(info["metrics"]) and image_metrics <= set(tags["scalars"])
        assert 0 < info["metrics"]["val/fid"] and 0 <= info["metrics"]["val/precision"] <= 1
    proc = run_ganlab("sample", "run=latest", "n=6", cwd=tmp_path)
    (out,) = (run_dir / "samples").iterdir()
    assert str(out) in proc.stdout
    saved = torch.load(out / "samples.pt", weights_only=True)
    samples = saved["samples"]
    shape = tuple(resolved["model"]["generator"]["out_shape"])
    if conditional:  # one row of n per class, labels saved alongside
        classes = resolved["model"]["generator"]["num_classes"]
        assert samples.shape == (classes * 6, *shape)
        assert saved["labels"].tolist() == [c for c in range(classes) for _ in range(6)]
        samples = samples[:6]
    assert samples.shape == (6, *shape) and torch.isfinite(samples).all()
    if len(shape) == 3:
        assert "samples/fixed_noise" in tags["images"]
        assert samples.min() >= -1 and samples.max() <= 1
        grid = decode_png(read_file(str(out / "grid.png")))
        assert grid.shape[0] == shape[0] and grid.shape[1] > shape[1] and grid.shape[2] >= 3 * shape[2]
        fixed_label = [f"labels=[{classes - 1},0]"] if conditional else []
        run_ganlab("sample", f"run={run_dir}", "interpolate=true", "steps=5", "rows=2", *fixed_label, cwd=tmp_path)
        strip = max((run_dir / "samples").iterdir(), key=lambda p: p.name)
        interpolation = torch.load(strip / "interpolation.pt", weights_only=True)
        assert interpolation["samples"].shape == (2, 5, *shape)
        if conditional:
            assert interpolation["labels"].tolist() == [[classes - 1] * 5, [0] * 5]
        assert (strip / "interpolation.png").is_file()
    elif shape == (1,):
        assert "samples/density" in tags["images"] and "samples/generated" in tags["histograms"]
        assert (out / "histogram.png").is_file()
        run_ganlab("sample", f"run={run_dir}", "interpolate=true", "steps=5", "rows=2", cwd=tmp_path)
        strip = max((run_dir / "samples").iterdir(), key=lambda p: p.name)
        assert torch.load(strip / "interpolation.pt", weights_only=True)["samples"].shape == (2, 5, 1)
        assert decode_png(read_file(str(strip / "interpolation.png"))).shape[0] in (3, 4)
    else:  # 2-D mixtures: a scatter over the mode centres, and PacGAN's mode count
        assert shape == (2,) and "samples/scatter" in tags["images"] and "samples/collapse_strip" in tags["images"]
        assert 0 <= info["metrics"]["val/modes_captured"] <= 25 and 0 <= info["metrics"]["val/high_quality"] <= 1
        assert decode_png(read_file(str(out / "scatter.png"))).shape[0] in (3, 4)
        assert decode_png(read_file(str(out / "collapse_strip.png"))).shape[0] in (3, 4)  # from the checkpoint


def test_multirun_sweep_gives_each_job_its_own_run_dir(tmp_path):
    run_ganlab("train", "-m", "+experiment=gan_gaussian", *TINY, "model.lr_g=1e-4,2e-4", "seed=0,1", cwd=tmp_path)
    runs = run_dirs(tmp_path, "gan_gaussian")
    assert len(runs) == 4 and len({r.parent for r in runs}) == 1 and runs[0].parent.name.startswith("multirun_")
    combos = set()
    for run_dir in runs:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        combos.add((cfg["model"]["lr_g"], cfg["seed"]))
        assert manifest(run_dir)["status"] == "completed"
    assert combos == {(1e-4, 0), (1e-4, 1), (2e-4, 0), (2e-4, 1)}


def test_loss_switch_is_recorded(tmp_path, data_dir):
    run_ganlab("train", "+experiment=gan_mnist", *TINY, "model.loss=minimax", "trainer.max_steps=2",
               f"paths.data_dir={data_dir}", "logger=none", cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path, "gan_mnist")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["loss"] == "minimax"


def test_help_lists_verbs_and_config_groups(tmp_path):
    proc = run_ganlab("--help", cwd=tmp_path)
    assert "train" in proc.stdout and "sample" in proc.stdout
    proc = run_ganlab("train", "--help", cwd=tmp_path)
    assert "Configuration groups" in proc.stdout
    section = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = {line.split(":")[0].strip(): line.split(":", 1)[1] for line in section.splitlines() if ": " in line}
    for group, options in {"data": ["gaussian", "mnist"], "model": ["gan", "dcgan", "cgan"],
                           "experiment": ["gan_gaussian", "gan_mnist"], "trainer": ["cpu", "ddp"]}.items():
        assert set(options) <= {o.strip() for o in groups[group].split(",")}, (group, groups.get(group))


def test_cfg_job_prints_composed_config(tmp_path):
    proc = run_ganlab("train", "+experiment=gan_gaussian", "--cfg", "job", cwd=tmp_path)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["_target_"] == "ganlab.models.gan.GAN" and cfg["data"]["mean"] == 4.0
    assert not (tmp_path / "outputs").exists()

"""`ganlab explain` end to end on a tiny classifier and a tiny DCGAN, each trained once for this module.

The console script is checked as a user runs it (files written, one-line errors); the numbers in its
outputs are checked against the run's own network: scores are its probabilities / D logits, maps are what
the methods give when called directly, inputs are the dataset's samples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from torchvision.io import decode_png, read_file, write_png

from conftest import run_dirs, run_ganlab, tiny_overrides
from ganlab.data.mnist import MNISTDataModule
from ganlab.errors import GanlabError
from ganlab.explain import IntegratedGradients, SmoothGrad
from ganlab.explain.cam import GradCAM
from ganlab.runs import load_model, resolve_run
from ganlab.tasks.explain import explain

PANEL_ORDER = ["guided_backprop", "gradcam", "guided_gradcam", "occlusion", "cam", "deconvnet", "integrated_gradients"]


def _train(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, experiment: str) -> tuple[Path, Path]:
    cwd = tmp_path_factory.mktemp(experiment)
    run_ganlab("train", f"+experiment={experiment}", *tiny_overrides(experiment), f"paths.data_dir={data_dir}",
               cwd=cwd)
    (run_dir,) = run_dirs(cwd, experiment)
    return cwd, run_dir


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, data_dir):
    return _train(tmp_path_factory, data_dir, "classifier_mnist")


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory, data_dir):
    return _train(tmp_path_factory, data_dir, "dcgan_mnist")


@pytest.fixture(scope="module")
def val_images(data_dir):
    datamodule = MNISTDataModule(cache_dir=str(data_dir))
    datamodule.setup()
    return datamodule.datasets["val"]


def _png_hw(path: Path) -> tuple[int, int]:
    image = decode_png(read_file(str(path)))
    return image.shape[1], image.shape[2]


def _panel_hw(rows: int, cols: int) -> tuple[int, int]:
    """By hand from figures.py: 100 dpi, 1.6 in per cell, 0.4 in of column titles, 1.4 in of row labels."""
    return round(100 * (0.4 + 1.6 * rows)), round(100 * (1.4 + 1.6 * cols))


def _outputs(run_dir: Path) -> list[Path]:
    out = run_dir / "explain"
    return sorted(out.iterdir()) if out.is_dir() else []


def _explain_in_process(run_dir: Path, *overrides: str) -> Path:
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name="explain", overrides=[f"run={run_dir}", "device=cpu", *overrides])
    return explain(cfg)


def test_all_methods_two_targets_evaluated(classifier_run, val_images):
    cwd, run_dir = classifier_run
    proc = run_ganlab("explain", "run=latest", "method=all", "indices=[0,1]", "targets=[3,5]", "evaluate=true",
                      cwd=cwd)
    (out,) = _outputs(run_dir)
    assert str(out) in proc.stdout and "deletion_auc" in proc.stdout
    assert _png_hw(out / "panel.png") == _panel_hw(rows=4, cols=8)  # 2 images x 2 targets; original + 7
    assert sorted(p.name for p in out.glob("*.png")) == ["panel.png"]  # per-method PNGs: one method only

    saved = torch.load(out / "maps.pt", weights_only=True)
    inputs, maps = saved["inputs"], saved["maps"]
    assert list(maps) == PANEL_ORDER
    for name, m in maps.items():
        assert m.shape[0] == 4 and m.shape[1] == 1 and m.shape[2:] == (28, 28) and torch.isfinite(m).all(), name
    # One row per (image, target), image-major, the images being the val split's samples 0 and 1.
    assert saved["indices"].tolist() == [0, 0, 1, 1] and saved["targets"].tolist() == [3, 5, 3, 5]
    assert torch.equal(inputs[0], val_images[0]["image"]) and torch.equal(inputs[1], inputs[0])
    assert torch.equal(inputs[2], val_images[1]["image"])
    assert saved["labels"].tolist() == [int(val_images[i]["label"]) for i in (0, 0, 1, 1)]

    # Scores and maps are the run's network's own: p(target) and Grad-CAM for each row's target.
    model, _ = load_model(resolve_run(str(run_dir), cwd), "cpu")
    with torch.no_grad():
        probs = torch.softmax(model.net(inputs), dim=1)
    assert torch.allclose(saved["scores"], probs[torch.arange(4), saved["targets"]], atol=1e-5)
    assert torch.allclose(maps["gradcam"], GradCAM(model.net).attribute(inputs, saved["targets"]), atol=1e-5)
    assert not torch.allclose(maps["guided_backprop"][0], maps["guided_backprop"][1])  # class 3 vs 5

    manifest = yaml.safe_load((out / "explain.yaml").read_text())
    assert manifest["methods"] == PANEL_ORDER and manifest["skipped"] == {}
    assert manifest["run"] == str(run_dir) and manifest["checkpoint"].endswith(".ckpt")
    assert manifest["targets"] == [3, 5, 3, 5] and manifest["indices"] == [0, 0, 1, 1]
    assert manifest["options"]["occlusion"]["window"] == 8
    assert set(manifest["evaluation"]) == set(PANEL_ORDER)
    for name, scores in manifest["evaluation"].items():
        assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1, name
        assert 0 <= scores["road_morf"] <= 1 and 0 <= scores["road_lerf"] <= 1, name
        similarity = scores["randomisation_similarity"]
        assert similarity is None or -1 <= similarity <= 1, name
        assert "centre_mass" not in scores  # PCam only
        assert scores["checkerboard"] >= 0, name  # 28x28: an even grid, so the 2-pixel share is defined


def test_pcam_scores_the_label_box_the_data_declares(tmp_path_factory, data_dir):
    """PCam's datamodule declares the centre box that decides its label; evaluate=true reports the share of
    attribution inside it, recomputed here by hand from the saved maps."""
    _, run_dir = _train(tmp_path_factory, data_dir, "classifier_pcam")
    # guided backprop: a tiny, briefly trained net's Grad-CAM may be blank (no mass to share)
    out = _explain_in_process(run_dir, "method=guided_backprop", "indices=[0,1]", "evaluate=true",
                              f"output={tmp_path_factory.mktemp('pcam_explain')}")
    scores = yaml.safe_load((out / "explain.yaml").read_text())["evaluation"]["guided_backprop"]
    positive = torch.load(out / "maps.pt", weights_only=True)["maps"]["guided_backprop"].sum(1).clamp(min=0)
    inside = positive[:, 32:64, 32:64].flatten(1).sum(1) / positive.flatten(1).sum(1)
    assert scores["centre_mass"] == pytest.approx(float(inside.nanmean()), abs=1e-3)


def test_image_file_predicted_class(classifier_run, val_images, tmp_path):
    cwd, run_dir = classifier_run
    digit = val_images[0]["image"]
    # An RGB file at twice the size: read back as one grey channel, resized to the run's 28x28.
    rgb = ((digit + 1) * 127.5).round().to(torch.uint8).repeat(3, 1, 1).repeat_interleave(2, 1).repeat_interleave(2, 2)
    write_png(rgb, str(tmp_path / "digit.png"))
    before = _outputs(run_dir)
    run_ganlab("explain", f"run={run_dir}", "method=gradcam", f"images=[{tmp_path / 'digit.png'}]",
               "explainers.gradcam.layer=features.2", cwd=tmp_path)
    (out,) = sorted(set(_outputs(run_dir)) - set(before))
    saved = torch.load(out / "maps.pt", weights_only=True)
    assert list(saved["maps"]) == ["gradcam"] and saved["inputs"].shape == (1, 1, 28, 28)
    assert (saved["inputs"][0] - digit).abs().mean() < 0.1  # antialiased downsampling blurs edges a little
    model, _ = load_model(resolve_run(str(run_dir), cwd), "cpu")
    with torch.no_grad():
        predicted = model.net(saved["inputs"]).argmax(1)
    assert saved["targets"].tolist() == predicted.tolist() and saved["indices"].tolist() == [-1]
    expected = GradCAM(model.net, layer="features.2").attribute(saved["inputs"], predicted)
    assert torch.allclose(saved["maps"]["gradcam"], expected, atol=1e-5)
    manifest = yaml.safe_load((out / "explain.yaml").read_text())
    assert manifest["paths"] == [str(tmp_path / "digit.png")] and manifest["source"] == "images"
    assert manifest["options"]["gradcam"]["layer"] == "features.2"
    assert _png_hw(out / "panel.png") == _panel_hw(rows=1, cols=2) and (out / "gradcam.png").is_file()


def test_smoothed_integrated_gradients(classifier_run, tmp_path):
    cwd, run_dir = classifier_run  # in-process: the maps are compared with the methods called directly
    out = _explain_in_process(run_dir, "method=integrated_gradients", "smooth=2", "smooth_sigma=0.1",
                              "indices=[0,1]", "explainers.integrated_gradients.baseline=-1")
    saved = torch.load(out / "maps.pt", weights_only=True)
    m = saved["maps"]["integrated_gradients"]
    assert m.shape == (2, 1, 28, 28) and torch.isfinite(m).all() and (out / "integrated_gradients.png").is_file()
    model, _ = load_model(resolve_run(str(run_dir), cwd), "cpu")
    ig = IntegratedGradients(model.net, steps=32, baseline=-1)
    expected = SmoothGrad(ig, samples=2, sigma=0.1, seed=0).attribute(saved["inputs"], saved["targets"])
    assert torch.allclose(m, expected, atol=1e-5) and not torch.allclose(m, ig.attribute(saved["inputs"],
                                                                                         saved["targets"]))
    manifest = yaml.safe_load((out / "explain.yaml").read_text())
    assert manifest["methods"] == ["integrated_gradients"] and manifest["smooth"] == 2
    assert manifest["smooth_sigma"] == 0.1 and manifest["options"]["integrated_gradients"]["baseline"] == -1

    proc = run_ganlab("explain", f"run={run_dir}", "method=integrated_gradients", "smooth=-1", cwd=tmp_path,
                      check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "ganlab explain: error: smooth=-1: expected an integer >= 0" in proc.stderr, proc.stderr
    for args, message in ((["smooth=1.5"], "smooth=1.5: expected an integer >= 0"),
                          (["smooth=2", "smooth_sigma=0"], "smooth_sigma=0: expected a positive number"),
                          (["explainers.integrated_gradients.steps=0"], "steps must be an integer >= 1")):
        with pytest.raises(GanlabError, match=message):
            _explain_in_process(run_dir, "method=integrated_gradients", *args)


def test_cascading_randomisation(classifier_run, tmp_path):
    cwd, run_dir = classifier_run  # in-process for the outputs; the console script for the one-line error
    out = _explain_in_process(run_dir, "sanity=cascade", "indices=[0,1]", "method=all", f"output={tmp_path / 'ok'}")
    assert {p.name for p in out.glob("*.png")} == {"panel.png", "cascade.png", "cascade_curves.png"}
    model, _ = load_model(resolve_run(str(run_dir), cwd), "cpu")
    # By hand: one step per conv / linear layer of the run's classifier, top first, after the trained model.
    weighted = [name for name, m in model.net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    manifest = yaml.safe_load((out / "explain.yaml").read_text())
    cascade = manifest["cascade"]
    assert cascade["layers"] == ["trained", *reversed(weighted)] and manifest["evaluation"] is None
    assert set(cascade) == {"layers", *PANEL_ORDER} and cascade["guided_backprop"]["hog"][0] == pytest.approx(1)
    for name in PANEL_ORDER:
        assert set(cascade[name]) == {"spearman", "ssim", "hog"}, name
        for measure, means in cascade[name].items():
            assert len(means) == len(cascade["layers"]), (name, measure)
            assert means[0] is None or means[0] == pytest.approx(1, abs=1e-4), (name, measure)  # None: constant maps
            assert all(m is None or -1 <= m <= 1 + 1e-6 for m in means), (name, measure)
    # One row per method, the original and the trained map before the randomised layers.
    assert _png_hw(out / "cascade.png") == _panel_hw(rows=len(PANEL_ORDER), cols=2 + len(weighted))

    proc = run_ganlab("explain", f"run={run_dir}", "sanity=bogus", f"output={tmp_path / 'bogus'}", cwd=tmp_path,
                      check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "ganlab explain: error: sanity=bogus: expected single" in proc.stderr and "cascade" in proc.stderr
    assert not (tmp_path / "bogus").exists()


def test_discriminator(gan_run, val_images):
    cwd, run_dir = gan_run  # in-process (the console script's path is covered above): saves a start-up
    out = _explain_in_process(run_dir, "target=discriminator", "indices=[0,1,2]")
    saved = torch.load(out / "maps.pt", weights_only=True)
    manifest = yaml.safe_load((out / "explain.yaml").read_text())
    kept = [m for m in PANEL_ORDER if m != "cam"]
    assert manifest["methods"] == kept and "global-average-pooling" in manifest["skipped"]["cam"]
    assert list(saved["maps"]) == kept and saved["targets"] is None and manifest["score"] == "D logit"
    assert all(m.shape == (3, 1, 28, 28) and torch.isfinite(m).all() for m in saved["maps"].values())
    model, _ = load_model(resolve_run(str(run_dir), cwd), "cpu")
    with torch.no_grad():
        assert torch.allclose(saved["scores"], model.discriminator(saved["inputs"]), atol=1e-5)
    assert torch.equal(saved["inputs"][2], val_images[2]["image"])
    assert _png_hw(out / "panel.png") == _panel_hw(rows=3, cols=7)

    # Generated samples: the run's generator output for the seeded z, explained under D.
    out = _explain_in_process(run_dir, "target=discriminator", "source=generated", "n=2", "method=occlusion")
    saved = torch.load(out / "maps.pt", weights_only=True)
    z = model.sample_z(2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(saved["inputs"], model.generate(z), atol=1e-6)
    assert saved["maps"]["occlusion"].shape == (2, 1, 28, 28)


def test_bad_inputs_one_line_and_nothing_overwritten(classifier_run, gan_run, tmp_path):
    cwd, run_dir = classifier_run
    _, gan_dir = gan_run
    if not (run_dir / "explain").is_dir():  # run on its own: make an earlier output to protect
        _explain_in_process(run_dir, "method=cam", "indices=[0]")
    before = {p: (p / "explain.yaml").read_bytes() for p in _outputs(run_dir)}
    gan_before = sorted((gan_dir / "explain").glob("*"))
    proc = run_ganlab("explain", "run=latest", "method=saliency", cwd=cwd, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert ("ganlab explain: error: method=saliency: unknown method; expected all or one of guided_backprop, "
            "gradcam, guided_gradcam, occlusion, cam, deconvnet, integrated_gradients") in proc.stderr, proc.stderr

    (tmp_path / "broken.png").write_bytes(b"not a png")
    for run, args, message in (
        (run_dir, ["target=discriminator"], "is not a GAN run"),
        (gan_dir, [], "has no classifier; use target=discriminator"),
        (gan_dir, ["target=discriminator", "method=cam"], "method=cam: needs a global-average-pooling"),
        (gan_dir, ["target=discriminator", "targets=[1]"], "drop targets="),
        (run_dir, ["source=generated"], "only for target=discriminator"),
        (run_dir, ["targets=[10]"], "targets=[10]: expected class indices in 0..9"),
        (run_dir, ["indices=[0,500]"], "index 500 is out of range for split 'val' (500 samples, indices 0..499)"),
        (run_dir, ["split=test"], "split=test: the run's data (MNISTDataModule) has splits train, val"),
        (run_dir, [f"images=[{tmp_path / 'missing.png'}]"], "missing.png: no such file"),
        (run_dir, [f"images=[{tmp_path / 'broken.png'}]"], "broken.png: not a readable PNG/JPEG image"),
        (run_dir, ["method=gradcam", "explainers.gradcam.layer=nope"], "layer 'nope' is not a submodule"),
    ):
        with pytest.raises(GanlabError) as err:
            _explain_in_process(run, *args)
        assert message in str(err.value), (args, str(err.value))
    # No new output dir for a failed call, and the earlier ones untouched.
    assert {p: (p / "explain.yaml").read_bytes() for p in _outputs(run_dir)} == before
    assert sorted((gan_dir / "explain").glob("*")) == gan_before

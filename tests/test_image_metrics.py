"""Image-quality metrics against closed forms and hand-computed cases; the callback on a toy generator."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.linalg
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_classifier import SIZE, CentreDataModule, balanced, centre_images, tiny_trainer
from torch import Tensor, nn

from conftest import manifest, run_dirs, run_ganlab, tiny_overrides
from ganlab import feature_nets
from ganlab.callbacks.image_metrics import ImageQualityMetrics
from ganlab.data.mnist import MNISTDataModule
from ganlab.errors import GanlabError
from ganlab.feature_nets import load_classifier_features, load_feature_net, packaged_weights
from ganlab.metrics.image_quality import ClassifierFeatures, ImageQuality, inception_fid, knn_radii, precision_recall
from ganlab.models.classifier import Classifier
from ganlab.nets.classifier import CNNClassifier
from ganlab.runs import update_manifest, write_yaml_atomic


class FlattenNet(nn.Module):
    """An 'identity' classifier: features are the pixels of (N, D, 1, 1) images, so metrics see the raw points."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def embed(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)


class MeanSignNet(FlattenNet):
    """Two classes: logits (-mean, +mean) of the image, i.e. class 1 iff the mean is positive."""

    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1)


def as_images(points: np.ndarray) -> Tensor:
    return torch.as_tensor(points, dtype=torch.float32)[:, :, None, None]


def point_metrics(real: np.ndarray, fake: np.ndarray, **kwargs) -> dict[str, float]:
    kwargs.setdefault("kid_subsets", 5)  # few KID subsets: fast, and enough where KID is not the subject
    quality = ImageQuality(ClassifierFeatures(FlattenNet(real.shape[1])), **kwargs)
    quality.update(as_images(real), real=True)
    quality.update(as_images(fake), real=False)
    return quality.compute()


def frechet_closed_form(x: np.ndarray, y: np.ndarray) -> float:
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * scipy.linalg.sqrtm(cov_x @ cov_y).real))


def unbiased_mmd2_poly(x: np.ndarray, y: np.ndarray) -> float:
    """MMD^2 with the KID kernel k(a, b) = (a.b / d + 1)^3, diagonal terms left out of the within-set means."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    off = ~np.eye(m, dtype=bool)
    return float(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())


@pytest.fixture(scope="module")
def gaussians() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    return rng.normal(size=(300, 4)) @ a, rng.normal(size=(300, 4)) @ a  # two draws of one correlated normal


def test_frechet_distance_matches_the_closed_form(gaussians) -> None:
    x, other = gaussians
    assert point_metrics(x, x)["fid"] == pytest.approx(0.0, abs=1e-3)
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert point_metrics(x, x + shift)["fid"] == pytest.approx(float(shift @ shift), rel=1e-4)  # |shift|^2 = 5.25
    y = other * np.array([1.0, 2.0, 0.5, 1.0]) + 0.3
    assert point_metrics(x, y)["fid"] == pytest.approx(frechet_closed_form(x, y), rel=1e-4)


def test_kid_is_the_unbiased_polynomial_mmd(gaussians) -> None:
    x, other = gaussians
    # One subset of all points: KID is then exactly the unbiased MMD^2 of the two sets.
    same = point_metrics(x, other, kid_subsets=1)["kid"]
    assert same == pytest.approx(unbiased_mmd2_poly(x, other), rel=1e-3, abs=1e-4)
    shifted = point_metrics(x, other + 1.0, kid_subsets=1)["kid"]
    assert shifted == pytest.approx(unbiased_mmd2_poly(x, other + 1.0), rel=1e-3)
    assert abs(same) < 0.05 * shifted
    # Subsets of 100 (drawn with a fixed seed): still near 0 for one distribution, clearly > 0 for two.
    assert abs(point_metrics(x, other, kid_subset_size=100, kid_subsets=50)["kid"]) < 0.05 * shifted
    assert point_metrics(x, other + 1.0, kid_subset_size=100, kid_subsets=50)["kid"] > 0.5 * shifted


SQUARE = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], dtype=float)
FAKE = np.array([[1, 1], [4, 0], [5, 5], [-3, 0]], dtype=float)


def test_precision_recall_hand_computed_k1_with_an_outlier() -> None:
    real = np.vstack([SQUARE, [[10, 10]]])
    # Real radii (nearest other real): 2, 2, 2, 2 and |(10,10)-(2,2)| = 11.31 for the outlier.
    expected_radii = torch.tensor([2, 2, 2, 2, 128 ** 0.5], dtype=torch.float64)
    torch.testing.assert_close(knn_radii(torch.tensor(real), k=1), expected_radii)
    # Fakes: (1,1) in the ball of (0,0) (1.41 <= 2); (4,0) on the boundary of (2,0)'s ball (2 <= 2);
    # (5,5) only in the outlier's ball (7.07 <= 11.31); (-3,0) in none (3 > 2, 16.4 > 11.31): precision 3/4.
    # Fake radii: 3.16, 3.16, 5.10, 4.12; every square corner is within 1.42 of (1,1), but (10,10) is 7.07 from
    # (5,5) (> 5.10) and farther from the others: recall 4/5.
    precision, recall = precision_recall(torch.tensor(real), torch.tensor(FAKE), k=1)
    assert (precision, recall) == (0.75, 0.8)
    assert precision_recall(torch.tensor(real), torch.tensor(FAKE), k=1, batch_size=2) == (0.75, 0.8)


def test_precision_recall_hand_computed_k3_through_image_quality() -> None:
    # k=3 real radius is the square's diagonal 2.83: (1,1) and (4,0) are in, (5,5) (4.24) and (-3,0) (3) are not.
    # With 4 fakes the k=3 radius is each fake's farthest neighbour (>= 5.66), covering every real point.
    values = point_metrics(SQUARE, FAKE, k=3)
    assert (values["precision"], values["recall"]) == (0.5, 1.0)
    assert "cond_acc" not in values


def test_knn_needs_more_points_than_k() -> None:
    with pytest.raises(ValueError, match="k=3 for 3 points"):
        knn_radii(torch.zeros(3, 2), k=3)


def test_conditional_accuracy_hand_made() -> None:
    quality = ImageQuality(ClassifierFeatures(MeanSignNet(1)), k=1, num_classes=2)
    quality.update(as_images(np.array([[-1.0], [0.0], [1.0]])), real=True)
    # Class 1 iff the value is positive: right for 0.5->1, -0.5->0, 0.1->1; wrong for 0.5->0, -0.2->1: 3/5.
    fake = as_images(np.array([[0.5], [-0.5], [0.5], [-0.2], [0.1]]))
    quality.update(fake, real=False, labels=torch.tensor([1, 0, 0, 1, 1]))
    assert quality.compute()["cond_acc"] == pytest.approx(0.6)
    quality.reset()  # forgets fakes and the accuracy, keeps the reals
    quality.update(fake[:2], real=False, labels=torch.tensor([1, 0]))
    assert quality.compute()["cond_acc"] == 1.0


# --- a real (tiny) classifier run dir, loaded the way the callback loads it --------------------------------

CLASSIFIER_CONFIG = {
    "data": {"image_size": SIZE, "channels": 1, "num_classes": 2},
    "model": {
        "_target_": "ganlab.models.classifier.Classifier",
        "lr": 1e-2,
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True},
        "net": {"_target_": "ganlab.nets.classifier.CNNClassifier", "in_channels": 1, "num_classes": 2,
                "widths": [8, 16], "strides": [2, 1]},
    },
}


def make_run_dir(run_dir: Path, config: dict, model: pl.LightningModule, trainer: pl.Trainer | None = None) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    write_yaml_atomic(run_dir / "config.yaml", OmegaConf.create(config))
    if trainer is not None:
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    else:
        torch.save({"state_dict": model.state_dict()}, run_dir / "checkpoints" / "last.ckpt")
    update_manifest(run_dir, status="completed", last_checkpoint="checkpoints/last.ckpt")
    return run_dir


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    """A bright- vs dark-centre classifier trained to 100% held-out accuracy, saved as a ganlab run dir."""
    pl.seed_everything(0, verbose=False)
    model = Classifier(CNNClassifier(1, 2, widths=(8, 16), strides=(2, 1)), lr=1e-2)
    trainer = tiny_trainer(40, limit_val_batches=0)
    trainer.fit(model, datamodule=CentreDataModule(balanced(128), balanced(64)))
    run_dir = tmp_path_factory.mktemp("outputs") / "train" / "classifier_toy" / "2026-01-01_00-00-00"
    return make_run_dir(run_dir, CLASSIFIER_CONFIG, model, trainer)


def test_features_from_a_classifier_run_follow_torchmetrics_input_conventions(classifier_run) -> None:
    features = load_classifier_features(classifier_run)
    assert features.num_features == 16 and features.image_size == SIZE
    images = centre_images(balanced(6), seed=5)
    expected = features.net.embed(images)
    uint8 = ((images + 1) * 127.5).round().to(torch.uint8)
    torch.testing.assert_close(features(uint8), features.net.embed(uint8.float() / 127.5 - 1))  # normalize=False
    torch.testing.assert_close(features((images + 1) / 2), expected)  # normalize=True: float in [0, 1]
    # Other sizes are resized to the classifier's 12x12 before the network.
    big = F.interpolate(images, scale_factor=2, mode="nearest")
    resized = F.interpolate(big, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(features((big + 1) / 2), features.net.embed(resized))
    features.train()
    assert not features.training and not features.net.training  # batch norm stays on running statistics
    # The same run through the latest:<name> and .ckpt spellings.
    log_dir = classifier_run.parents[2]
    assert load_classifier_features("latest:classifier_toy", log_dir).source == f"feature_run={classifier_run}"
    load_classifier_features(classifier_run / "checkpoints" / "last.ckpt")


def test_classifier_features_separate_the_classes(classifier_run) -> None:
    quality = ImageQuality(load_classifier_features(classifier_run), kid_subset_size=50)
    quality.update(centre_images(torch.ones(100, dtype=torch.long), seed=10), real=True)
    quality.update(centre_images(torch.ones(100, dtype=torch.long), seed=11), real=False)
    same = quality.compute()
    quality.reset()
    quality.update(centre_images(torch.zeros(100, dtype=torch.long), seed=11), real=False)
    other = quality.compute()
    assert other["fid"] > 20 * same["fid"] and other["kid"] > 20 * abs(same["kid"])
    # Two draws of one distribution: most points fall in the other set's k-NN balls (not all: k=3 balls
    # around 100 points leave gaps), and none do across classes.
    assert same["precision"] > 0.75 and same["recall"] > 0.75
    assert other["precision"] == 0.0 and other["recall"] == 0.0


def test_bad_feature_runs_are_named(tmp_path, classifier_run) -> None:
    missing = tmp_path / "no_such_run"
    with pytest.raises(GanlabError, match=re.escape(f"feature_run={missing}: run={missing}: no such run dir")):
        load_classifier_features(missing)
    with pytest.raises(GanlabError, match="feature_run="):
        ImageQualityMetrics(feature_run=str(missing))
    gan_config = {"data": {"image_size": 4}, "model": {
        "_target_": "ganlab.models.gan.GAN",
        "generator": {"_target_": "ganlab.nets.mlp.MLPGenerator", "latent_dim": 2, "hidden": [4],
                      "out_shape": [1, 4, 4]},
        "discriminator": {"_target_": "ganlab.nets.mlp.MLPDiscriminator", "in_shape": [1, 4, 4], "hidden": [4]}}}
    gan_run = make_run_dir(tmp_path / "gan_run", gan_config, instantiate(OmegaConf.create(gan_config).model))
    with pytest.raises(GanlabError, match=re.escape(f"feature_run={gan_run}: {gan_run} trains ganlab.models.gan.GAN, "
                                                    "expected a classifier run")):
        load_classifier_features(gan_run)
    features = load_classifier_features(classifier_run)
    with pytest.raises(GanlabError, match="takes 1-channel images"):
        features(torch.rand(2, 3, SIZE, SIZE))
    with pytest.raises(GanlabError, match="num_samples > k"):
        ImageQualityMetrics(feature_run=str(classifier_run), num_samples=3, k=3)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test loudly instead of reaching the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_inception_fid_needs_a_local_weights_file_and_never_downloads(tmp_path, no_network, monkeypatch) -> None:
    with pytest.raises(GanlabError, match="inception_weights: not given.*never downloads"):
        inception_fid(None)
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(GanlabError, match=re.escape(f"inception_weights={missing}: no such file") + ".*never"):
        inception_fid(missing)
    missing.write_bytes(b"not really weights")
    real_find_spec = importlib.util.find_spec  # torch-fidelity is not a ganlab dependency: pretend it is absent
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_fidelity" else real_find_spec(name, *a))
    with pytest.raises(GanlabError, match="needs the torch-fidelity package .*pip install torch-fidelity"):
        inception_fid(missing)


# --- the callback on toy generators -------------------------------------------------------------------------

class ToyGenerator(pl.LightningModule):
    """Draws bright/dark-centre images like the data: of class y if conditional, else of a random class."""

    def __init__(self, num_classes: int = 0, flip: bool = False) -> None:
        super().__init__()
        self.num_classes, self.flip = num_classes, flip
        self.w = nn.Parameter(torch.zeros(1))

    def sample_z(self, n: int) -> Tensor:
        return torch.rand(n, 1 + SIZE * SIZE)

    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        labels = (z[:, 0] > 0.5).long() if y is None else (1 - y if self.flip else y)
        images = z[:, 1:].view(-1, 1, SIZE, SIZE) * 0.6 - 0.3
        c = SIZE // 2
        images[:, :, c - 2:c + 2, c - 2:c + 2] = (labels.float() * 1.8 - 0.9).view(-1, 1, 1, 1)
        return images

    def training_step(self, batch, batch_idx) -> Tensor:
        return (self.w ** 2).sum()

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run_callback(classifier_run: Path, model: ToyGenerator) -> tuple[dict[str, float], ImageQualityMetrics]:
    callback = ImageQualityMetrics(feature_run=str(classifier_run), num_samples=1000, batch_size=16, kid_subsets=10)
    # Training data of one class only; the held-out split alternates classes: the metrics must use the latter.
    data = CentreDataModule(torch.zeros(64, dtype=torch.long), balanced(40), batch_size=32)
    trainer = tiny_trainer(2, callbacks=[callback], limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, callback


def test_callback_logs_metrics_of_a_conditional_generator_on_held_out_data(classifier_run) -> None:
    metrics, callback = run_callback(classifier_run, ToyGenerator(num_classes=2))
    assert torch.equal(callback.real_labels, balanced(40))  # all 40 held-out images, none from training
    assert metrics["val/cond_acc"] == 1.0
    assert metrics["val/precision"] > 0.8 and metrics["val/recall"] > 0.8
    flipped, _ = run_callback(classifier_run, ToyGenerator(num_classes=2, flip=True))
    assert flipped["val/cond_acc"] == 0.0
    # Half of each class either way: the unconditional metrics do not see the swapped labels.
    assert flipped["val/precision"] > 0.8 and flipped["val/recall"] > 0.8


def test_callback_on_an_unconditional_generator(classifier_run) -> None:
    metrics, _ = run_callback(classifier_run, ToyGenerator())
    assert {"val/fid", "val/kid", "val/precision", "val/recall"} <= set(metrics)
    assert "val/cond_acc" not in metrics
    assert metrics["val/precision"] > 0.8 and metrics["val/recall"] > 0.8


# --- the MNIST feature net shipped with ganlab (feature_net=mnist) -------------------------------------------

@pytest.fixture(scope="module")
def held_out_digits(data_dir) -> tuple[Tensor, Tensor, Tensor]:
    """The embedded MNIST's held-out t10k digits in [-1, 1], their labels, and 500 training digits."""
    data = MNISTDataModule(root=None, cache_dir=str(data_dir))
    data.setup()
    held, train = data.datasets["val"], data.datasets["train"]
    return held.images.float() / 127.5 - 1, held.labels, train.images[:500].float() / 127.5 - 1


def test_packaged_mnist_net_loads_with_weights_only_and_reproduces_its_held_out_accuracy(held_out_digits) -> None:
    path = packaged_weights("mnist")
    assert path.is_file() and path.stat().st_size < 1.5e6
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["dtype"] == "float16" and saved["seed"] == 0 and saved["training_steps"] > 0
    assert all(v.dtype == torch.float16 for v in saved["state_dict"].values() if v.is_floating_point())
    features = load_feature_net("mnist")
    assert features.image_size == 28 and next(features.net.parameters()).dtype == torch.float32
    images, labels, _ = held_out_digits
    assert len(labels) == saved["held_out_digits"] == 500  # all of the embedded held-out split
    accuracy = (features.logits(images).argmax(1) == labels).double().mean().item()
    assert abs(accuracy - saved["held_out_accuracy"]) <= 0.005 and accuracy > 0.97


def test_packaged_mnist_net_separates_real_digits_from_noise(held_out_digits) -> None:
    """benchmarks/feature_net_mnist.md's first and last rows: FID 0.68 for real vs real, 2348 for noise."""
    images, _, train = held_out_digits
    quality = ImageQuality(load_feature_net("mnist"), kid_subsets=10)
    quality.update(images, real=True)
    quality.update(train, real=False)
    real = quality.compute()
    quality.reset()
    quality.update(torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1, real=False)
    noise = quality.compute()
    assert real["fid"] < 2 and real["precision"] > 0.8 and real["recall"] > 0.8
    assert noise["fid"] > 500 * real["fid"] and noise["precision"] == noise["recall"] == 0.0


def test_missing_or_corrupt_weights_file_is_one_error_naming_it(tmp_path, monkeypatch) -> None:
    packaged = packaged_weights("mnist")
    good = packaged.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    torch.save({"state_dict": {}, "net_kwargs": {}, "where": Path("x")}, tmp_path / "pickled_object.pt")
    saved = torch.load(packaged, weights_only=True)
    torch.save({**saved, "net_kwargs": {**saved["net_kwargs"], "widths": [8, 8, 8, 8]}}, tmp_path / "other_net.pt")
    torch.save({**saved, "net_kwargs": {**saved["net_kwargs"], "evil": 1}}, tmp_path / "unknown_kwarg.pt")
    cases = {
        "missing.pt": "feature-net weights file not found",
        "truncated.pt": "not a readable feature-net weights file",
        "garbage.pt": "not a readable feature-net weights file",
        "pickled_object.pt": "not a readable feature-net weights file (WeightsUnpickler error",
        "foreign.pt": "not a feature-net weights file (expected a dict with 'state_dict' and 'net_kwargs')",
        "other_net.pt": "weights do not fit ganlab.nets.classifier.CNNClassifier",
        "unknown_kwarg.pt": "weights do not fit ganlab.nets.classifier.CNNClassifier (unknown net_kwargs evil)",
    }
    for name, message in cases.items():
        path = tmp_path / name
        with pytest.raises(GanlabError) as err:
            ImageQualityMetrics(feature_net=str(path))
        assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value), name
        assert "scripts/train_feature_net.py" in str(err.value)
    # The packaged name behind a broken install names the file it looked for.
    monkeypatch.setattr(feature_nets, "WEIGHTS_DIR", tmp_path / "site-packages" / "weights")
    with pytest.raises(GanlabError, match=re.escape(f"{tmp_path / 'site-packages' / 'weights' / packaged.name}: "
                                                    "feature-net weights file not found")):
        ImageQualityMetrics(feature_net="mnist")
    with pytest.raises(GanlabError, match="feature_net=cifar10: expected one of mnist"):
        ImageQualityMetrics(feature_net="cifar10")
    with pytest.raises(GanlabError, match="no feature space; give feature_run=.* or feature_net=mnist"):
        ImageQualityMetrics()


def test_feature_run_wins_over_feature_net(classifier_run) -> None:
    callback = ImageQualityMetrics(feature_run=str(classifier_run), feature_net="mnist")
    assert callback.quality.features.source == f"feature_run={classifier_run}"
    assert ImageQualityMetrics(feature_net="mnist").quality.features.source.startswith("feature_net=mnist (")


@pytest.mark.parametrize("experiment", [None, "cgan_mnist"])
def test_default_mnist_runs_write_image_metrics_without_a_step(experiment, tmp_path, data_dir) -> None:
    """`ganlab train` (the MLP GAN) and the cGAN: val/fid, val/kid, val/precision, val/recall (and val/cond_acc)
    in run.yaml from the packaged net; +debug=fast compares 200 held-out digits with 200 samples."""
    name = experiment or "gan_mnist"
    run_ganlab("train", *([f"+experiment={experiment}"] if experiment else []), *tiny_overrides(name),
               f"paths.data_dir={data_dir}", "logger=none", cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path, name)
    metrics = manifest(run_dir)["metrics"]
    assert 0 < metrics["val/fid"] < 1e6 and math.isfinite(metrics["val/kid"])
    assert 0 <= metrics["val/precision"] <= 1 and 0 <= metrics["val/recall"] <= 1
    if experiment == "cgan_mnist":
        assert 0 <= metrics["val/cond_acc"] <= 1
    else:
        assert "val/cond_acc" not in metrics
    assert manifest(run_dir)["best_metrics"]["val/fid"] <= metrics["val/fid"]


def test_a_broken_feature_net_stops_train_with_one_line(tmp_path, data_dir) -> None:
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"truncated")
    proc = run_ganlab("train", *tiny_overrides("gan_mnist"), f"paths.data_dir={data_dir}", "logger=none",
                      f"callbacks.image_metrics.feature_net={bad}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{bad}: not a readable feature-net weights file" in proc.stderr


def test_every_n_steps_spaces_the_evaluations_and_the_final_validate_always_runs(classifier_run) -> None:
    evaluated = []

    class Recording(ImageQualityMetrics):
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if self.due(trainer):
                evaluated.append((trainer.state.fn.value, trainer.global_step))
            super().on_validation_epoch_end(trainer, pl_module)

    callback = Recording(feature_run=str(classifier_run), num_samples=40, batch_size=16, kid_subsets=2,
                         every_n_steps=4)
    data = CentreDataModule(balanced(64), balanced(40), batch_size=32)  # 2 steps per epoch: validates every 2
    model = ToyGenerator()
    trainer = tiny_trainer(10, callbacks=[callback], limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, verbose=False)
    assert evaluated == [("fit", 4), ("fit", 8), ("validate", 10)]
    assert "val/fid" in trainer.callback_metrics
    for bad in (0, -1, 2.5, True):
        with pytest.raises(GanlabError, match=f"every_n_steps={bad}: expected an integer >= 1 or null"):
            ImageQualityMetrics(feature_net="mnist", every_n_steps=bad)


def test_the_evaluation_leaves_the_global_rng_alone(classifier_run) -> None:
    states = []

    class Recording(ImageQualityMetrics):
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            before = torch.get_rng_state()
            super().on_validation_epoch_end(trainer, pl_module)
            states.append(torch.equal(before, torch.get_rng_state()))

    callback = Recording(feature_run=str(classifier_run), num_samples=40, batch_size=16, kid_subsets=2)
    trainer = tiny_trainer(4, callbacks=[callback], limit_val_batches=1)
    trainer.fit(ToyGenerator(), datamodule=CentreDataModule(balanced(64), balanced(40), batch_size=32))
    assert states == [True, True] and "val/fid" in trainer.callback_metrics  # the first one reads the reals too


def test_building_the_metrics_leaves_the_global_rng_alone(classifier_run) -> None:
    """A run with the metrics trains exactly as one without (CNNClassifier's random init is never drawn from
    training's RNG stream)."""
    before = torch.get_rng_state()
    load_feature_net("mnist")
    load_classifier_features(classifier_run)
    ImageQualityMetrics(feature_net="mnist")
    assert torch.equal(before, torch.get_rng_state())

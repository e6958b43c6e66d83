"""CNNClassifier shapes and the GAP/linear-head identities CAMs rely on; the Classifier learns a separable task."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from ganlab.models.classifier import Classifier
from ganlab.nets.classifier import CNNClassifier

SIZE = 12


def centre_images(labels: torch.Tensor, seed: int, size: int = SIZE) -> torch.Tensor:
    """(N, 1, size, size) in [-1, 1]: uniform noise in [-0.3, 0.3], a 4x4 centre of +0.9 (label 1) or -0.9 (0)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(len(labels), 1, size, size, generator=g) * 0.6 - 0.3
    c = size // 2
    images[:, :, c - 2:c + 2, c - 2:c + 2] = (labels.float() * 1.8 - 0.9).view(-1, 1, 1, 1)
    return images


class CentreDataset(Dataset):
    def __init__(self, labels: torch.Tensor, seed: int) -> None:
        self.labels, self.images = labels, centre_images(labels, seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class CentreDataModule(pl.LightningDataModule):
    """Bright- vs dark-centre images. `train_labels`/`val_labels` pick the classes of each split."""

    def __init__(self, train_labels: torch.Tensor, val_labels: torch.Tensor, batch_size: int = 32) -> None:
        super().__init__()
        self.train_set, self.val_set = CentreDataset(train_labels, seed=0), CentreDataset(val_labels, seed=1)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def balanced(n: int) -> torch.Tensor:
    return torch.arange(n) % 2


def tiny_trainer(max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      log_every_n_steps=1, **kwargs)


def test_shapes_and_the_gap_head_identities() -> None:
    torch.manual_seed(0)
    net = CNNClassifier(in_channels=3, num_classes=5, widths=(4, 6, 8), strides=(2, 2, 1)).eval()
    x = torch.rand(2, 3, 28, 20) * 2 - 1
    maps = net.feature_maps(x)
    assert maps.shape == (2, 8, 7, 5)  # 28x20 -> 14x10 -> 7x5 -> 7x5
    assert net.num_features == 8 and net.head.in_features == 8 and net.head.out_features == 5
    embedding = net.embed(x)
    assert embedding.shape == (2, 8)
    torch.testing.assert_close(embedding, maps.mean(dim=(2, 3)))
    logits = net(x)
    torch.testing.assert_close(logits, embedding @ net.head.weight.T + net.head.bias)
    # CAM identity: logit_c = mean over positions of sum_k W[c, k] A_k + b_c.
    cam = torch.einsum("ck,nkhw->nchw", net.head.weight, maps)
    torch.testing.assert_close(logits, cam.mean(dim=(2, 3)) + net.head.bias)
    assert net.feature_maps(torch.zeros(1, 3, 8, 8)).shape == (1, 8, 2, 2)  # the smallest input


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 7, 28), (3, 28, 28)])
def test_wrong_input_shape_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) with H, W >= 8"):
        CNNClassifier(3, 10)(torch.zeros(shape))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="strides"):
        CNNClassifier(1, 10, widths=(8, 16), strides=(2, 2, 1))
    with pytest.raises(ValueError, match="num_classes"):
        CNNClassifier(1, 1)


def test_classifier_learns_bright_vs_dark_centres_and_checkpoints_load_weights_only(tmp_path) -> None:
    pl.seed_everything(0, verbose=False)
    net = CNNClassifier(1, 2, widths=(8, 16), strides=(2, 1))
    model = Classifier(net, optimizer=lambda params, lr: torch.optim.Adam(params, lr=lr), lr=1e-2)
    data = CentreDataModule(balanced(128), balanced(64))
    trainer = tiny_trainer(40)
    trainer.fit(model, datamodule=data)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(trainer.callback_metrics)
    [result] = trainer.validate(model, datamodule=data, verbose=False)
    assert result["val/acc"] == 1.0
    # Held-out accuracy recomputed by hand (eval mode: batch-norm running statistics).
    model.eval()
    assert (model(data.val_set.images).argmax(1) == data.val_set.labels).all()

    ckpt_path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"] == {"lr": 1e-2, "schedule": "constant"}  # no modules, no partials pickled
    assert not any(k.startswith(("train_acc", "val_acc")) for k in ckpt["state_dict"])


def test_cosine_schedule_decays_the_rate_to_zero_over_max_steps() -> None:
    pl.seed_everything(0, verbose=False)
    model = Classifier(CNNClassifier(1, 2, widths=(4,), strides=(1,)), lr=1e-2, schedule="cosine")
    trainer = tiny_trainer(6)
    trainer.fit(model, datamodule=CentreDataModule(balanced(32), balanced(16)))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert trainer.global_step == 6


def test_pooled_downsampling_keeps_shapes_and_state_dict_keys() -> None:
    strided = CNNClassifier(1, 10, widths=(8, 16, 16), strides=(2, 2, 1))
    for mode in ("avgpool", "blurpool", "maxpool", "maxblurpool", ["avgpool", "maxblurpool", "stride"]):
        pooled = CNNClassifier(1, 10, widths=(8, 16, 16), strides=(2, 2, 1), downsample=mode)
        for size in (28, 9):
            x = torch.zeros(2, 1, size, size)
            assert pooled.feature_maps(x).shape == strided.feature_maps(x).shape, mode
        pooled.load_state_dict(strided.state_dict())  # same keys and shapes: pooling owns no parameters
    with pytest.raises(ValueError, match="downsample"):
        CNNClassifier(1, 10, widths=(8, 16), strides=(2, 1), downsample=["avgpool"])
    coord = CNNClassifier(3, 2, widths=(4, 4), strides=(2, 1), coords=True)
    assert coord.features[0][0].in_channels == 5 and coord(torch.zeros(1, 3, 12, 12)).shape == (1, 2)


def test_classifier_refuses_a_net_without_num_classes() -> None:
    from ganlab.errors import GanlabError

    with pytest.raises(GanlabError, match="num_classes"):
        Classifier(torch.nn.Linear(4, 2))


def test_experiment_composes_to_a_mnist_classifier() -> None:
    with initialize_config_module("ganlab.configs", version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=classifier_mnist", "+debug=fast"], return_hydra_config=False)
    assert cfg.name == "classifier_mnist"
    assert cfg.model._target_ == "ganlab.models.classifier.Classifier"
    model = instantiate(cfg.model)
    assert model.net.in_channels == 1 and model.net.num_classes == 10
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.net.feature_maps(torch.zeros(1, 1, 28, 28)).shape[-2:] == (7, 7)

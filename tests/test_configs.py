"""Every config composes, and every experiment instantiates into parts whose shapes fit together."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from conftest import EXPERIMENTS, gpu_experiment_on_cpu

CONFIG_DIR = Path(__file__).parent.parent / "ganlab" / "configs"
# Groups of train.yaml (explainer/ belongs to explain.yaml: tested below).
GROUP_OPTIONS = [(g.name, p.stem) for g in sorted(CONFIG_DIR.iterdir()) if g.is_dir() and g.name not in
                 ("experiment", "hydra", "__pycache__", "local", "explainer") for p in sorted(g.glob("*.yaml"))]
EXPLAINERS = sorted(p.stem for p in (CONFIG_DIR / "explainer").glob("*.yaml"))


def _compose(overrides: list[str], tmp_path: Path, config_name: str = "train"):
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[f"paths.root_dir={tmp_path}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes(group, option, tmp_path):
    prefix = "+" if group == "debug" else ""
    cfg = _compose([f"{prefix}{group}={option}"], tmp_path)
    assert cfg.task_name == "train"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates_and_shapes_fit(experiment, tmp_path):
    cfg = _compose([f"+experiment={experiment}", "trainer.accelerator=cpu", *gpu_experiment_on_cpu(experiment)],
                   tmp_path)
    assert cfg.name == experiment
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    if hasattr(model, "translate"):  # image-to-image: MR "a" -> CT "b" of the same shape
        fake = model.translate(batch["a"])
        assert fake.shape == batch["b"].shape and torch.isfinite(fake).all()
        return
    if not hasattr(model, "generator"):  # a classifier
        assert model(batch["image"]).shape == (batch["image"].shape[0], cfg.data.num_classes)
        return
    n = batch["image"].shape[0]
    y = batch["label"] if model.num_classes else None
    fake = model.generator(model.sample_z(n), y)
    assert fake.shape == batch["image"].shape and torch.isfinite(fake).all()
    assert model.discriminator(batch["image"], y).shape == (n // model.pack,)


def test_explain_config_lists_every_explainer():
    """Each configs/explainer/<name>.yaml is a column of `method=all` and builds on a classifier."""
    from ganlab.nets.classifier import CNNClassifier

    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name="explain", overrides=["explainers.occlusion.window=4"])
    assert sorted(cfg.explainers) == EXPLAINERS and cfg.explainers.occlusion.window == 4
    net = CNNClassifier(1, 10, widths=[4, 4], strides=[2, 1]).eval()
    for name, node in cfg.explainers.items():
        maps = instantiate(node)(net).attribute(torch.rand(2, 1, 16, 16) * 2 - 1, target=3)
        assert maps.shape[0] == 2 and maps.shape[-2:] == (16, 16), name


def test_sample_config_composes(tmp_path):
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name="sample", overrides=["run=latest:gan_mnist", "n=16"])
    assert cfg.task_name == "sample" and cfg.n == 16 and cfg.run == "latest:gan_mnist"


@pytest.mark.parametrize("model", ["gan", "dcgan", "cgan"])
def test_readme_tricks_are_config_keys(model, tmp_path):
    """Every trick the README lists is settable with a plain override (no `+`) and builds."""
    tricks = ["model.loss=hinge", "model.n_critic=2", "model.ema_decay=0.9", "model.r1_gamma=1.0",
              "model.lr_g=1e-4", "model.lr_d=4e-4", "model.discriminator.spectral_norm=true",
              "model.discriminator.minibatch_std=true"]
    tricks += ["model.label_smoothing=0.1", "model.loss=lsgan"] if model == "cgan" else ["model.discriminator.pack=2"]
    cfg = _compose([f"model={model}", *tricks], tmp_path)
    gan = instantiate(cfg.model)
    assert gan.hparams.n_critic == 2 and gan.generator_ema is not None
    assert gan.pack == (1 if model == "cgan" else 2)

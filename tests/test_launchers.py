"""Launchers and sweeps: the joblib/submitit launcher configs and the Optuna `hparams_search=` configs compose,
and an Optuna search really runs its trials through the joblib launcher, optimising the named metric."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from conftest import TESTS_DIR, manifest, run_ganlab, tiny_overrides

SEARCHES = sorted(p.stem for p in (TESTS_DIR.parent / "ganlab" / "configs" / "hparams_search").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("launcher, target, fields", [
    ("parallel", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2, "prefer": "processes"}),
    ("joblib", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": -1}),
    ("slurm", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
     {"timeout_min": 240, "gpus_per_node": 2, "tasks_per_node": 2, "nodes": 1, "mem_gb": 32, "partition": None,
      "name": "ganlab_gan_mnist"}),
    ("submitit_slurm", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher", {"timeout_min": 60}),
])
def test_launcher_configs_compose_and_instantiate(launcher, target, fields):
    cfg = _compose(f"hydra/launcher={launcher}", "trainer=ddp")
    node = cfg.hydra.launcher
    assert node._target_ == f"hydra_plugins.{target}"
    assert {k: node[k] for k in fields} == fields
    launcher_obj = instantiate(node)  # builds the launcher object; launches nothing
    assert type(launcher_obj).__name__ == target.rsplit(".", 1)[1]


@pytest.mark.parametrize("search", SEARCHES)
def test_hparams_search_configs_compose(search):
    cfg = _compose(f"+experiment={search}", f"hparams_search={search}")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert cfg.hydra.mode.name == "MULTIRUN" and sweeper.direction == "maximize"
    assert cfg.optimized_metric.startswith("val/") and sweeper.params
    for key in sweeper.params:  # every searched key exists in the experiment's config
        node = cfg
        for part in key.split("."):
            node = node[part]


def test_optuna_search_runs_trials_through_the_joblib_launcher(tmp_path):
    """Two tiny ring8 trials, in parallel; Optuna receives each run's final val/modes_captured."""
    run_ganlab("train", "+experiment=gan_ring8", *tiny_overrides("gan_ring8"), "logger=none",
               "data.batches_per_epoch=4", "+callbacks.mode_metrics.num_samples=200",
               "hparams_search=gan_ring8", "hydra/launcher=parallel", "hydra.sweeper.n_trials=2",
               "hydra.sweeper.n_jobs=2", cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "train" / "gan_ring8").glob("multirun_*")
    trials = sorted(p.parent for p in sweep.glob("*/run.yaml"))
    assert [t.name for t in trials] == ["0", "1"]
    infos = [manifest(t) for t in trials]
    assert all(i["status"] == "completed" for i in infos)
    # Each trial trained with its own learning rates, from the log-uniform ranges of the search.
    lrs = [yaml.safe_load((t / "config.yaml").read_text())["model"]["lr_g"] for t in trials]
    assert lrs[0] != lrs[1] and all(2e-5 <= lr <= 2e-3 for lr in lrs)
    # Optuna got the value train() returned: the best trial's val/modes_captured.
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == max(i["metrics"]["val/modes_captured"] for i in infos)

"""TensorBoard HParams: each run logs the overrides that set it apart with its final and best validation metrics.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

# The better direction of a metric, by the last part of its name (val/fid -> fid). D outputs and other
# diagnostics have none: they get a final value, never a "best".
HIGHER_IS_BETTER = frozenset({"acc", "cond_acc", "modes_captured", "high_quality", "precision", "recall", "psnr",
                              "ssim", "auc", "f1", "dice"})
LOWER_IS_BETTER = frozenset({"fid", "fid_inception", "kid", "w1", "ks", "mean_err", "std_err", "reverse_kl", "loss",
                             "l1", "mae", "mse", "rmse", "mr_sct_ct_error"})


def direction(key: str) -> str | None:
    """'max', 'min' or None (unknown) for a metric name such as `val/fid`; a name's first word decides for
    per-part variants (`val/mae_air`, `val/psnr_bone` as `mae`, `psnr`)."""
    leaf = key.rsplit("/", 1)[-1]
    for name in (leaf, leaf.split("_", 1)[0]):
        if name in HIGHER_IS_BETTER:
            return "max"
        if name in LOWER_IS_BETTER:
            return "min"
    return None


def _better(key: str, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return not math.isnan(new)
    return new > old if direction(key) == "max" else new < old


class BestMetrics(pl.Callback):
    """The best value of each `val/` metric with a known direction, over every validation of the run (sanity
    checks excluded). Its state travels in checkpoints, so a resumed run keeps the best of its earlier part."""

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for key, value in trainer.callback_metrics.items():
            if not key.startswith("val/") or direction(key) is None or torch.as_tensor(value).numel() != 1:
                continue
            value = float(value)
            if _better(key, value, self.best.get(key)):
                self.best[key] = value

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = {str(k): float(v) for k, v in state_dict.get("best", {}).items()}


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _key(override: Any) -> str:
    return str(override.key_or_group)


def _sweep_arguments(hydra_cfg: Any) -> list[str] | None:
    """The sweep's own arguments: the command line's task overrides (saved by Hydra's basic sweeper in
    <sweep dir>/multirun.yaml before the first job starts) plus `hydra.sweeper.params`; None when neither
    can be read (another sweeper, or the file is gone)."""
    arguments: list[str] = []
    found = False
    params = hydra_cfg.sweeper.get("params")
    if isinstance(params, DictConfig):
        arguments += [f"{k}={v}" for k, v in params.items()]
        found = bool(params)
    saved = Path(str(hydra_cfg.sweep.dir)) / "multirun.yaml"
    try:
        task = OmegaConf.select(OmegaConf.load(saved), "hydra.overrides.task")
    except Exception:  # missing, or damaged (yaml and OmegaConf raise many types): use what there is
        task = None
    if task is not None:
        arguments += [str(a) for a in task]
        found = True
    return arguments if found else None


def sweep_info(cfg: DictConfig) -> dict[str, Any] | None:
    """For a job of a `-m` sweep: which keys the sweep varies, its sweeper and, for Optuna, what it optimises;
    None for a single run. Goes into run.yaml as `sweep:`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    target = str(hydra_cfg.sweeper.get("_target_", ""))
    arguments = _sweep_arguments(hydra_cfg)
    try:
        swept = None if arguments is None else sorted({_key(o) for o in _parse(arguments) if o.is_sweep_override()})
    except Exception:  # an argument Hydra's parser cannot read back: fall back to all of the job's overrides
        swept = None
    info: dict[str, Any] = {"sweeper": "optuna" if "optuna" in target.lower() else target.rsplit(".", 1)[-1],
                            "swept": swept}
    if info["sweeper"] == "optuna":
        wanted = hydra_cfg.sweeper.get("direction")
        # Optuna's config holds its enum (Direction.maximize): run.yaml gets the plain word.
        info["direction"] = ([str(getattr(d, "name", d)) for d in wanted] if isinstance(wanted, ListConfig)
                             else str(getattr(wanted, "name", wanted)))
        info["optimized_metric"] = cfg.get("optimized_metric")
    return info


def run_hparams(cfg: DictConfig, overrides: list[str], swept: list[str] | None) -> dict[str, Any]:
    """{key: value} for the run's overrides (only the `swept` keys when there are any), keys without `+`/`~`."""
    try:
        parsed = _parse(overrides)
    except Exception:  # cannot happen for overrides Hydra accepted; never fail a finished run over a summary
        parsed = []
    hparams: dict[str, Any] = {}
    for override, text in zip(parsed, overrides):
        key = _key(override)
        if swept and key not in swept:
            continue
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False) if "/" not in key else None
        if isinstance(value, (bool, int, float, str)):
            hparams[key] = value
        else:  # a group choice, a list, a deletion: the text after '='
            hparams[key] = text.split("=", 1)[1] if "=" in text else text
    return hparams


def hparams_metrics(final: dict[str, float], best: dict[str, float]) -> dict[str, float]:
    """`final/<key>` for the validation metrics (all metrics when there are none) and `best/<key>`."""
    shown = {k: v for k, v in final.items() if k.startswith("val/")} or final
    return {**{f"final/{k}": v for k, v in shown.items()}, **{f"best/{k}": v for k, v in best.items()}}


def log_hparams(trainer: pl.Trainer, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """Write one HParams session (hyperparameters, metrics and the metrics as scalars at the last step) into
    each of the trainer's TensorBoard loggers' event files."""
    from pytorch_lightning.loggers import TensorBoardLogger

    if not metrics:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # Lightning closed the writer at the end of fit/validate; writing reopens it in a new event file
            # of the same run folder, and finalize closes it again (hparams.yaml, already written, is kept).
            logger.log_hyperparams(hparams, metrics, step=trainer.global_step)
            logger.finalize("success")

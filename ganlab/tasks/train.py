"""`ganlab train`: build data, model, callbacks, loggers and Trainer from the config and fit.

The run dir (Hydra's output dir) gets the resolved config.yaml and a run.yaml manifest before training
starts, and the manifest is updated with the outcome, the last checkpoint and the final metrics.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ganlab import __version__
from ganlab.errors import GanlabError
from ganlab.callbacks.distributed import PerRankSeed
from ganlab.callbacks.hparams import BestMetrics, hparams_metrics, log_hparams, run_hparams, sweep_info
from ganlab.callbacks.signals import SignalCheckpoint
from ganlab.config_checks import check_values
from ganlab.files import write_csv_atomic
from ganlab.models.translation import ImageTranslation
from ganlab.runs import (CHECKPOINT_DIR, CONFIG_FILE, check_run_name, load_checkpoint, load_run_config, resolve_run,
                         resumable_checkpoint, update_manifest, write_yaml_atomic)
from ganlab.safe_config import targets_of


# Lightning warns that periodic checkpoints under manual optimization hold the state after the step. For
# a GAN that is the point to resume from: checkpoints are taken at batch end, after both D and G stepped.
warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a group like `callbacks`; entries switched off (null, or null and then
    partly re-filled by a later override such as +debug=fast) have no `_target_` and are skipped."""
    return [instantiate(node) for node in (group or {}).values() if node and "_target_" in node]


def _check_fits(model: pl.LightningModule, ckpt: dict[str, Any], path: Path) -> None:
    """A checkpoint from another model or size gets one message, not Lightning's 40-line state_dict dump."""
    own = model.state_dict()
    theirs = ckpt["state_dict"]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    resized = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape))
    if missing or unexpected or resized:
        details = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", resized))
            if keys
        )
        raise GanlabError(f"{path}: checkpoint does not fit the configured model ({details}); "
                          "resume with the same experiment and overrides as the original run")


def _metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if torch.as_tensor(v).numel() == 1}


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _refuse_multirun_with_ddp(cfg: DictConfig) -> None:
    """Lightning's DDP launcher re-runs this script per rank; inside a sweep each child re-runs the sweep."""
    if not _multirun() or "submitit" in str(HydraConfig.get().launcher.get("_target_", "")):
        return  # on SLURM (submitit) srun starts every rank itself: nothing re-runs the sweep
    strategy = str(cfg.trainer.get("strategy", "auto"))
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    many = nodes > 1 or devices == -1 or devices == "auto" or (isinstance(devices, int) and devices > 1) or (
        not isinstance(devices, (int, str)) and len(devices) > 1)
    if strategy.startswith("ddp") and "spawn" not in strategy and many:
        raise GanlabError(f"trainer.strategy={strategy} with several devices cannot run inside a -m sweep "
                          "(each DDP rank would re-run the sweep); use trainer.strategy=ddp_spawn, or one "
                          "device per job (trainer.devices=1) with a parallel launcher")


def _resume_checkpoint(cfg: DictConfig) -> Path | None:
    """`ckpt_path=<run dir|.ckpt|latest[:name]>` continues that run; `resume=auto` continues the newest run
    of the same `name` that has a checkpoint (runs.resumable_checkpoint), or starts fresh if there is none."""
    resume = cfg.get("resume")
    if resume not in (None, "auto"):
        raise GanlabError(f"resume={resume!r}: expected auto or null (to continue a given run use "
                          "ckpt_path=<run dir|.ckpt|latest|latest:NAME>)")
    if cfg.get("ckpt_path"):
        if resume:
            raise GanlabError(f"resume=auto and ckpt_path={cfg.ckpt_path} both given; keep one of them")
        checkpoint = resolve_run(cfg.ckpt_path, cfg.paths.log_dir).checkpoint
    elif resume == "auto":
        if _multirun():
            raise GanlabError("resume=auto picks one run to continue and cannot serve every job of a -m sweep; "
                              "give each job its own ckpt_path=<run dir>")
        checkpoint = resumable_checkpoint(cfg.paths.log_dir, cfg.name)
    else:
        return None
    if checkpoint is not None:
        # The run being continued must pass the same checks as one being sampled: a planted config.yaml
        # next to the checkpoint is refused, never trusted. Targets this command composes itself at the same
        # keys (a callback of the user's own, typed again with resume=auto) are the user's, not the file's.
        load_run_config(resolve_run(checkpoint, cfg.paths.log_dir).run_dir, vouched=targets_of(cfg))
    return checkpoint


def _objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a Hydra sweeper (Optuna) optimises: the final metric named by `optimized_metric`."""
    key = cfg.get("optimized_metric")
    if not key:
        return None
    if key not in metrics:
        raise GanlabError(f"optimized_metric={key}: not among the run's final metrics "
                          f"({', '.join(metrics) or 'none'}); name a logged validation metric")
    return metrics[key]


def train(cfg: DictConfig) -> Path | float:
    """Fit; return the run dir, or the value of `optimized_metric` when a sweeper asks for one."""
    check_values(cfg, "train")
    _refuse_multirun_with_ddp(cfg)
    check_run_name(cfg.name)  # also a sweep's per-job name= (the run dir itself was checked before Hydra made it)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = _resume_checkpoint(cfg)
    if ckpt_path is not None:
        resume_ckpt = load_checkpoint(ckpt_path)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    model: pl.LightningModule = instantiate(cfg.model)
    if ckpt_path is not None:
        _check_fits(model, resume_ckpt, ckpt_path)
        del resume_ckpt
    loggers = _instantiate_all(cfg.get("logger"))
    best = BestMetrics()
    callbacks = _instantiate_all(cfg.get("callbacks")) + [PerRankSeed(cfg.seed), best]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.get("perf"):
        callbacks.append(instantiate(cfg.perf))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    sweep = sweep_info(cfg)
    if rank_zero_only.rank == 0:
        write_yaml_atomic(run_dir / CONFIG_FILE, OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
        update_manifest(
            run_dir,
            status="running",
            name=cfg.name,
            ganlab_version=__version__,
            started=dt.datetime.now().isoformat(timespec="seconds"),
            overrides=overrides,
            resumed_from=str(ckpt_path) if ckpt_path else None,
            # Which process writes this run: `ganlab runs` shows a "running" run whose process is gone as killed.
            host=socket.gethostname(),
            pid=os.getpid(),
            **({"sweep": sweep} if sweep else {}),
        )
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException as err:
        if rank_zero_only.rank == 0:
            interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
            try:
                update_manifest(run_dir, status="interrupted" if interrupted else "failed",
                                error=f"{type(err).__name__}: {err}"[:500], global_step=trainer.global_step)
            except (OSError, GanlabError):  # a full or read-only disk: report what stopped the run, not this
                pass
        raise
    stopped_by = next((c.stopped_by for c in trainer.callbacks if isinstance(c, SignalCheckpoint) and c.stopped_by),
                      None)
    status = "interrupted" if trainer.interrupted or stopped_by else "completed"
    # Save the final state explicitly: periodic checkpoints need not fall on the last step.
    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    trainer.save_checkpoint(last, weights_only=False)
    metrics = _metrics(trainer)
    # Final metrics on the held-out split at the final weights (fit validates only at epoch ends).
    if trainer.limit_val_batches and status == "completed":
        trainer.validate(model, datamodule=datamodule, verbose=False)
        metrics.update(_metrics(trainer))
    if trainer.is_global_zero:
        if isinstance(model, ImageTranslation) and model.val_history:  # per-patient scores, as SynthRAD reports
            write_csv_atomic(run_dir / "val_patients.csv", model.val_history)
        # TensorBoard's HParams tab: the run's (swept) overrides with its final and best validation metrics.
        log_hparams(trainer, run_hparams(cfg, overrides, sweep["swept"] if sweep else None),
                    hparams_metrics(metrics, best.best))
        update_manifest(
            run_dir,
            status=status,
            finished=dt.datetime.now().isoformat(timespec="seconds"),
            global_step=trainer.global_step,
            last_checkpoint=str(last.relative_to(run_dir)),
            metrics=metrics,
            best_metrics=dict(best.best),
            perf=getattr(trainer, "perf_report", None),
            **({"stopped_by": stopped_by} if stopped_by else {}),
        )
        print(f"ganlab train: {status}{' by ' + stopped_by if stopped_by else ''} at step {trainer.global_step}; "
              f"run dir: {run_dir}")
    if stopped_by:
        # Not a success: a scheduler or a shell loop sees 128 + signal number, as if the signal had killed
        # us, and re-running the same command with resume=auto continues from this checkpoint.
        print(f"ganlab train: continue with the same command plus resume=auto", file=sys.stderr)
        sys.exit(128 + getattr(signal, stopped_by, signal.SIGTERM))
    objective = _objective(cfg, metrics)
    return run_dir if objective is None else objective

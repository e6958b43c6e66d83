"""A test-only callback, importable by the `ganlab` subprocesses (tests/ is on their PYTHONPATH)."""

import os

import pytorch_lightning as pl
import torch


class StartStateProbe(pl.Callback):
    """Saves what training starts from (step, weights, optimizer states) to $GANLAB_PROBE."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(
            {
                "global_step": trainer.global_step,
                "state_dict": {k: v.clone() for k, v in pl_module.state_dict().items()},
                "optimizer_states": [opt.state_dict() for opt in trainer.optimizers],
            },
            os.environ["GANLAB_PROBE"],
        )

"""Test-only callbacks for the crash-safety and DDP tests (tests/ is on the `ganlab` subprocesses' PYTHONPATH)."""

import hashlib
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch


class StepProbe(pl.Callback):
    """Writes the global step to $GANLAB_STEP_FILE after every batch and sleeps $GANLAB_STEP_SLEEP seconds,
    so a test can send a signal at a known point of a run."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = Path(os.environ["GANLAB_STEP_FILE"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(trainer.global_step))
        os.replace(tmp, path)
        time.sleep(float(os.environ.get("GANLAB_STEP_SLEEP", "0.05")))


class DDPProbe(pl.Callback):
    """Per rank: the RNG state training starts with, hashes of the samples of the first batches, and the
    weights after the first update and at the end, saved to $GANLAB_PROBE_DIR/rank<r>.pt."""

    def __init__(self):
        self.record = {"samples": [], "batches": 0}

    def on_train_start(self, trainer, pl_module):
        self.record.update(rank=trainer.global_rank, world_size=trainer.world_size,
                           rng_state=torch.random.get_rng_state().clone())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx < 2:
            images = batch["image"].detach().cpu()
            self.record["samples"] += [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.record["batches"] += 1
        if batch_idx == 0:
            self.record["after_first_update"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.record["step_after_first_update"] = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        self.record["final"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.record["global_step"] = trainer.global_step
        out = Path(os.environ["GANLAB_PROBE_DIR"]) / f"rank{trainer.global_rank}.pt"
        torch.save(self.record, out)

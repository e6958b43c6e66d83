"""Per-rank noise under DDP: every rank draws different latents, so N ranks train on N different fakes.

`train` seeds every process with the same `seed` so that all ranks build the same model (DDP also
broadcasts rank 0's weights and buffers when it wraps the module). Left like that, each rank would then
draw the very same `z` batches, and the extra GPUs would compute identical fakes. Once the ranks are
known (`setup`, after the launch), rank r > 0 reseeds torch with `seed + r`; rank 0 keeps its stream, so a
single-process run is unchanged by this callback.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class PerRankSeed(pl.Callback):
    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.world_size > 1 and trainer.global_rank > 0:
            torch.manual_seed(self.seed + trainer.global_rank)

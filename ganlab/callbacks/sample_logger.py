"""TensorBoard pictures of G during training: a grid from the fixed noise batch, or a 1-D density plot."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

from ganlab.plots import density_figure, image_grid


def _tensorboards(trainer: pl.Trainer) -> list[Any]:
    return [lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_image")]


class GeneratedSamplesLogger(pl.Callback):
    """Every `every_n_steps` optimizer steps (and at the start), log what G makes of `pl_module.fixed_z`."""

    def __init__(self, every_n_steps: int = 500, num_density_samples: int = 4096) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.samples.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.num_density_samples = num_density_samples
        self._last_bucket = -1

    def _maybe_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, real: torch.Tensor | None) -> None:
        bucket = trainer.global_step // self.every_n_steps
        if bucket == self._last_bucket or not trainer.is_global_zero:
            return
        self._last_bucket = bucket
        boards = _tensorboards(trainer)
        if not boards:
            return
        step = trainer.global_step
        if len(pl_module.sample_shape) == 3:
            grid = image_grid(pl_module.generate(pl_module.fixed_z))
            for board in boards:
                board.add_image("samples/fixed_noise", grid, step)
        elif len(pl_module.sample_shape) == 1 and pl_module.sample_shape[0] == 1:
            rng = torch.Generator(device=pl_module.fixed_z.device).manual_seed(0)
            fake = pl_module.generate(pl_module.sample_z(self.num_density_samples, generator=rng))
            for board in boards:
                board.add_histogram("samples/generated", fake.flatten(), step)
                fig = density_figure(fake, real, title=f"step {step}")
                board.add_figure("samples/density", fig, step, close=True)
                plt.close(fig)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_log(trainer, pl_module, None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._maybe_log(trainer, pl_module, batch["image"])

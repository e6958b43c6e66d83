"""TensorBoard pictures of G during training: a grid from the fixed noise batch, a 1-D density or a 2-D scatter.

For 2-D runs it also keeps a small snapshot of G's points at every logging step and draws them side by side
(`samples/collapse_strip`), so mode collapse can be watched in one figure. The snapshots are this callback's
checkpoint state (plain tensors and ints, readable with weights_only=True): `ganlab sample` draws the same
strip from a run's checkpoint, with or without TensorBoard.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

from ganlab.errors import GanlabError
from ganlab.plots import density_figure, image_grid, scatter_figure, snapshot_strip_figure


def _tensorboards(trainer: pl.Trainer) -> list[Any]:
    return [lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_image")]


def _fixed_seed_samples(pl_module: pl.LightningModule, n: int) -> torch.Tensor:
    """n samples of G from latents seeded with 0: the same points at every step, so frames compare."""
    rng = torch.Generator(device=pl_module.fixed_z.device).manual_seed(0)
    return pl_module.generate(pl_module.sample_z(n, generator=rng))


def _add_figure(boards: list[Any], tag: str, fig: plt.Figure, step: int) -> None:
    for board in boards:
        board.add_figure(tag, fig, step, close=False)
    plt.close(fig)


def snapshots_of_state(state: dict[str, Any]) -> list[tuple[int, torch.Tensor]]:
    """The (step, points) snapshots from GeneratedSamplesLogger's checkpoint state ([] if it kept none)."""
    steps, points = state.get("snapshot_steps", []), state.get("snapshot_points")
    return [(int(step), points[i]) for i, step in enumerate(steps)]


class GeneratedSamplesLogger(pl.Callback):
    """Every `every_n_steps` optimizer steps (and at the start), log what G makes of `pl_module.fixed_z`."""

    def __init__(self, every_n_steps: int = 500, num_density_samples: int = 4096,
                 num_scatter_samples: int = 2500, num_snapshot_samples: int = 1000) -> None:
        if every_n_steps < 1:
            raise GanlabError(f"callbacks.samples.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.num_density_samples = num_density_samples
        self.num_scatter_samples = num_scatter_samples
        self.num_snapshot_samples = num_snapshot_samples
        self._last_bucket = -1
        self.snapshots: list[tuple[int, torch.Tensor]] = []  # 2-D runs: (step, (n, 2) points) per logging step

    def state_dict(self) -> dict[str, Any]:
        if not self.snapshots:
            return {}
        return {"snapshot_steps": [step for step, _ in self.snapshots],
                "snapshot_points": torch.stack([points for _, points in self.snapshots])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.snapshots = snapshots_of_state(state_dict)

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """Record the first n of G's fixed-seed points at this step; returns the whole draw for the scatter."""
        fake = _fixed_seed_samples(pl_module, self.num_scatter_samples)
        step = trainer.global_step
        self.snapshots = [s for s in self.snapshots if s[0] < step]  # a resumed run redraws from its step on
        self.snapshots.append((step, fake[: self.num_snapshot_samples].detach().float().cpu()))
        return fake

    def _maybe_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, real: torch.Tensor | None) -> None:
        bucket = trainer.global_step // self.every_n_steps
        if bucket == self._last_bucket or not trainer.is_global_zero:
            return
        self._last_bucket = bucket
        is_2d = tuple(pl_module.sample_shape) == (2,)
        fake = self._snapshot(trainer, pl_module) if is_2d else None
        boards = _tensorboards(trainer)
        if not boards:
            return
        step = trainer.global_step
        if len(pl_module.sample_shape) == 3:
            grid = image_grid(pl_module.fixed_samples(), nrow=pl_module.num_classes or None)
            for board in boards:
                board.add_image("samples/fixed_noise", grid, step)
        elif tuple(pl_module.sample_shape) == (1,):
            fake = _fixed_seed_samples(pl_module, self.num_density_samples)
            for board in boards:
                board.add_histogram("samples/generated", fake.flatten(), step)
            _add_figure(boards, "samples/density", density_figure(fake, real, title=f"step {step}"), step)
        elif is_2d:
            centers = getattr(trainer.datamodule, "centers", None)
            _add_figure(boards, "samples/scatter", scatter_figure(fake, centers, title=f"step {step}"), step)
            _add_figure(boards, "samples/collapse_strip", snapshot_strip_figure(self.snapshots, centers), step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_log(trainer, pl_module, None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._maybe_log(trainer, pl_module, batch["image"])

"""The learning-rate schedule the adversarial models share: constant, then linearly down to 0.

The CycleGAN/pix2pix reference schedule, also what sharpens a GAN's samples at the end of training (the
2-D toys' high-quality share). Counted in G steps; schedulers are stepped by the model after each G step.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


class LinearDecay:
    """LR factor at G step k: 1 before `start`, then linearly down to 0 at `total` (a LambdaLR lambda that
    pickles as plain ints, so the scheduler's state loads with weights_only=True)."""

    def __init__(self, total: int, start: int) -> None:
        self.total, self.start = total, start

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 1.0
        return max(0.0, (self.total - step) / max(1, self.total - self.start))


class LinearDecaySchedule:
    """Mixin for a LightningModule whose batches make one G step each (trainer.max_steps counts both
    optimizers' steps, 2 per batch)."""

    def total_g_steps(self) -> int:
        trainer = self.trainer  # type: ignore[attr-defined]
        if trainer.max_steps and trainer.max_steps > 0:
            return max(1, trainer.max_steps // 2)
        return max(1, int(trainer.estimated_stepping_batches))

    def linear_decay(self, optimizers: Sequence[torch.optim.Optimizer], decay_start: float) -> list[Any]:
        """One LambdaLR per optimizer: constant until `decay_start` (a fraction of the G steps), then linearly
        to 0 at the end."""
        total = self.total_g_steps()
        decay = LinearDecay(total, round(decay_start * total))
        return [torch.optim.lr_scheduler.LambdaLR(opt, decay) for opt in optimizers]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resume restores the schedulers' step counts; the decay's shape (total, start) follows this run's
        # trainer.max_steps, so a run resumed with a larger budget decays over the new one.
        for state in checkpoint.get("lr_schedulers", []):
            state["lr_lambdas"] = [None] * len(state.get("lr_lambdas", []))

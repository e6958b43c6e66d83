"""Validation metrics for 2-D mixture targets: how many modes G covers, and how sharply (PacGAN's count)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from ganlab.errors import GanlabError
from ganlab.metrics.modes import mode_coverage


class ModeCoverageMetrics2D(pl.Callback):
    """Logs val/modes_captured, val/high_quality and val/reverse_kl for `num_samples` fresh samples of G.

    The latents come from a fixed seed, so values are comparable across validation epochs and runs; the
    mode centres and std come from the datamodule (`GaussianMixtureDataModule`).
    """

    def __init__(self, num_samples: int = 2500, seed: int = 0) -> None:
        if num_samples < 1:
            raise GanlabError(f"ModeCoverageMetrics2D: num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.seed = num_samples, seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        centers = getattr(trainer.datamodule, "centers", None)
        std = getattr(trainer.datamodule, "std", None)
        if centers is None or std is None or tuple(pl_module.sample_shape) != (2,):
            raise GanlabError("ModeCoverageMetrics2D needs 2-D samples and a datamodule with `centers` and `std` "
                              "(data=ring8 or data=grid25); remove it from callbacks for other data")
        rng = torch.Generator(device=pl_module.fixed_z.device).manual_seed(self.seed)
        fake = pl_module.generate(pl_module.sample_z(self.num_samples, generator=rng))
        coverage = mode_coverage(fake, centers, std)
        pl_module.log_dict({
            "val/modes_captured": float(coverage.modes_captured),
            "val/high_quality": coverage.high_quality,
            "val/reverse_kl": coverage.reverse_kl,
        })

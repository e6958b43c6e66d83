"""Validation metrics for 1-D toy targets: how far G's samples are from held-out target samples."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from ganlab.errors import GanlabError
from ganlab.metrics.distribution import ks_1d, wasserstein1_1d


class DistributionMetrics1D(pl.Callback):
    """Logs val/w1, val/ks, val/mean_err and val/std_err from the validation step's real/fake pairs."""

    def __init__(self) -> None:
        self.real: list[torch.Tensor] = []
        self.fake: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.real, self.fake = [], []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs["real"][0].numel() != 1:
            raise GanlabError("DistributionMetrics1D needs 1-D samples; remove it from callbacks for image data")
        self.real.append(outputs["real"].detach().flatten().cpu())
        self.fake.append(outputs["fake"].detach().flatten().cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.real:
            return
        real, fake = torch.cat(self.real), torch.cat(self.fake)
        pl_module.log_dict({
            "val/w1": wasserstein1_1d(fake, real),
            "val/ks": ks_1d(fake, real),
            "val/mean_err": (fake.mean() - real.mean()).abs().item(),
            "val/std_err": (fake.std() - real.std()).abs().item(),
        })

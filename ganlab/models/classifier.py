"""Supervised image classifier as a LightningModule: cross-entropy on {"image", "label"} batches.

Its runs are the feature space for image-quality metrics of generated images
(`ganlab.metrics.image_quality`) and, later, the subject of the interpretability methods.
"""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ganlab.errors import GanlabError
from ganlab.models.step_logging import log_train_values

OptimizerFactory = Callable[..., torch.optim.Optimizer]
# cosine: the learning rate falls to 0 over trainer.max_steps, so the last weights are not a snapshot taken
# mid-wobble (with a constant rate held-out accuracy swings by a point between epochs).
SCHEDULES = ("constant", "cosine")


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, optimizer: OptimizerFactory | None = None, lr: float = 1e-3,
                 schedule: str = "constant") -> None:
        super().__init__()
        # The net and the optimizer factory are rebuilt from config.yaml, never pickled into the checkpoint
        # (so checkpoints load with weights_only=True).
        self.save_hyperparameters(ignore=["net", "optimizer"])
        num_classes = getattr(net, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise GanlabError(f"model.net: {type(net).__name__} must have an int attribute num_classes >= 2 "
                              f"(got {num_classes!r}); e.g. ganlab.nets.classifier.CNNClassifier")
        if schedule not in SCHEDULES:
            raise GanlabError(f"model.schedule={schedule}: expected one of {', '.join(SCHEDULES)}")
        self.net = net
        self.optimizer_factory = optimizer or torch.optim.Adam
        # Metric states are not persistent, so they stay out of the checkpoint's state_dict.
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        optimizer = self.optimizer_factory(self.net.parameters(), lr=self.hparams.lr)
        steps = self.trainer.max_steps  # Lightning calls this with its trainer attached
        if self.hparams.schedule == "constant" or steps is None or steps < 1:  # no step budget: nothing to decay over
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.net(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = (logits.detach().argmax(1) == batch["label"]).float().mean()
        log_train_values(self, {"train/loss": loss.detach(), "train/acc": accuracy})
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Held-out batches: loss and accuracy are averaged over the whole validation set."""
        logits = self.net(batch["image"])
        self.val_acc(logits, batch["label"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), batch_size=logits.shape[0])
        self.log("val/acc", self.val_acc, prog_bar=True)

"""Lightning's progress bar, showing the logged train/* values without a host sync per step.

Lightning turns every value logged with prog_bar=True into a Python number whenever metrics are gathered,
which on a GPU waits for the step to finish (a host sync) at every batch. ganlab's models log their
per-step values as plain tensors instead, and this bar reads them only when it redraws, every
`refresh_rate` batches (configs/callbacks/default.yaml ties that to trainer.log_every_n_steps).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class TrainProgressBar(TQDMProgressBar):
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and not key.endswith(("_step", "_epoch")) and value.numel() == 1:
                items[key.removeprefix("train/")] = f"{float(value):.3g}"
        return items

"""FID, KID, precision and recall of a GAN's samples at every validation, in a trained classifier's features.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from ganlab.errors import GanlabError
from ganlab.feature_nets import feature_source
from ganlab.metrics.image_quality import ImageQuality, inception_fid, inception_input


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The same noise at every evaluation (and on every rank), without disturbing training's RNG stream."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class ImageQualityMetrics(pl.Callback):
    """Compares up to `num_samples` held-out real images with as many generated ones at each validation end.

    The feature space: `feature_run` (a classifier run: latest:<name>, a run dir or a .ckpt) when given, else
    `feature_net` (`mnist`: the classifier shipped with ganlab, or a .pt weights file of that format).

    `every_n_steps`: during fit, evaluate only once that many optimizer steps have passed since the last
    evaluation (None: at every validation); a separate `trainer.validate` (train's final pass) always
    evaluates. Real images come from `trainer.datamodule.val_dataloader()` (never the training data); their
    features are computed once. Every rank computes the same numbers from the whole held-out set and the same
    seeded noise, so nothing has to be synchronised and no rank waits for another.
    """

    def __init__(self, feature_run: str | None = None, feature_net: str | None = None, num_samples: int = 1000,
                 batch_size: int = 250, k: int = 3, log_dir: str = "outputs", kid_subsets: int = 50,
                 kid_subset_size: int = 1000, seed: int = 0, inception_weights: str | None = None,
                 every_n_steps: int | None = None) -> None:
        if num_samples <= k or batch_size < 1 or k < 1:
            raise GanlabError(f"callbacks.image_metrics: need k >= 1, num_samples > k and batch_size >= 1, got "
                              f"k={k}, num_samples={num_samples}, batch_size={batch_size}")
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int)
                                          or every_n_steps < 1):
            raise GanlabError(f"callbacks.image_metrics.every_n_steps={every_n_steps}: expected an integer >= 1 "
                              "or null (every validation)")
        # Loaded here, so a wrong feature_run or feature_net fails before training starts.
        features = feature_source(feature_run, feature_net, log_dir)
        self.quality = ImageQuality(features, k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                                    num_classes=features.net.num_classes, seed=seed)
        self.inception = inception_fid(inception_weights) if inception_weights is not None else None
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.every_n_steps = every_n_steps
        self.last_step: int | None = None  # global step of the last evaluation during fit
        # Labels of the real images (-1 where the data has none), set at the first evaluation: one generated
        # image per real one, of the same class for conditional generators.
        self.real_labels: Tensor | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not (callable(getattr(pl_module, "generate", None)) and callable(getattr(pl_module, "sample_z", None))):
            raise GanlabError(f"callbacks.image_metrics: {type(pl_module).__name__} is not a generator model "
                              "(needs sample_z(n) and generate(z)); remove the callback from this run")
        if trainer.datamodule is None or not callable(getattr(trainer.datamodule, "val_dataloader", None)):
            raise GanlabError("callbacks.image_metrics: needs a datamodule with a held-out val_dataloader()")

    def _add_real(self, trainer: pl.Trainer, device: torch.device) -> Tensor:
        labels, seen = [], 0
        for batch in trainer.datamodule.val_dataloader():
            images = batch["image"][: self.num_samples - seen].to(device)
            self._update(images, real=True)
            labels.append(batch.get("label", torch.full((len(images),), -1))[: len(images)])
            seen += len(images)
            if seen >= self.num_samples:
                break
        return torch.cat(labels).long()

    def _update(self, images: Tensor, real: bool, labels: Tensor | None = None) -> None:
        self.quality.update(images, real=real, labels=labels)
        if self.inception is not None:
            self.inception.update(inception_input(images), real=real)

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation evaluates (see `every_n_steps`)."""
        if trainer.sanity_checking:
            return False
        if self.every_n_steps is None or trainer.state.fn != TrainerFn.FITTING:
            return True
        return trainer.global_step - (self.last_step or 0) >= self.every_n_steps

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self.last_step = trainer.global_step
        device = pl_module.device
        self.quality.to(device)
        if self.inception is not None:
            self.inception.to(device)
        if self.real_labels is None:
            # Iterating a DataLoader draws its base seed from the global RNG: forked too, so a run's training
            # does not depend on when (or whether) the metrics first ran.
            with _seeded(self.seed, device):
                self.real_labels = self._add_real(trainer, device)
        self.quality.reset()
        if self.inception is not None:
            self.inception.reset()
        conditional = getattr(pl_module, "num_classes", 0) > 0
        if conditional and bool((self.real_labels < 0).any()):
            raise GanlabError("callbacks.image_metrics: a conditional generator needs labelled held-out batches "
                              "({'image', 'label'})")
        with _seeded(self.seed, device):
            for labels in self.real_labels.to(device).split(self.batch_size):
                z = pl_module.sample_z(len(labels))
                fake = pl_module.generate(z, labels) if conditional else pl_module.generate(z)
                self._update(fake, real=False, labels=labels if conditional else None)
        values = {f"val/{name}": value for name, value in self.quality.compute().items()}
        if self.inception is not None:
            values["val/fid_inception"] = self.inception.compute().item()
        pl_module.log_dict(values)

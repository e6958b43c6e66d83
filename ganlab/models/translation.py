"""What pix2pix and CycleGAN share: `translate`, and validation as SynthRAD2023 scores it.

Validation batches come paired, unshuffled, patient by patient ({"a", "b", "mask", "patient", "slice"} and
optionally "tissue"). Each batch's synthetic CT is mapped to HU and kept per patient; at the end of the
epoch the slices are stacked into one volume per held-out patient, scored with `ganlab.metrics.synthrad`
and averaged over patients: val/mae_hu, val/psnr, val/ssim and val/mae_<tissue>. One fixed validation
slice is drawn to TensorBoard as MR | synthetic CT | real CT | |error| at every validation.
"""

from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ganlab.data.intensity import unit_to_ct
from ganlab.errors import GanlabError
from ganlab.metrics.synthrad import PatientSlices, mean_over_patients, synthrad_metrics

DIRECTIONS = ("a2b", "b2a")


def translation_panel(a: Tensor, fake_b: Tensor, b: Tensor) -> Tensor:
    """(C, H, W) images in [-1, 1] -> one (1, H, 4W) picture in [0, 1]: a's first channel | G(a) | b | |G(a)-b|."""
    error = (fake_b[:1] - b[:1]).abs() - 1.0  # |error| in [0, 2] on the same scale: black = exact
    return ((torch.cat([a[:1], fake_b[:1], b[:1], error], dim=-1) + 1.0) / 2.0).clamp(0, 1)


def tissue_names(datamodule: object) -> Sequence[str] | None:
    """Class names of the validation "tissue" labels: the data module's, else the phantom's."""
    names = getattr(datamodule, "tissue_names", None) or getattr(datamodule, "tissues", None)
    if names:
        return list(names)
    try:
        from ganlab.data.phantom import TISSUES
    except ImportError:
        return None
    return list(TISSUES)


class ImageTranslation(pl.LightningModule):
    """Base LightningModule of the image-to-image models; subclasses implement `generator_for`."""

    directions: tuple[str, ...] = DIRECTIONS

    def __init__(self) -> None:
        super().__init__()
        self._val_volumes = PatientSlices()

    def generator_for(self, direction: str) -> nn.Module:
        raise NotImplementedError

    def _check_direction(self, direction: str) -> None:
        if direction not in self.directions:
            raise GanlabError(f"direction={direction!r}: {type(self).__name__} translates "
                              f"{' and '.join(self.directions)} only" + (
                                  " (pix2pix learns one direction; train a CycleGAN for both)"
                                  if direction in DIRECTIONS else ""))

    @torch.no_grad()
    def translate(self, x: Tensor, direction: str = "a2b") -> Tensor:
        """Images of one domain -> the other, in [-1, 1], with the generator in eval mode (no dropout noise,
        running BatchNorm statistics)."""
        self._check_direction(direction)
        net = self.generator_for(direction)
        was_training = net.training
        net.eval()
        try:
            return net(x.to(self.device))
        finally:
            net.train(was_training)

    # --- validation: SynthRAD2023 metrics on whole held-out volumes ---------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_volumes.clear()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        fake_b = self.translate(batch["a"], "a2b")
        images = {"sct": unit_to_ct(fake_b[:, 0]), "ct": unit_to_ct(batch["b"][:, 0]),
                  "mask": batch["mask"][:, 0] > 0.5}
        if "tissue" in batch:
            images["tissue"] = batch["tissue"][:, 0]
        self._val_volumes.add(batch["patient"], batch["slice"], **images)
        self.log("val/l1", (fake_b - batch["b"]).abs().mean(), batch_size=fake_b.shape[0])
        if batch_idx == 0:
            self._log_panel(translation_panel(batch["a"][0], fake_b[0], batch["b"][0]))

    def _log_panel(self, panel: Tensor) -> None:
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("val/mr_sct_ct_error", panel, self.global_step)

    def on_validation_epoch_end(self) -> None:
        if not len(self._val_volumes):
            return
        names = tissue_names(getattr(self.trainer, "datamodule", None))
        per_patient = [synthrad_metrics(v["ct"], v["sct"], v["mask"], v.get("tissue"), names)
                       for _, v in self._val_volumes.volumes() if v["mask"].any()]  # skip body-free stubs
        self._val_volumes.clear()
        if per_patient:
            self.log_dict({f"val/{k}": v for k, v in mean_over_patients(per_patient).items()})

"""What pix2pix and CycleGAN share: `translate`, and validation as SynthRAD2023 scores it.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ganlab.data.intensity import AIR_HU, HU_MIN, unit_to_ct
from ganlab.errors import GanlabError
from ganlab.models.lr_schedule import LinearDecaySchedule
from ganlab.metrics.synthrad import (PatientSlices, mae_hu, mae_per_tissue, mean_over_patients, psnr_hu,
                                     synthrad_metrics)

DIRECTIONS = ("a2b", "b2a")


def translation_panel(a: Tensor, fake_b: Tensor, b: Tensor) -> Tensor:
    """(C, H, W) images in [-1, 1] -> one (1, H, 4W) picture in [0, 1]: a's first channel | G(a) | b | |G(a)-b|."""
    error = (fake_b[:1] - b[:1]).abs() - 1.0  # |error| in [0, 2] on the same scale: black = exact
    return ((torch.cat([a[:1], fake_b[:1], b[:1], error], dim=-1) + 1.0) / 2.0).clamp(0, 1)


def tissue_names(datamodule: object) -> Sequence[str] | None:
    """Class names of the validation "tissue" labels, as the data module read them from its dataset."""
    names = getattr(datamodule, "tissues", None)
    return list(names) if names else None


FILL = {"sct": HU_MIN, "ct": HU_MIN, "mask": 0, "tissue": -1}  # cropped-away voxels: air, no body, no class


def on_original_grid(datamodule: object, patient: int, volume: dict[str, Tensor]) -> dict[str, np.ndarray | Tensor]:
    """Val patient `patient`'s stacked (n_slices, size, size) images -> its original voxel grid, with the data
    module's `restack`. A truncated validation (limit_val_batches) has too few slices to restack: its planes
    are only cropped back, slices first. Data modules without crop info (plain image batches) pass through."""
    if not hasattr(datamodule, "val_crop"):
        return volume
    try:
        return {k: datamodule.restack(patient, v.numpy(), fill=FILL[k]) for k, v in volume.items()}
    except GanlabError:  # not every slice of this patient was validated
        crop = datamodule.val_crop(patient)
        return {k: crop.invert(v.numpy(), FILL[k]) for k, v in volume.items()}


def score_volume(volume: dict[str, np.ndarray | Tensor], names: Sequence[str] | None) -> dict[str, float]:
    """SynthRAD metrics of one patient; without SSIM (as `ganlab sample` does) for a volume too thin for its
    7-voxel window."""
    ct, sct, mask, tissue = volume["ct"], volume["sct"], volume["mask"], volume.get("tissue")
    try:
        return synthrad_metrics(ct, sct, mask, tissue, names)
    except GanlabError:
        scores = {"mae_hu": mae_hu(ct, sct, mask), "psnr": psnr_hu(ct, sct, mask)}
        if tissue is not None and names:
            scores.update({f"mae_{k}": v for k, v in mae_per_tissue(ct, sct, tissue, names).items()})
        return scores


class ImageTranslation(LinearDecaySchedule, pl.LightningModule):
    """Base LightningModule of the image-to-image models; subclasses implement `generator_for`."""

    directions: tuple[str, ...] = DIRECTIONS

    def __init__(self, air_outside_mask: bool = False) -> None:
        super().__init__()
        # The body mask's outside is air (as SynthRAD's masks define it and its MAE ignores it): set it to
        # -1000 HU in the synthetic CT rather than leave the generator's noise there.
        self.air_outside_mask = air_outside_mask
        self._val_volumes = PatientSlices()
        # One row per (validation, held-out patient): step, patient id, metrics; the train task writes it to
        # <run>/val_patients.csv (the learning curve per patient, the last rows are the final weights).
        self.val_history: list[dict[str, Any]] = []

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
        mask = batch["mask"][:, 0] > 0.5
        sct = unit_to_ct(fake_b[:, 0])
        if self.air_outside_mask:
            sct = torch.where(mask, sct, torch.full_like(sct, AIR_HU))
        images = {"sct": sct, "ct": unit_to_ct(batch["b"][:, 0]), "mask": mask}
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
        datamodule = getattr(self.trainer, "datamodule", None)
        names = tissue_names(datamodule)
        ids = list(getattr(datamodule, "val_patients", None) or [])
        scored = {p: score_volume(v, names) for p, v in
                  ((p, on_original_grid(datamodule, p, v)) for p, v in self._val_volumes.volumes())
                  if v["mask"].any()}  # skip body-free stubs
        self._val_volumes.clear()
        if not scored:
            return
        self.log_dict({f"val/{k}": v for k, v in mean_over_patients(list(scored.values())).items()})
        if not self.trainer.sanity_checking:  # a re-validation at the same step (the final one) replaces its rows
            step = self.global_step
            rows = [{"step": step, "patient": ids[p] if p < len(ids) else p, **scores} for p, scores in scored.items()]
            self.val_history = [row for row in self.val_history if row["step"] != step] + rows

"""pix2pix (Isola et al. 2017): paired image-to-image translation with a conditional GAN plus L1.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.losses import get_loss
from ganlab.models.step_logging import host_scalar, log_train_values
from ganlab.models.translation import ImageTranslation
from ganlab.perf.cuda_graph import CapturableIteration

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class Pix2Pix(CapturableIteration, ImageTranslation):
    directions = ("a2b",)
    # Not measured on a GPU yet: perf.cuda_graph=auto leaves pix2pix eager until it is (see benchmarks/).
    cuda_graph_auto = False

    def __init__(
        self,
        g_ab: nn.Module,
        d_b: nn.Module,
        optimizer: OptimizerFactory | None = None,
        loss: str = "nonsaturating",
        lambda_l1: float = 100.0,
        l1_in_mask: bool = False,
        paired: bool = True,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        air_outside_mask: bool = False,
        decay_start: float = 1.0,
    ) -> None:
        super().__init__(air_outside_mask)
        # Networks and the optimizer factory are rebuilt from config.yaml, never pickled into the checkpoint.
        self.save_hyperparameters(ignore=["g_ab", "d_b", "optimizer"])
        self.automatic_optimization = False
        if not paired:
            raise GanlabError("model=pix2pix needs paired data (each MR slice with its own CT slice) but "
                              "data.paired=false; use data.paired=true, or model=cyclegan for unpaired data")
        self.loss = get_loss(loss)  # GanlabError naming model.loss if unknown
        if self.loss.gradient_penalty:
            raise GanlabError(f"model.loss={loss}: pix2pix does not implement the gradient penalty; "
                              "use nonsaturating, lsgan, hinge or minimax")
        if lambda_l1 < 0:
            raise GanlabError(f"model.lambda_l1 must be >= 0, got {lambda_l1}")
        if not 0 <= decay_start <= 1:
            raise GanlabError(f"model.decay_start={decay_start}: expected a fraction of the run in [0, 1] "
                              "(1: constant learning rate)")
        g_in, g_out = getattr(g_ab, "in_channels", None), getattr(g_ab, "out_channels", None)
        d_in, d_cond = getattr(d_b, "in_channels", None), getattr(d_b, "cond_channels", None)
        if (d_in, d_cond) != (g_out, g_in):
            raise GanlabError(f"model.d_b must judge cat(a, b): cond_channels={g_in} (a's channels) and "
                              f"in_channels={g_out} (b's channels), got cond_channels={d_cond}, in_channels={d_in}")
        self.g_ab, self.d_b = g_ab, d_b
        self.optimizer_factory = optimizer or torch.optim.Adam

    def generator_for(self, direction: str) -> nn.Module:
        return self.g_ab

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        hp = self.hparams
        opts = [self.optimizer_factory(self.g_ab.parameters(), lr=hp.lr_g),
                self.optimizer_factory(self.d_b.parameters(), lr=hp.lr_d)]
        return opts, self.linear_decay(opts, hp.decay_start)

    def l1(self, fake_b: Tensor, b: Tensor, mask: Tensor | None) -> Tensor:
        """|b - G(a)|_1 averaged over all pixels, or over the body-mask pixels with l1_in_mask."""
        error = (fake_b - b).abs()
        if not self.hparams.l1_in_mask or mask is None:
            return error.mean()
        weight = mask.expand_as(error)
        return (error * weight).sum() / weight.sum().clamp_min(1.0)

    def d_loss(self, a: Tensor, b: Tensor, fake_b: Tensor) -> Tensor:
        """D's objective: real pairs (a, b) against fake pairs (a, G(a)), G's output detached."""
        return self.loss.d_loss(self.d_b(torch.cat([a, b], 1)), self.d_b(torch.cat([a, fake_b.detach()], 1)))

    def g_losses(self, a: Tensor, b: Tensor, fake_b: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """G's objective: fool D on (a, G(a)), + lambda_l1 * |b - G(a)|_1; returns the total and both terms."""
        adv = self.loss.g_loss(self.d_b(torch.cat([a, fake_b], 1)))
        l1 = self.l1(fake_b, b, mask)
        return {"loss_g": adv + self.hparams.lambda_l1 * l1, "loss_g_adv": adv, "loss_l1": l1}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Eager, or replayed as one CUDA graph (perf.cuda_graph=true, ganlab.perf.cuda_graph.CapturableIteration).
        logs = self.run_iteration({k: batch[k] for k in ("a", "b", "mask") if k in batch})
        for scheduler in self.lr_schedulers():  # per G step (a learning-rate tensor is filled in place)
            scheduler.step()
        log_train_values(self, {**logs, "train/lr": host_scalar(self.optimizers()[0].param_groups[0]["lr"])})

    def iteration(self, inputs: dict[str, Tensor], opt_g: Any, opt_d: Any,
                  backward: Callable[[Tensor], None]) -> dict[str, Tensor]:
        """One D step, then one G step against the updated D on {"a", "b", "mask"?}; returns the values to log."""
        a, b, mask = inputs["a"], inputs["b"], inputs.get("mask")
        fake_b = self.g_ab(a)
        with self.toggled_optimizer(opt_d):
            loss_d = self.d_loss(a, b, fake_b)
            opt_d.zero_grad(set_to_none=True)
            backward(loss_d)
            opt_d.step()
        with self.toggled_optimizer(opt_g):
            g = self.g_losses(a, b, fake_b, mask)
            opt_g.zero_grad(set_to_none=True)
            backward(g["loss_g"])
            opt_g.step()
        return {"train/loss_d": loss_d.detach(), **{f"train/{k}": v.detach() for k, v in g.items()}}

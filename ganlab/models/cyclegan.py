"""CycleGAN (Zhu et al. 2017): unpaired translation a <-> b with two GANs tied by cycle consistency.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.losses import get_loss
from ganlab.models.image_pool import ImagePool
from ganlab.models.step_logging import host_scalar, log_train_values
from ganlab.models.translation import ImageTranslation
from ganlab.structure import mind_loss, quantile_loss

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def centre_channel(x: Tensor) -> Tensor:
    """The middle channel of (N, C, H, W): the slice itself of a 2.5-D stack (C = 2 context + 1)."""
    middle = x.shape[1] // 2
    return x[:, middle:middle + 1]


class CycleGAN(ImageTranslation):
    def __init__(
        self,
        g_ab: nn.Module,
        g_ba: nn.Module,
        d_a: nn.Module,
        d_b: nn.Module,
        optimizer: OptimizerFactory | None = None,
        loss: str = "lsgan",
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        lambda_structure: float = 0.0,
        lambda_histogram: float = 0.0,
        pool_size: int = 50,
        lr: float = 2e-4,
        air_outside_mask: bool = False,
        decay_start: float = 0.5,
    ) -> None:
        super().__init__(air_outside_mask)
        # Networks and the optimizer factory are rebuilt from config.yaml, never pickled into the checkpoint.
        self.save_hyperparameters(ignore=["g_ab", "g_ba", "d_a", "d_b", "optimizer"])
        self.automatic_optimization = False
        self.loss = get_loss(loss)  # GanlabError naming model.loss if unknown
        if self.loss.gradient_penalty:
            raise GanlabError(f"model.loss={loss}: CycleGAN does not implement the gradient penalty; use lsgan")
        weights = {"lambda_cycle": lambda_cycle, "lambda_identity": lambda_identity, "lambda_structure": lambda_structure,
                   "lambda_histogram": lambda_histogram, "pool_size": pool_size}
        if min(weights.values()) < 0 or not 0 <= decay_start <= 1:
            raise GanlabError("need model." + ", ".join(f"{k}={v}" for k, v in weights.items()) + " all >= 0 and "
                              f"0 <= model.decay_start={decay_start} <= 1")
        ch_a, ch_b = getattr(g_ab, "in_channels", None), getattr(g_ab, "out_channels", None)
        wiring = {"g_ba.in_channels": (getattr(g_ba, "in_channels", None), ch_b),
                  "g_ba.out_channels": (getattr(g_ba, "out_channels", None), ch_a),
                  "d_a.in_channels": (getattr(d_a, "in_channels", None), ch_a),
                  "d_b.in_channels": (getattr(d_b, "in_channels", None), ch_b),
                  "d_a.cond_channels": (getattr(d_a, "cond_channels", 0), 0),
                  "d_b.cond_channels": (getattr(d_b, "cond_channels", 0), 0)}
        bad = [f"{key}={got} (expected {want})" for key, (got, want) in wiring.items() if got != want]
        if bad:
            raise GanlabError(f"model: networks do not fit a={ch_a}-channel, b={ch_b}-channel CycleGAN: "
                              + ", ".join(bad))
        if lambda_identity > 0 and ch_a != ch_b:
            raise GanlabError(f"model.lambda_identity={lambda_identity} needs as many channels in a as in b "
                              f"(G_ab(b) must be defined), got {ch_a} and {ch_b}; set model.lambda_identity=0")
        self.g_ab, self.g_ba, self.d_a, self.d_b = g_ab, g_ba, d_a, d_b
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.pool_a, self.pool_b = ImagePool(pool_size), ImagePool(pool_size)

    def generator_for(self, direction: str) -> nn.Module:
        return self.g_ab if direction == "a2b" else self.g_ba

    def configure_optimizers(self) -> tuple[list[Any], list[Any]]:
        hp = self.hparams
        opt_g = self.optimizer_factory([*self.g_ab.parameters(), *self.g_ba.parameters()], lr=hp.lr)
        opt_d = self.optimizer_factory([*self.d_a.parameters(), *self.d_b.parameters()], lr=hp.lr)
        return [opt_g, opt_d], self.linear_decay([opt_g, opt_d], hp.decay_start)

    def d_losses(self, a: Tensor, b: Tensor, pooled_fake_a: Tensor, pooled_fake_b: Tensor) -> dict[str, Tensor]:
        """Each D: its real domain against (pooled, detached) fakes of it."""
        return {"loss_d_a": self.loss.d_loss(self.d_a(a), self.d_a(pooled_fake_a.detach())),
                "loss_d_b": self.loss.d_loss(self.d_b(b), self.d_b(pooled_fake_b.detach()))}

    def g_losses(self, a: Tensor, b: Tensor, fake_a: Tensor, fake_b: Tensor,
                 masks: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """Both generators' objective, its total and each term; `masks` are a's and b's body masks (the
        histogram term compares intensities inside them; without masks, over whole images)."""
        hp = self.hparams
        adv = self.loss.g_loss(self.d_b(fake_b)) + self.loss.g_loss(self.d_a(fake_a))
        cycle = (self.g_ba(fake_b) - a).abs().mean() + (self.g_ab(fake_a) - b).abs().mean()
        total = adv + hp.lambda_cycle * cycle
        terms = {"loss_g_adv": adv, "loss_cycle": cycle}
        if hp.lambda_identity > 0:
            identity = (self.g_ab(b) - b).abs().mean() + (self.g_ba(a) - a).abs().mean()
            total = total + hp.lambda_identity * hp.lambda_cycle * identity
            terms["loss_identity"] = identity
        if hp.lambda_structure > 0:  # MIND of each input against its translation: same anatomy, any contrast
            structure = mind_loss(centre_channel(a), centre_channel(fake_b)) + mind_loss(
                centre_channel(b), centre_channel(fake_a))
            total = total + hp.lambda_structure * structure
            terms["loss_structure"] = structure
        if hp.lambda_histogram > 0:  # each translation's intensity histogram in the body against its real domain's
            mask_a, mask_b = masks if masks is not None else (torch.ones_like(a[:, :1]), torch.ones_like(b[:, :1]))
            histogram = quantile_loss(fake_b, mask_a, b, mask_b) + quantile_loss(
                centre_channel(fake_a), mask_b, centre_channel(a), mask_a)
            total = total + hp.lambda_histogram * histogram
            terms["loss_histogram"] = histogram
        return {"loss_g": total, **terms}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        a, b = batch["a"], batch["b"]
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)

        # D step first (on the pools' mix of new and earlier fakes), then G against the updated Ds.
        with self.toggled_optimizer(opt_d):
            d = self.d_losses(a, b, self.pool_a.query(fake_a), self.pool_b.query(fake_b))
            loss_d = d["loss_d_a"] + d["loss_d_b"]
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()

        with self.toggled_optimizer(opt_g):
            masks = (batch["mask"], batch["mask_b"]) if "mask_b" in batch else None
            g = self.g_losses(a, b, fake_a, fake_b, masks)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g["loss_g"])
            opt_g.step()
        for scheduler in self.lr_schedulers():  # per G step: the decay counts G steps
            scheduler.step()

        terms = {**d, **g}
        log_train_values(self, {"train/loss_d": loss_d.detach(), **{f"train/{k}": v.detach() for k, v in terms.items()},
                                "train/lr": host_scalar(opt_g.param_groups[0]["lr"])})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["image_pools"] = {"a": self.pool_a.state_dict(), "b": self.pool_b.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # the LR decay follows this run's max_steps
        pools = checkpoint.get("image_pools")
        if pools:
            self.pool_a.load_state_dict(pools["a"], self.device)
            self.pool_b.load_state_dict(pools["b"], self.device)

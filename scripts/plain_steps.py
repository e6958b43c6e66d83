"""The plain PyTorch training steps that scripts/bench_train.py times against ganlab's Lightning modules.

Each step is written out by hand over the networks of a ganlab model and ganlab's loss functions (toggling
requires_grad as Lightning's toggled_optimizer does), with raw torch optimizers and no Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from ganlab.losses import d_loss_wasserstein, g_loss_score, get_loss, gradient_penalty
from ganlab.models.image_pool import ImagePool
from ganlab.models.progan import ema_beta


class Plain:
    """Hand-written steps over the networks of a ganlab model (its losses from ganlab.losses)."""

    def __init__(self, model: nn.Module, kind: str, cfg: Any, opts: dict[str, Any], device: torch.device) -> None:
        self.kind, self.cfg, self.device = kind, cfg, device
        self.loss = get_loss(str(cfg.model.loss)) if kind in ("gan", "pix2pix", "cyclegan") else None
        extra = {k: True for k in ("fused", "capturable") if opts.get(k)}
        factory = instantiate(cfg.model.optimizer) if "optimizer" in cfg.model else None
        hp = cfg.model
        if kind == "classifier":
            self.net = model.net
            self.opt = factory(self.net.parameters(), lr=hp.lr, **extra)
        elif kind == "progan":  # its own Adam settings (ProGAN.configure_optimizers), at the final stage
            self.g, self.d, self.g_ema = model.generator, model.discriminator, model.generator_ema
            self.latent, self.seen = model.latent_dim, model.schedule.growth_images
            self.resolution = model.schedule.max_resolution
            self.n = model.schedule.batch_size(self.resolution)
            self.opt_g = torch.optim.Adam(self.g.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=1e-8, **extra)
            self.opt_d = torch.optim.Adam(self.d.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=1e-8, **extra)
        elif kind == "gan":
            self.g, self.d = model.generator, model.discriminator
            self.latent = model.latent_dim
            self.opt_g = factory(self.g.parameters(), lr=hp.lr_g, **extra)
            self.opt_d = factory(self.d.parameters(), lr=hp.lr_d, **extra)
        elif kind == "pix2pix":
            self.g, self.d = model.g_ab, model.d_b
            self.opt_g = factory(self.g.parameters(), lr=hp.lr_g, **extra)
            self.opt_d = factory(self.d.parameters(), lr=hp.lr_d, **extra)
        else:
            self.nets = (model.g_ab, model.g_ba, model.d_a, model.d_b)
            self.opt_g = factory([*model.g_ab.parameters(), *model.g_ba.parameters()], lr=hp.lr, **extra)
            self.opt_d = factory([*model.d_a.parameters(), *model.d_b.parameters()], lr=hp.lr, **extra)
            self.pools = (ImagePool(int(hp.pool_size), seed=0), ImagePool(int(hp.pool_size), seed=1))
        self.step = {"gan": self.gan_step, "pix2pix": self.pix2pix_step, "cyclegan": self.cyclegan_step,
                     "classifier": self.classifier_step, "progan": self.progan_step}[kind]

    @staticmethod
    def _update(opt: torch.optim.Optimizer, loss: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def classifier_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        loss = torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["label"])
        self._update(self.opt, loss)
        return {"loss": loss.detach()}

    def progan_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hp, real = self.cfg.model, batch["image"][:self.n]
        fake = self.g(torch.randn(self.n, self.latent, device=real.device), resolution=self.resolution)
        self.d.requires_grad_(True)
        real_out, fake_out = self.d(real), self.d(fake.detach())
        gp = gradient_penalty(lambda x, y=None: self.d(x), real, fake)
        loss_d = d_loss_wasserstein(real_out, fake_out) + hp.gp_lambda * gp + hp.eps_drift * real_out.pow(2).mean()
        self._update(self.opt_d, loss_d)
        self.d.requires_grad_(False)
        loss_g = g_loss_score(self.d(fake))
        self._update(self.opt_g, loss_g)
        if self.g_ema is not None:
            beta = ema_beta(self.seen, self.n, hp.ema_kimg, hp.ema_rampup)
            with torch.no_grad():
                for ema, param in zip(self.g_ema.parameters(), self.g.parameters()):
                    ema.lerp_(param, 1.0 - beta)
        self.seen += self.n
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    def gan_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        real = batch["image"]
        fake = self.g(torch.randn(real.shape[0], self.latent, device=real.device), None)
        self.d.requires_grad_(True)
        loss_d = self.loss.d_loss(self.d(real, None), self.d(fake.detach(), None))
        self._update(self.opt_d, loss_d)
        self.d.requires_grad_(False)
        loss_g = self.loss.g_loss(self.d(fake, None))
        self._update(self.opt_g, loss_g)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    def pix2pix_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        a, b, hp = batch["a"], batch["b"], self.cfg.model
        fake = self.g(a)
        self.d.requires_grad_(True)
        loss_d = self.loss.d_loss(self.d(torch.cat([a, b], 1)), self.d(torch.cat([a, fake.detach()], 1)))
        self._update(self.opt_d, loss_d)
        self.d.requires_grad_(False)
        if hp.l1_in_mask:
            w = batch["mask"].expand_as(fake)
            l1 = ((fake - b).abs() * w).sum() / w.sum().clamp_min(1.0)
        else:
            l1 = (fake - b).abs().mean()
        loss_g = self.loss.g_loss(self.d(torch.cat([a, fake], 1))) + float(hp.lambda_l1) * l1
        self._update(self.opt_g, loss_g)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    def cyclegan_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        a, b, hp = batch["a"], batch["b"], self.cfg.model
        g_ab, g_ba, d_a, d_b = self.nets
        fake_b, fake_a = g_ab(a), g_ba(b)
        d_a.requires_grad_(True)
        d_b.requires_grad_(True)
        pooled_a, pooled_b = self.pools[0].query(fake_a), self.pools[1].query(fake_b)
        loss_d = (self.loss.d_loss(d_a(a), d_a(pooled_a.detach())) + self.loss.d_loss(d_b(b), d_b(pooled_b.detach())))
        self._update(self.opt_d, loss_d)
        d_a.requires_grad_(False)
        d_b.requires_grad_(False)
        adv = self.loss.g_loss(d_b(fake_b)) + self.loss.g_loss(d_a(fake_a))
        cycle = (g_ba(fake_b) - a).abs().mean() + (g_ab(fake_a) - b).abs().mean()
        identity = (g_ab(b) - b).abs().mean() + (g_ba(a) - a).abs().mean()
        loss_g = adv + hp.lambda_cycle * cycle + hp.lambda_identity * hp.lambda_cycle * identity
        self._update(self.opt_g, loss_g)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

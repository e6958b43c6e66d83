"""Progressive growing of GANs (Karras, Aila, Laine & Lehtinen 2018) as one LightningModule.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab.errors import GanlabError
from ganlab.losses import d_loss_wasserstein, g_loss_score, gradient_penalty
from ganlab.models.step_logging import host_scalar, log_train_values
from ganlab.models.progan_schedule import GrowthSchedule, Stage
from ganlab.nets.progan import ProGANDiscriminator, ProGANGenerator


def ema_beta(images_seen: int, batch_size: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """The EMA decay for one G step of ``batch_size`` images, as in StyleGAN2-ADA: the average has a half-life
    of ``ema_kimg`` thousand images, capped at ``images_seen * ema_rampup`` while the run is young, so
    beta = 0.5 ** (batch_size / half_life). Counting images (not steps) keeps the average's memory the same
    whatever the batch size; the ramp-up lets a short CPU run (or freshly faded-in blocks early on) follow G
    instead of holding on to the random initial weights, which a fixed 0.999 did for ~1,000 steps."""
    half_life = ema_kimg * 1000.0
    if ema_rampup is not None:
        half_life = min(half_life, images_seen * ema_rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


def real_at(images: Tensor, resolution: int, alpha: float = 1.0) -> Tensor:
    """Full-size reals -> the stage's input: average-pooled to ``resolution`` and, while fading (alpha < 1),
    blended with their half-resolution version upsampled back: lerp(up(pool(x)), x, alpha)."""
    factor = images.shape[-1] // resolution
    x = F.avg_pool2d(images, factor) if factor > 1 else images
    if alpha >= 1:
        return x
    coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    return torch.lerp(coarse, x, alpha)


class ProGAN(pl.LightningModule):
    # The active blocks and the fade-in weight change with the image count: a compiled network would be
    # recompiled at every stage (and alpha is a Python float), so perf.compile leaves ProGAN eager.
    supports_compile = False

    def __init__(
        self,
        generator: ProGANGenerator,
        discriminator: ProGANDiscriminator,
        stabilize_images: int = 600_000,
        fade_images: int = 600_000,
        batch_sizes: Sequence[int] = (16,) * 9,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.0, 0.99),
        gp_lambda: float = 10.0,
        eps_drift: float = 1e-3,
        ema_kimg: float = 10.0,
        ema_rampup: float | None = 0.05,
        num_fixed_samples: int = 64,
        fixed_noise_seed: int = 1234,
    ) -> None:
        super().__init__()
        # Plain types only in hparams, so checkpoints load with weights_only=True.
        batch_sizes = [int(b) for b in batch_sizes]
        betas = tuple(float(b) for b in betas)
        self.save_hyperparameters(ignore=["generator", "discriminator"])
        self.automatic_optimization = False
        if tuple(generator.out_shape) != tuple(discriminator.in_shape):
            raise GanlabError(f"model.generator makes {list(generator.out_shape)} but model.discriminator expects "
                              f"{list(discriminator.in_shape)}")
        if ema_kimg < 0 or (ema_rampup is not None and ema_rampup <= 0) or gp_lambda < 0 or eps_drift < 0 or lr <= 0:
            raise GanlabError(f"need model.ema_kimg >= 0, model.ema_rampup > 0 or null, model.gp_lambda >= 0, "
                              f"model.eps_drift >= 0, model.lr > 0; got {ema_kimg}, {ema_rampup}, {gp_lambda}, "
                              f"{eps_drift}, {lr}")
        self.schedule = GrowthSchedule(generator.out_shape[-1], stabilize_images, fade_images, tuple(batch_sizes))
        self.generator, self.discriminator = generator, discriminator
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if ema_kimg > 0 else None
        self.latent_dim: int = generator.latent_dim
        self.num_classes, self.pack = 0, 1
        rng = torch.Generator().manual_seed(fixed_noise_seed)
        self.register_buffer("fixed_z", torch.randn(num_fixed_samples, self.latent_dim, generator=rng))
        # The whole growth state: the stage is schedule.stage(images_seen).
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.long))
        # Its host copy: reading the buffer on a GPU waits for the device (a host sync), and the stage, the
        # EMA beta and the logs need it every step. Re-read after any load of the weights.
        self._seen: int | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_seen", None))
        # The run's seed (set by `ganlab train` just before building the model), for the per-epoch reseeding.
        self.register_buffer("run_seed", torch.tensor(torch.initial_seed() % 2**63, dtype=torch.long))
        self._resumed_at_epoch_end = False

    # --- what `ganlab sample` and the callbacks use -------------------------------------------------------
    def images_seen_host(self) -> int:
        if self._seen is None:
            self._seen = int(self.images_seen)
        return self._seen

    @property
    def stage(self) -> Stage:
        return self.schedule.stage(self.images_seen_host())

    @property
    def sample_shape(self) -> Sequence[int]:
        return self.generator.out_shape

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self.fixed_z.device, generator=generator)

    @torch.no_grad()
    def _sample_current(self, z: Tensor) -> Tensor:
        """The EMA generator (G without EMA) at the current resolution and alpha, in [-1, 1]."""
        net = self.generator_ema if self.generator_ema is not None else self.generator
        stage, was_training = self.stage, net.training
        net.eval()
        try:
            return net(z.to(self.fixed_z.device), resolution=stage.resolution, alpha=stage.alpha).clamp(-1, 1)
        finally:
            net.train(was_training)

    @torch.no_grad()
    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Samples at the full size: the current stage's output, nearest-upsampled if G is not fully grown
        (its later blocks are untrained until then)."""
        if y is not None:
            raise GanlabError("ProGAN is unconditional: generate(z) takes no labels")
        x = self._sample_current(z)
        size = self.sample_shape[-1]
        return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="nearest")

    def fixed_samples(self) -> Tensor:
        """TensorBoard grids at the resolution being trained."""
        return self._sample_current(self.fixed_z)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        # All blocks join from the start; inactive ones keep grad None and Adam leaves them (and their state) alone.
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=hp.betas, eps=1e-8)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=hp.betas, eps=1e-8)
        return [opt_g, opt_d]

    # --- training -------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._reseed()

    def on_fit_start(self) -> None:  # fail before the first step, not when the schedule reaches a bigger batch
        served = getattr(self.trainer.datamodule, "batch_size", None)
        if isinstance(served, int) and served < self.schedule.largest_batch:
            raise GanlabError(f"data.batch_size={served} is smaller than the largest of model.batch_sizes used up "
                              f"to {self.schedule.max_resolution}x{self.schedule.max_resolution} "
                              f"({self.schedule.largest_batch}); each batch is cut to the current stage's size")

    def on_train_start(self) -> None:
        if self._resumed_at_epoch_end:  # resuming from a checkpoint taken at an epoch's last batch: Lightning
            self._reseed()               # builds the next epoch's iterator after this without an epoch start

    def _reseed(self) -> None:
        """Reseed torch's RNG from (run seed, image counter, rank) at every epoch start. The epoch's shuffle and
        the noise after it then depend only on where training is, not on how many random numbers Lightning's
        loops drew before (every DataLoader iterator draws one, and a resumed run makes an extra one), so a run
        resumed at an epoch boundary continues exactly like one that never stopped."""
        rank = self._trainer.global_rank if self._trainer is not None else 0
        torch.manual_seed((int(self.run_seed) * 1_000_003 + self.images_seen_host() * 7919 + rank) % 2**63)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        hp, stage = self.hparams, self.stage
        n = self.schedule.batch_size(stage.resolution)
        if batch["image"].shape[0] < n:
            raise GanlabError(f"data.batch_size={batch['image'].shape[0]} is smaller than the batch size {n} that "
                              f"model.batch_sizes gives {stage.resolution}x{stage.resolution}; set data.batch_size >= "
                              f"{self.schedule.largest_batch}")
        real = real_at(batch["image"][:n], stage.resolution, stage.alpha)
        fake = self.generator(self.sample_z(n), resolution=stage.resolution, alpha=stage.alpha)
        opt_g, opt_d = self.optimizers()

        def critic(x: Tensor, y: Tensor | None = None) -> Tensor:
            return self.discriminator(x, alpha=stage.alpha)

        # D step: Wasserstein estimate E[D(G(z))] - E[D(x)], + gp_lambda * gradient penalty,
        # + eps_drift * E[D(x)^2] (the drift term keeps D's scores near 0).
        with self.toggled_optimizer(opt_d):
            real_out, fake_out = critic(real), critic(fake.detach())
            wasserstein = d_loss_wasserstein(real_out, fake_out)
            gp = gradient_penalty(critic, real, fake)
            drift = real_out.pow(2).mean()
            loss_d = wasserstein + hp.gp_lambda * gp + hp.eps_drift * drift
            opt_d.zero_grad(set_to_none=True)  # None, not zero: Adam must skip the inactive blocks
            self.manual_backward(loss_d)
            opt_d.step()

        # G step: -E[D(G(z))] through the updated D.
        with self.toggled_optimizer(opt_g):
            loss_g = g_loss_score(critic(fake))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
        step_images = n * self.trainer.world_size
        self._update_ema(step_images)
        seen = self.images_seen_host() + step_images
        self.images_seen += step_images
        self._seen = seen

        log_train_values(self, {"train/loss_d": loss_d.detach(), "train/loss_g": loss_g.detach(),
                                "train/D_score(x)": real_out.detach().mean(),
                                "train/D_score(G(z))": fake_out.detach().mean(),
                                "train/gradient_penalty": gp.detach(), "train/drift": drift.detach(),
                                "train/resolution": host_scalar(stage.resolution),
                                "train/alpha": host_scalar(stage.alpha), "train/kimg": host_scalar(seen / 1000.0)})

    @torch.no_grad()
    def _update_ema(self, images: int) -> None:
        """G_ema <- beta * G_ema + (1 - beta) * G, beta from ``ema_beta`` at the image count before this step
        (``images``: this step's batch over all ranks). The count is a saved buffer, so the ramp-up resumes exactly."""
        if self.generator_ema is None:
            return
        hp = self.hparams
        beta = ema_beta(self.images_seen_host(), images, hp.ema_kimg, hp.ema_rampup)
        for ema, param in zip(self.generator_ema.parameters(), self.generator.parameters()):
            ema.lerp_(param, 1.0 - beta)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """D's scores on held-out reals vs EMA samples at the current stage. The noise comes from a seeded
        generator, so validating never moves the training RNG (and a resumed run stays on the same stream)."""
        stage, full = self.stage, batch["image"]
        rng = torch.Generator(device=self.fixed_z.device).manual_seed(self.hparams.fixed_noise_seed + batch_idx)
        z = self.sample_z(full.shape[0], generator=rng)
        real, fake = real_at(full, stage.resolution, stage.alpha), self._sample_current(z)
        self.log_dict({"val/D_score(x)": self.discriminator(real, alpha=stage.alpha).mean(),
                       "val/D_score(G(z))": self.discriminator(fake, alpha=stage.alpha).mean()}, sync_dist=True)
        return {"real": full, "fake": self.generate(z)}

    # --- checkpoints ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ganlab_sample_shape"] = list(self.sample_shape)
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        trainer = self._trainer
        rng["epoch_end"] = bool(trainer is not None and trainer.training
                                and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        checkpoint["ganlab_rng"] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """At an epoch boundary: reseed as the next epoch's start would (Lightning may build the next epoch's
        iterator before calling on_train_epoch_start). Mid-epoch: continue the saved random stream (noise, GP
        mixing); Lightning restarts the epoch's data with a new shuffle then, so that part is not exact. With
        several processes (DDP) each rank keeps its own seeded stream: only rank 0's state is saved."""
        rng = checkpoint.get("ganlab_rng")
        trainer = self._trainer
        if rng is None or (trainer is not None and trainer.world_size > 1):
            return
        if rng.get("epoch_end"):
            self._resumed_at_epoch_end = True
            for key in ("images_seen", "run_seed"):  # the weights are loaded after this hook
                getattr(self, key).copy_(checkpoint["state_dict"][key])
            self._seen = None
            self._reseed()
            return
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

"""GAN (Goodfellow et al. 2014) and class-conditional GAN (Mirza & Osindero 2014) as one LightningModule.

Per batch: one D step, then a G step every `n_critic` D steps. Conditioning lives in the networks
(`G(z, y)`, `D(x, y)` with `num_classes > 0`); this module only passes the labels along. Manual
optimization because the two players have separate optimizers and the order matters. Lightning's
`trainer.global_step` counts optimizer steps, so one iteration advances it by 1 + (1 if G stepped).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.models.lr_schedule import LinearDecaySchedule
from ganlab.models.step_logging import log_train_values
from ganlab.nets.layers import check_labels
from ganlab.losses import discriminator_probability, get_loss, gradient_penalty, r1_of_outputs
from ganlab.perf.cuda_graph import CapturableIteration

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class GAN(LinearDecaySchedule, CapturableIteration, pl.LightningModule):
    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer: OptimizerFactory | None = None,
        loss: str = "nonsaturating",
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        n_critic: int = 1,
        gp_lambda: float = 10.0,
        r1_gamma: float = 0.0,
        r1_every: int = 1,
        label_smoothing: float = 0.0,
        ema_decay: float = 0.0,
        ema_warmup: bool = False,
        decay_start: float = 1.0,
        num_fixed_samples: int = 64,
        fixed_noise_seed: int = 1234,
    ) -> None:
        super().__init__()
        # Networks and the optimizer factory are rebuilt from config.yaml, never pickled into the checkpoint
        # (so checkpoints load with weights_only=True).
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer"])
        self.automatic_optimization = False
        self.loss = get_loss(loss)
        self._validate(generator, discriminator)
        self.generator = generator
        self.discriminator = discriminator
        # EMA of G's weights (Karras et al. 2018; Yazici et al. 2019), used for sampling and evaluation.
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if ema_decay > 0 else None
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.latent_dim: int = generator.latent_dim
        self.num_classes: int = getattr(generator, "num_classes", 0)
        rng = torch.Generator().manual_seed(fixed_noise_seed)
        # A fixed noise batch (and, if conditional, labels cycling through the classes), saved with the
        # weights, so sample grids are comparable across steps and runs.
        self.register_buffer("fixed_z", torch.randn(num_fixed_samples, self.latent_dim, generator=rng))
        self.register_buffer("fixed_y", torch.arange(num_fixed_samples) % max(self.num_classes, 1))
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))

    def _validate(self, generator: nn.Module, discriminator: nn.Module) -> None:
        hp = self.hparams
        if hp.r1_every < 1:
            raise GanlabError(f"need model.r1_every >= 1 (D steps between R1 penalties), got {hp.r1_every}")
        if hp.n_critic < 1 or not 0 <= hp.label_smoothing < 1 or not 0 <= hp.ema_decay < 1:
            raise GanlabError(f"need model.n_critic >= 1, 0 <= model.label_smoothing < 1, 0 <= model.ema_decay < 1; "
                              f"got {hp.n_critic}, {hp.label_smoothing}, {hp.ema_decay}")
        if not 0 <= hp.decay_start <= 1:
            raise GanlabError(f"model.decay_start={hp.decay_start}: expected a fraction of the run in [0, 1] "
                              "(1 = constant learning rates)")
        if hp.gp_lambda < 0 or hp.r1_gamma < 0:
            raise GanlabError(f"need model.gp_lambda >= 0 and model.r1_gamma >= 0; got {hp.gp_lambda}, {hp.r1_gamma}")
        if hp.label_smoothing:
            self.loss.d_loss(torch.zeros(1), torch.zeros(1), real_label=1.0 - hp.label_smoothing)  # raises if n/a
        g_classes, d_classes = getattr(generator, "num_classes", 0), getattr(discriminator, "num_classes", 0)
        if g_classes != d_classes:
            raise GanlabError(f"generator has num_classes={g_classes} but discriminator has {d_classes}; "
                              "a conditional GAN conditions both")
        if tuple(generator.out_shape) != tuple(discriminator.in_shape):
            raise GanlabError(f"generator makes {tuple(generator.out_shape)} but discriminator expects "
                              f"{tuple(discriminator.in_shape)}")

    @property
    def sample_shape(self) -> Sequence[int]:
        return self.generator.out_shape

    @property
    def pack(self) -> int:
        return getattr(self.discriminator, "pack", 1)

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self.fixed_z.device, generator=generator)

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        if not self.num_classes:
            return None
        return torch.randint(self.num_classes, (n,), device=self.fixed_z.device, generator=generator)

    @torch.no_grad()
    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Samples for looking at and for metrics: the EMA generator if there is one, in eval mode."""
        net = self.generator_ema if self.generator_ema is not None else self.generator
        if self.num_classes and y is None:
            raise GanlabError(f"this GAN is class-conditional ({self.num_classes} classes): pass labels y")
        was_training = net.training
        net.eval()
        try:
            return net(z.to(self.fixed_z.device), None if y is None else y.to(self.fixed_z.device))
        finally:
            net.train(was_training)

    def fixed_samples(self) -> Tensor:
        return self.generate(self.fixed_z, self.fixed_y if self.num_classes else None)

    def configure_optimizers(self) -> Any:
        opt_g = self.optimizer_factory(self.generator.parameters(), lr=self.hparams.lr_g)
        opt_d = self.optimizer_factory(self.discriminator.parameters(), lr=self.hparams.lr_d)
        if self.hparams.decay_start >= 1:
            return [opt_g, opt_d]  # constant rates: no schedulers (and checkpoints as before)
        return [opt_g, opt_d], self.linear_decay([opt_g, opt_d], self.hparams.decay_start)

    def total_g_steps(self) -> int:
        """Batches in the run (the schedule counts batches): with n_critic D steps per G step, a batch makes
        1 + 1/n_critic optimizer steps on average."""
        trainer, k = self.trainer, self.hparams.n_critic
        if trainer.max_steps and trainer.max_steps > 0:
            return max(1, trainer.max_steps * k // (k + 1))
        return max(1, int(trainer.estimated_stepping_batches))

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        return batch["label"] if self.num_classes else None

    def _scores(self, prefix: str, real_out: Tensor, fake_out: Tensor) -> dict[str, Tensor]:
        if self.loss.outputs_logits:
            return {f"{prefix}/D(x)": discriminator_probability(real_out),
                    f"{prefix}/D(G(z))": discriminator_probability(fake_out)}
        # hinge / WGAN / LSGAN outputs are scores, not logits of a probability
        return {f"{prefix}/D_score(x)": real_out.detach().mean(), f"{prefix}/D_score(G(z))": fake_out.detach().mean()}

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if batch_idx == 0 and self.num_classes:  # the networks check label ranges on the CPU only (no sync)
            check_labels(type(self.generator).__name__, batch["label"].cpu(), self.num_classes, len(batch["label"]))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        y = self._labels(batch)
        # Eager, or replayed as one CUDA graph (perf.cuda_graph, ganlab.perf.cuda_graph.CapturableIteration).
        logs = self.run_iteration({"real": batch["image"]} if y is None else {"real": batch["image"], "y": y})
        for scheduler in self.lr_schedulers() or []:  # per batch (a learning-rate tensor is filled in place)
            scheduler.step()
        log_train_values(self, logs)  # tensors, written every log_every_n_steps batches (no host sync)

    def iteration(self, inputs: dict[str, Tensor], opt_g: Any, opt_d: Any,
                  backward: Callable[[Tensor], None]) -> dict[str, Tensor]:
        """One D step, then (every n_critic D steps) one G step on {"real", "y"?}; returns the values to log."""
        hp = self.hparams
        real, y = inputs["real"], inputs.get("y")
        fake = self.generator(self.sample_z(real.shape[0]), y)
        logs: dict[str, Tensor] = {}

        # D step: the chosen D objective on real vs detached fakes, plus any gradient penalty.
        # Lazy R1 (StyleGAN2): every r1_every D steps, weighted r1_every times, the same penalty on average for
        # a fraction of its double-backward cost. (Reading the step counter is a host sync on GPU: only then.)
        with_r1 = hp.r1_gamma > 0 and (hp.r1_every == 1 or int(self.d_steps) % hp.r1_every == 0)
        with self.toggled_optimizer(opt_d):
            real_in = real.detach().requires_grad_(True) if with_r1 else real
            real_out = self.discriminator(real_in, y)
            fake_out = self.discriminator(fake.detach(), y)
            loss_d = self.loss.d_loss(real_out, fake_out, real_label=1.0 - hp.label_smoothing)
            if self.loss.gradient_penalty:  # + lambda * E[(||grad D(x_hat)|| - 1)^2]
                gp = gradient_penalty(self.discriminator, real, fake, y)
                logs["train/gradient_penalty"] = gp.detach()
                loss_d = loss_d + hp.gp_lambda * gp
            if with_r1:  # + gamma/2 * E[||grad D(x)||^2] on real data, from the D forward above
                r1 = r1_of_outputs(real_out, real_in)
                logs["train/r1_penalty"] = r1.detach()
                loss_d = loss_d + 0.5 * hp.r1_gamma * hp.r1_every * r1
            opt_d.zero_grad(set_to_none=True)
            backward(loss_d)
            opt_d.step()
        self.d_steps += 1
        logs["train/loss_d"] = loss_d.detach()

        # G step every n_critic D steps: the chosen G objective through the updated D.
        # (Reading the step counter is a host sync on GPU: only pay it when G skips steps.)
        if hp.n_critic == 1 or int(self.d_steps) % hp.n_critic == 0:
            with self.toggled_optimizer(opt_g):
                loss_g = self.loss.g_loss(self.discriminator(fake, y))
                opt_g.zero_grad(set_to_none=True)
                backward(loss_g)
                opt_g.step()
            self._update_ema()
            logs["train/loss_g"] = loss_g.detach()
        return {**logs, **self._scores("train", real_out, fake_out)}

    def cuda_graph_unsupported(self) -> str | None:
        for key in ("n_critic", "r1_every"):
            if self.hparams[key] != 1:
                return (f"model.{key}={self.hparams[key]}: the step depends on a step counter read on the host, "
                        "which a CUDA graph cannot replay")
        return None

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.generator_ema is None:
            return
        decay: float | Tensor = self.hparams.ema_decay
        if self.hparams.ema_warmup:
            # decay_t = min(decay, (1 + t) / (10 + t)) (as TensorFlow's ExponentialMovingAverage with num_updates):
            # early on the average follows G instead of dragging its random initial weights along for ~1/(1-decay)
            # steps, so validation during training sees the EMA generator, not its start. A device tensor: no sync.
            t = self.d_steps.to(torch.float32)
            decay = torch.clamp((1 + t) / (10 + t), max=decay)
        for ema, param in zip(self.generator_ema.parameters(), self.generator.parameters()):
            ema.lerp_(param, 1.0 - decay)
        for ema, buf in zip(self.generator_ema.buffers(), self.generator.buffers()):
            ema.copy_(buf)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """D on held-out real data vs fresh samples; returns both so metric callbacks can compare them."""
        keep = batch["image"].shape[0] - batch["image"].shape[0] % self.pack  # PacGAN's D needs whole packs
        real, y = batch["image"][:keep], self._labels(batch)
        y = None if y is None else y[:keep]
        fake = self.generate(self.sample_z(keep), y)
        # sync_dist: under DDP each rank scores its own shard; the logged value is the mean over ranks.
        self.log_dict(self._scores("val", self.discriminator(real, y), self.discriminator(fake, y)), sync_dist=True)
        return {"real": real, "fake": fake}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ganlab_sample_shape"] = list(self.sample_shape)

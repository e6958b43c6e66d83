"""Unconditional GAN (Goodfellow et al. 2014) as a LightningModule: one D step, then one G step, per batch.

Manual optimization because the two players have separate optimizers and the order matters. Note that
Lightning's `trainer.global_step` counts optimizer steps, so one GAN iteration advances it by 2.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ganlab.losses import discriminator_probability, get_loss

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class GAN(pl.LightningModule):
    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer: OptimizerFactory | None = None,
        loss: str = "nonsaturating",
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        num_fixed_samples: int = 64,
        fixed_noise_seed: int = 1234,
    ) -> None:
        super().__init__()
        # Networks and the optimizer factory are rebuilt from config.yaml, never pickled into the checkpoint
        # (so checkpoints load with weights_only=True).
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer"])
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.loss = get_loss(loss)
        self.latent_dim: int = generator.latent_dim
        fixed = torch.randn(num_fixed_samples, self.latent_dim, generator=torch.Generator().manual_seed(fixed_noise_seed))
        # A fixed noise batch, saved with the weights, so sample grids are comparable across steps and runs.
        self.register_buffer("fixed_z", fixed)

    @property
    def sample_shape(self) -> Sequence[int]:
        return self.generator.out_shape

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self.fixed_z.device, generator=generator)

    @torch.no_grad()
    def generate(self, z: Tensor) -> Tensor:
        """G(z) in eval mode (batch-norm running statistics), restoring the previous mode."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self.generator(z.to(self.fixed_z.device))
        finally:
            self.generator.train(was_training)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opt_g = self.optimizer_factory(self.generator.parameters(), lr=self.hparams.lr_g)
        opt_d = self.optimizer_factory(self.discriminator.parameters(), lr=self.hparams.lr_d)
        return [opt_g, opt_d]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real = batch["image"]
        fake = self.generator(self.sample_z(real.shape[0]))

        # D step: maximise E[log D(x)] + E[log(1 - D(G(z)))]; G's output is detached.
        with self.toggled_optimizer(opt_d):
            real_logits = self.discriminator(real)
            fake_logits = self.discriminator(fake.detach())
            loss_d = self.loss.d_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()

        # G step: the selected V^(G) (minimax or non-saturating) through the updated D.
        with self.toggled_optimizer(opt_g):
            loss_g = self.loss.g_loss(self.discriminator(fake))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()

        self.log_dict(
            {
                "train/loss_d": loss_d.detach(),
                "train/loss_g": loss_g.detach(),
                "train/D(x)": discriminator_probability(real_logits),
                "train/D(G(z))": discriminator_probability(fake_logits),
            },
            prog_bar=True,
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """D on held-out real data vs fresh fakes; returns both so metric callbacks can compare them."""
        real = batch["image"]
        fake = self.generator(self.sample_z(real.shape[0]))
        self.log_dict(
            {
                "val/D(x)": discriminator_probability(self.discriminator(real)),
                "val/D(G(z))": discriminator_probability(self.discriminator(fake)),
            }
        )
        return {"real": real, "fake": fake}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ganlab_sample_shape"] = list(self.sample_shape)

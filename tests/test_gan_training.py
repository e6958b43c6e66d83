"""Each loss and trick acts as its formula says: one GAN iteration on a hand-checkable linear G and D.

G(z) = a z + c and D(x) = w x + b on 1-D data, plain SGD, so after one D step and one G step every
parameter must equal what the closed-form derivative of the paper's objective gives. A penalty that is
never applied (or a wrong sign or factor) changes these numbers.
"""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from ganlab.models.gan import GAN

LR = 0.1
X = torch.tensor([[0.5], [1.5], [-0.3], [2.0]])
Z = torch.tensor([[0.2], [-1.0], [0.7], [0.1]])
A0, C0, W0, B0 = 0.8, -0.4, 2.0, 0.3


class LinearG(nn.Module):
    latent_dim, out_shape, num_classes = 1, (1,), 0

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        with torch.no_grad():
            self.lin.weight.fill_(A0)
            self.lin.bias.fill_(C0)

    def forward(self, z, y=None):
        return self.lin(z)


class LinearD(nn.Module):
    in_shape, num_classes, pack = (1,), 0, 1

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        with torch.no_grad():
            self.lin.weight.fill_(W0)
            self.lin.bias.fill_(B0)

    def forward(self, x, y=None):
        return self.lin(x).squeeze(1)


def fit(batches: int = 1, **kwargs) -> GAN:
    model = GAN(LinearG(), LinearD(), optimizer=functools.partial(torch.optim.SGD), lr_g=LR, lr_d=LR, **kwargs)
    model.sample_z = lambda n, generator=None: Z.clone()
    data = DataLoader([{"image": X, "label": torch.zeros(4, dtype=torch.long)}] * batches, batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=data)
    return model


def params(model: GAN) -> tuple[float, float, float, float]:
    g, d = model.generator.lin, model.discriminator.lin
    return g.weight.item(), g.bias.item(), d.weight.item(), d.bias.item()


def expected(d_grad, g_grad_wrt_fake) -> tuple[float, float, float, float]:
    """Apply the hand-derived D gradient (dw, db), then the G gradient through the updated D."""
    x, z = X.flatten().double(), Z.flatten().double()
    f = A0 * z + C0
    dw, db = d_grad(x, f, W0, B0)
    w1, b1 = W0 - LR * dw, B0 - LR * db
    df = g_grad_wrt_fake(f, w1, b1) / len(z)  # dL_G / df_i
    a1, c1 = A0 - LR * (df * z).sum().item(), C0 - LR * df.sum().item()
    return a1, c1, w1, b1


def sig(t):
    return torch.sigmoid(t)


def bce_d_grad(real_label=1.0, r1_gamma=0.0):
    def grad(x, f, w, b):
        r, s = w * x + b, w * f + b
        # d/dr [s_l*softplus(-r) + (1-s_l)*softplus(r)] = sigmoid(r) - s_l ; d/ds softplus(s) = sigmoid(s)
        dr, ds = sig(r) - real_label, sig(s)
        return ((dr * x).mean() + (ds * f).mean()).item() + r1_gamma * w, (dr.mean() + ds.mean()).item()
    return grad


CASES = {
    # name: (model kwargs, D gradient (dw, db), G gradient dL_G/df_i * n)
    "nonsaturating": ({}, bce_d_grad(), lambda f, w, b: -(1 - sig(w * f + b)) * w),
    "minimax": ({}, bce_d_grad(), lambda f, w, b: -sig(w * f + b) * w),
    "label_smoothing": ({"label_smoothing": 0.1}, bce_d_grad(real_label=0.9), lambda f, w, b: -(1 - sig(w * f + b)) * w),
    "r1": ({"r1_gamma": 3.0}, bce_d_grad(r1_gamma=3.0), lambda f, w, b: -(1 - sig(w * f + b)) * w),
    "lsgan": (
        {},
        lambda x, f, w, b: (((w * x + b - 1) * x).mean().item() + ((w * f + b) * f).mean().item(),
                            (w * x + b - 1).mean().item() + (w * f + b).mean().item()),
        lambda f, w, b: (w * f + b - 1) * w,
    ),
    "hinge": (
        {},
        lambda x, f, w, b: ((-x * ((w * x + b) < 1)).mean().item() + (f * ((w * f + b) > -1)).mean().item(),
                            (-1.0 * ((w * x + b) < 1)).mean().item() + (1.0 * ((w * f + b) > -1)).mean().item()),
        lambda f, w, b: -w * torch.ones_like(f),
    ),
    # WGAN-GP: grad_x D = w for a linear critic, so the penalty is lambda (|w| - 1)^2 and adds
    # 2 lambda (|w| - 1) sign(w) to dL/dw: 20 here, which dominates the update.
    "wgan_gp": (
        {"gp_lambda": 10.0},
        lambda x, f, w, b: ((f.mean() - x.mean()).item() + 2 * 10.0 * (abs(w) - 1) * (1 if w > 0 else -1), 0.0),
        lambda f, w, b: -w * torch.ones_like(f),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_iteration_matches_the_formula(case):
    kwargs, d_grad, g_grad = CASES[case]
    loss = {"label_smoothing": "nonsaturating", "r1": "nonsaturating"}.get(case, case)
    model = fit(loss=loss, **kwargs)
    assert params(model) == pytest.approx(expected(d_grad, g_grad), rel=1e-5, abs=1e-6)


def test_wgan_without_penalty_differs():
    with_gp = params(fit(loss="wgan_gp", gp_lambda=10.0))
    without = params(fit(loss="wgan_gp", gp_lambda=0.0))
    assert with_gp[2] == pytest.approx(without[2] - LR * 20.0, rel=1e-5)


def test_n_critic_steps_g_every_nth_batch():
    model = fit(batches=4, n_critic=2)
    assert model.trainer.global_step == 4 + 2
    assert int(model.d_steps) == 4


def test_ema_generator_averages_weights_and_is_used_for_sampling():
    model = fit(ema_decay=0.25)
    a1, c1 = model.generator.lin.weight.item(), model.generator.lin.bias.item()
    ema = model.generator_ema.lin
    assert ema.weight.item() == pytest.approx(0.25 * A0 + 0.75 * a1)
    assert ema.bias.item() == pytest.approx(0.25 * C0 + 0.75 * c1)
    z = torch.tensor([[1.0]])
    assert model.generate(z).item() == pytest.approx(ema.weight.item() + ema.bias.item())


def test_lazy_r1_applies_the_penalty_every_nth_d_step_weighted_n_times():
    """r1_every=2: the first D step (counter 0) carries 2 * gamma; so one batch equals R1 with gamma 6."""
    g_grad = CASES["r1"][2]
    assert params(fit(r1_gamma=3.0, r1_every=2)) == pytest.approx(expected(bce_d_grad(r1_gamma=6.0), g_grad))
    # Two batches: the second D step (counter 1) has no R1, as a run with r1_gamma=0 on that step would be.
    lazy, every = fit(batches=2, r1_gamma=3.0, r1_every=2), fit(batches=2, r1_gamma=3.0)
    assert params(lazy) != pytest.approx(params(every))


def test_ema_warmup_follows_g_early():
    """decay_t = min(decay, (1 + t) / (10 + t)) with t = 1 after the first D step: 2/11, not 0.999."""
    model = fit(ema_decay=0.999, ema_warmup=True)
    a1 = model.generator.lin.weight.item()
    beta = 2 / 11
    assert model.generator_ema.lin.weight.item() == pytest.approx(beta * A0 + (1 - beta) * a1)


def test_linear_lr_decay_counts_batches_and_reaches_zero():
    """decay_start=0.5 over 4 batches (8 optimizer steps): factor (4 - k) / 2 from batch k = 2 on, so the
    batches run at 1, 1, 1, 1/2 and the rate reaches 0 as the run ends."""
    model = GAN(LinearG(), LinearD(), optimizer=functools.partial(torch.optim.SGD), lr_g=LR, lr_d=LR,
                decay_start=0.5)
    model.sample_z = lambda n, generator=None: Z.clone()
    seen = []

    class RecordLR(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append([group["lr"] for opt in trainer.optimizers for group in opt.param_groups])

    data = DataLoader([{"image": X, "label": torch.zeros(4, dtype=torch.long)}] * 4, batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[RecordLR()])
    trainer.fit(model, train_dataloaders=data)
    assert [lrs[0] for lrs in seen] == pytest.approx([LR, LR, LR, LR / 2])
    assert [group["lr"] for group in trainer.optimizers[0].param_groups] == [0.0]
    assert all(lrs[0] == lrs[1] for lrs in seen)  # G and D decay together
    assert fit().lr_schedulers() is None  # decay_start=1.0 (default): constant, no schedulers at all


@pytest.mark.parametrize("kwargs, message", [
    ({"decay_start": 1.5}, "decay_start"),
    ({"r1_every": 0}, "r1_every"),
    ({"loss": "hinge", "label_smoothing": 0.1}, "label_smoothing"),
    ({"loss": "wgan"}, "expected one of"),
    ({"n_critic": 0}, "n_critic"),
])
def test_bad_options_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GAN(LinearG(), LinearD(), **kwargs)


def test_conditional_mismatch_is_refused():
    d = LinearD()
    d.num_classes = 10
    with pytest.raises(ValueError, match="num_classes=0 but discriminator has 10"):
        GAN(LinearG(), d)

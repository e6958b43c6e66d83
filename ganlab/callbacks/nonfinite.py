"""Stop (or skip the step) when a training loss becomes NaN/Inf, and never checkpoint a poisoned state.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from ganlab.errors import GanlabError

POLICIES = ("stop", "skip")


class NonFiniteLossGuard(pl.Callback):
    def __init__(self, policy: str = "stop", check_every_n_steps: int = 25, max_skips: int = 10) -> None:
        if policy not in POLICIES:
            raise GanlabError(f"nan_policy={policy!r}: expected one of {', '.join(POLICIES)}")
        if check_every_n_steps < 1 or max_skips < 0:
            raise GanlabError(f"NonFiniteLossGuard: need check_every_n_steps >= 1 and max_skips >= 0, got "
                              f"{check_every_n_steps}, {max_skips}")
        self.policy, self.check_every_n_steps, self.max_skips = policy, check_every_n_steps, max_skips
        # Per loss key seen so far: the first global step where it was non-finite (-1: never), and that value.
        self._keys: list[str] = []
        self._first_bad: Tensor | None = None
        self._first_bad_value: Tensor | None = None
        self._finite: Tensor | None = None
        self.skipped = 0
        self._skips_in_a_row = 0
        self._saved_step: int | None = None  # the step of the last checkpoint this run wrote (None: none yet)

    # --- policy: stop ------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.policy == "skip":
            pl_module.log("train/skipped_steps", float(self.skipped))
            return
        step = trainer.global_step
        # The model's newest per-step values (ganlab.models.step_logging), else what Lightning has logged.
        logs = getattr(pl_module, "last_train_logs", None) or trainer.callback_metrics
        keys = sorted(k for k in logs if k.startswith("train/") and "loss" in k and not k.endswith(("_step", "_epoch"))
                      and isinstance(logs[k], Tensor))
        if not keys:
            return
        # One stacked check for all loss terms: a handful of small kernels per batch, no host sync.
        new = [k for k in keys if k not in self._keys]  # e.g. loss_g first appears on the first G step
        if new:
            device = logs[keys[0]].device
            self._keys += new
            grow = torch.full((len(new),), -1, dtype=torch.long, device=device)
            zeros = torch.zeros(len(new), device=device)
            self._first_bad = grow if self._first_bad is None else torch.cat([self._first_bad, grow])
            self._first_bad_value = (zeros if self._first_bad_value is None
                                     else torch.cat([self._first_bad_value, zeros]))
            self._finite = torch.zeros((), device=device)
        # Keys absent this step (G skipped under n_critic) count as finite.
        values = torch.stack([logs[k].detach().float().reshape(-1)[0] if k in logs else self._finite
                              for k in self._keys])
        newly_bad = ~torch.isfinite(values) & (self._first_bad < 0)
        self._first_bad = torch.where(newly_bad, step, self._first_bad)
        self._first_bad_value = torch.where(newly_bad, values, self._first_bad_value)
        if (batch_idx + 1) % self.check_every_n_steps == 0:
            self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: pl.Trainer) -> None:
        if self._first_bad is None:
            return
        steps = self._first_bad.tolist()  # the one host sync
        bad = {k: s for k, s in zip(self._keys, steps) if s >= 0}
        if bad:
            key = min(bad, key=lambda k: (bad[k], k))
            value = float(self._first_bad_value[self._keys.index(key)])
            if self._saved_step is not None:
                kept = f"stopped, and the last checkpoint written before it (step {self._saved_step}) was kept"
            elif getattr(trainer, "ckpt_path", None):
                kept = (f"stopped; no checkpoint was written yet in this run (the one it resumed from, "
                        f"{trainer.ckpt_path}, is untouched)")
            else:
                kept = "stopped; no checkpoint was written yet"
            raise GanlabError(f"{key} became {value} at step {bad[key]}; {kept} (lower the learning rates, check "
                              "the data for NaN, or set nan_policy=skip)")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._raise_if_bad(trainer)  # runs before the file is written: a poisoned state is never saved
        self._saved_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raise_if_bad(trainer)

    # --- policy: skip ------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.policy != "skip":
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self._skips_in_a_row = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        self._skips_in_a_row += 1
        if self._skips_in_a_row > self.max_skips:
            raise GanlabError(f"non-finite gradients in {self._skips_in_a_row} optimizer steps in a row up to "
                              f"step {trainer.global_step} ({_owner(pl_module, optimizer)}); stopped (nan_policy=skip, "
                              f"max_skips={self.max_skips})")

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _owner(pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> str:
    """The top-level submodule(s) whose parameters the optimizer updates, e.g. `discriminator`."""
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = [name for name, child in pl_module.named_children() if any(id(p) in ids for p in child.parameters())]
    return ", ".join(names) or "parameters"

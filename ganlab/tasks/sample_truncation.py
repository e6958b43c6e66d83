"""The truncation trick for `ganlab sample truncation=0.7` (Brock et al. 2019, BigGAN, section 3.1).

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ganlab.errors import GanlabError
from ganlab.plots import plt, save_figure, save_grid_png

STRIP_FILE = "truncation.png"


def check_thresholds(truncation: Any, strip: Any) -> list[float]:
    """The strip's thresholds (the strip's list plus `truncation`), ascending; a bad value is one message."""
    values = [] if strip is None else list(strip) if not isinstance(strip, (int, float, str)) else [strip]
    values = values + [truncation]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise GanlabError(f"truncation_strip={list(strip) if strip is not None else None}: expected positive "
                              f"numbers (latent thresholds, e.g. [0.5,1.0,2.0]); got {v!r}")
    return sorted({float(v) for v in values})


def truncate(z: Tensor, threshold: float, model: Any, generator: torch.Generator | None) -> Tensor:
    """`z` with every entry beyond ±threshold redrawn from `model.sample_z` (same generator) until none is.

    Each round redraws only the offending entries; with P(|z| <= t) = p per draw it ends after about
    log(numel) / -log(1 - p) rounds (t = 0.7: p = 0.52, 14 rounds for a million entries)."""
    z = z.clone()
    per_row = max(1, z[0].numel()) if len(z) else 1
    while True:
        out = z.abs() > threshold
        count = int(out.sum())
        if count == 0:
            return z
        fresh = model.sample_z(math.ceil(count / per_row), generator=generator).reshape(-1)[:count]
        z[out] = fresh.to(z.dtype)


def latents(model: Any, n: int, generator: torch.Generator, truncation: float | None) -> Tensor:
    """`n` latents from the model, truncated to ±truncation when given."""
    z = model.sample_z(n, generator=generator)
    return z if truncation is None else truncate(z, truncation, model, generator)


def write_strip(model: Any, labels: Tensor | None, thresholds: list[float], columns: int, seed: int,
                device: torch.device, out_dir: Path) -> str | None:
    """Write `truncation.png` (see the module docstring); None when the output kind has no picture."""
    shape = tuple(model.sample_shape)
    if len(shape) != 3 and shape not in ((1,), (2,)):
        return None
    rows: list[float | None] = [*thresholds, None]
    base = model.sample_z(columns, generator=torch.Generator(device=device).manual_seed(seed))
    y = None if labels is None else labels[torch.arange(columns) % len(labels)].to(base.device)
    samples = []
    for t in rows:  # a fresh generator per row: rows differ only by their threshold
        rng = torch.Generator(device=device).manual_seed(seed + 1)
        samples.append(model.generate(base if t is None else truncate(base, t, model, rng), y).cpu())
    if len(shape) == 3:
        save_grid_png(torch.cat(samples), out_dir / STRIP_FILE, nrow=columns)
        return STRIP_FILE
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 2.6), dpi=100, squeeze=False, sharex=True,
                             sharey=shape == (2,))
    for ax, t, x in zip(axes[0], rows, samples):
        if shape == (1,):
            ax.hist(x.flatten().float().numpy(), bins=40, color="tab:orange")
        else:
            ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=3, alpha=0.5, color="tab:orange")
            ax.set_aspect("equal")
        ax.set_title(f"truncation {t:g}" if t is not None else "no truncation", fontsize="small")
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, out_dir / STRIP_FILE)
    return STRIP_FILE

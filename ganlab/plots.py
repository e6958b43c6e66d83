"""Pictures of samples: image grids (torchvision), 1-D density and 2-D scatter plots (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.io import write_png  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 [0, 255] (the I/O edge)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def image_grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> a uint8 (3|1, H', W') grid, `nrow` images per row (default: square)."""
    nrow = nrow or max(1, math.isqrt(images.shape[0] - 1) + 1)
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    if images.shape[1] == 1:
        grid = grid[:1]
    return (grid * 255).round().to(torch.uint8)


def save_grid_png(images: Tensor, path: Path, nrow: int | None = None) -> None:
    write_png(image_grid(images, nrow), str(path))


def density_figure(generated: Tensor, target: Tensor | None = None, title: str = "") -> plt.Figure:
    """Histogram of generated 1-D samples over the target's, on shared bins."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    g = generated.detach().flatten().float().cpu()
    values = g if target is None else torch.cat([g, target.detach().flatten().float().cpu()])
    lo, hi = values.min().item(), values.max().item()
    bins = torch.linspace(lo, hi + 1e-6, 61).tolist()
    if target is not None:
        ax.hist(target.detach().flatten().float().cpu().numpy(), bins=bins, density=True, alpha=0.5,
                color="tab:blue", label="target")
    ax.hist(g.numpy(), bins=bins, density=True, alpha=0.5, color="tab:orange", label="generated")
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def scatter_figure(generated: Tensor, centers: Tensor | None = None, title: str = "") -> plt.Figure:
    """(N, 2) generated points over the target's mode centres: dropped modes show as bare crosses."""
    fig, ax = plt.subplots(figsize=(5, 5.4), dpi=100)
    g = generated.detach().float().cpu().reshape(-1, 2).numpy()
    ax.scatter(g[:, 0], g[:, 1], s=3, alpha=0.4, color="tab:orange", linewidths=0, label="generated")
    if centers is not None:
        c = centers.detach().float().cpu().numpy()
        ax.scatter(c[:, 0], c[:, 1], s=40, marker="x", color="tab:blue", label="mode centres")
        # Below the axes, so it never hides a mode.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False, markerscale=2)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path)
    plt.close(fig)


def interpolation_figure(values: Tensor) -> plt.Figure:
    """(rows, steps) generated 1-D values along latent paths: G(z(t)) against t, one line per path."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    t = torch.linspace(0, 1, values.shape[1]).numpy()
    for row in values.detach().float().cpu():
        ax.plot(t, row.numpy(), marker=".")
    ax.set_xlabel("t (spherical interpolation z0 -> z1)")
    ax.set_ylabel("G(z(t))")
    fig.tight_layout()
    return fig

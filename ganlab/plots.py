"""Pictures of samples: image grids (torchvision), 1-D density and 2-D scatter plots, MR/CT translation panels
(matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.io import encode_png  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from ganlab.files import atomic_path, write_bytes_atomic  # noqa: E402


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
    """The grid as a PNG, written through a temp file (never half a picture)."""
    write_bytes_atomic(path, encode_png(image_grid(images, nrow)).numpy().tobytes())


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


def snapshot_strip_figure(snapshots: list[tuple[int, Tensor]], centers: Tensor | None = None,
                          max_panels: int = 8) -> plt.Figure:
    """G's 2-D samples at several training steps side by side, on shared axes, so collapse (and recovery)
    reads left to right. At most `max_panels` snapshots, evenly spaced, always the first and the last."""
    if len(snapshots) > max_panels:
        keep = np.unique(np.linspace(0, len(snapshots) - 1, max_panels).round().astype(int))
        snapshots = [snapshots[i] for i in keep]
    points = [p.detach().float().cpu().reshape(-1, 2).numpy() for _, p in snapshots]
    c = None if centers is None else centers.detach().float().cpu().numpy()
    reference = np.concatenate(points + ([] if c is None else [c]))
    lo, hi = np.percentile(reference, 0.5, axis=0), np.percentile(reference, 99.5, axis=0)
    if c is not None:  # the target's extent always fits, whatever G does
        lo, hi = np.minimum(lo, c.min(axis=0)), np.maximum(hi, c.max(axis=0))
    pad = 0.1 * (hi - lo).max() + 1e-3
    fig, axes = plt.subplots(1, len(snapshots), figsize=(2.2 * len(snapshots), 2.5), dpi=100, squeeze=False)
    for ax, (step, _), g in zip(axes[0], snapshots, points):
        ax.scatter(g[:, 0], g[:, 1], s=2, alpha=0.4, color="tab:orange", linewidths=0)
        if c is not None:
            ax.scatter(c[:, 0], c[:, 1], s=12, marker="x", color="tab:blue", linewidths=0.8)
        ax.set_xlim(lo[0] - pad, hi[0] + pad)
        ax.set_ylim(lo[1] - pad, hi[1] + pad)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"step {step}", fontsize="small")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Save (through a temp file; the target's extension picks the format) and close the figure."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or None)
    finally:
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


def _panel_slices(extent: np.ndarray, axis: int, n: int) -> list[int]:
    """`n` evenly spaced slice indices along `axis` inside the body (the mask, else where CT > -500 HU)."""
    other = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(extent.any(axis=other))
    lo, hi = (occupied[0], occupied[-1]) if occupied.size else (0, extent.shape[axis] - 1)
    picks = np.linspace(lo, hi, n + 2)[1:-1].round().astype(int)
    return sorted(set(picks.tolist()))


def translation_panel_figure(mr: np.ndarray, sct: np.ndarray, ct: np.ndarray, axis: int = 2, n_slices: int = 4,
                             mask: np.ndarray | None = None, window: tuple[float, float] = (-1000.0, 1500.0),
                             error_max: float = 500.0, title: str = "",
                             zooms: tuple[float, float, float] | None = None) -> plt.Figure:
    """MR | synthetic CT | real CT | |sCT - CT| for a few slices of one volume, one row per slice.

    `mr` is the normalised MR in [-1, 1]; `sct` and `ct` are in HU, shown in one fixed `window` so that
    panels of different patients and runs compare; the error map has its own colour bar in HU. `zooms`
    (voxel sizes in mm) keep anisotropic slices in their true proportions.
    """
    extent = mask if mask is not None else ct > -500
    rows = _panel_slices(np.asarray(extent, dtype=bool), axis, n_slices)
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), dpi=100, squeeze=False)
    error = np.abs(sct - ct)
    d0, d1 = (a for a in range(3) if a != axis)
    aspect = 1.0 if zooms is None else float(zooms[d1]) / float(zooms[d0])  # rot90: rows run along d1

    def cut(volume: np.ndarray, index: int) -> np.ndarray:
        return np.rot90(np.take(volume, index, axis=axis))  # rows = second in-plane axis, flipped: radiological-ish

    for r, index in enumerate(rows):
        shown = [(cut(mr, index), "gray", (-1, 1)), (cut(sct, index), "gray", window),
                 (cut(ct, index), "gray", window), (cut(error, index), "inferno", (0, error_max))]
        for c, (image, cmap, (vmin, vmax)) in enumerate(shown):
            handle = axes[r, c].imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                                       aspect=aspect)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(f"slice {index}")
        fig.colorbar(handle, ax=axes[r, 3], fraction=0.046, pad=0.04, label="|error| HU")
    for c, name in enumerate(["MR (normalised)", f"synthetic CT [{window[0]:g}, {window[1]:g}] HU",
                              "real CT", "|sCT - CT|"]):
        axes[0, c].set_title(name, fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

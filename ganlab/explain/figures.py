"""Pictures of attribution maps (headless): the lecture's panel, one figure per method, the cascade's maps and curves.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.colors import Normalize, TwoSlopeNorm  # noqa: E402
from torch import Tensor  # noqa: E402

from ganlab.explain.evaluation import normalize_map  # noqa: E402

if TYPE_CHECKING:
    from ganlab.explain.cascade import CascadeResult

TITLES = {"guided_backprop": "Guided Backprop", "gradcam": "Grad-CAM", "guided_gradcam": "Guided Grad-CAM",
          "occlusion": "Occlusion", "cam": "CAM", "deconvnet": "Deconvnet",
          "integrated_gradients": "Integrated Gradients"}
# Methods whose maps say *where* (one coarse value per location) are drawn over the image; the others are
# input-space gradients, shown as images. Value: whether the map is signed.
OVERLAID = {"gradcam": False, "cam": True, "occlusion": True}
DPI = 100
CELL = 1.6     # inches per image cell
HEADER = 0.4   # inches above the first row for the column titles
LABEL = 1.4    # inches left of the first column for the row labels
ALPHA = 0.5    # heat-map opacity over the image
SIGNED_ALPHA = 0.8  # opacity of a signed map's largest values


def figure_size(rows: int, cols: int) -> tuple[float, float]:
    """Panel size in inches, fixed by the grid (no tight bbox), so a PNG's pixel size tells its row count."""
    return LABEL + cols * CELL, HEADER + rows * CELL


def title_of(method: str) -> str:
    return TITLES.get(method, method.replace("_", " "))


def image_array(image: Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) grey or (H, W, 3) colour in [0, 1] for imshow."""
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    return x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def _as_image_size(m: Tensor, size: tuple[int, int]) -> Tensor:
    """A map at the image's resolution (coarse CAM maps are upsampled bilinearly, as in the papers)."""
    m = m.detach().float().cpu()
    if tuple(m.shape[-2:]) != size:
        m = F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
    return m


def _scale(values: np.ndarray) -> float:
    """A robust colour-scale limit: the 99.5th percentile of |values| (one hot pixel must not wash out the rest)."""
    top = float(np.percentile(np.abs(values), 99.5)) if values.size else 0.0
    return top if top > 0 else float(np.abs(values).max()) or 1.0


def draw_original(ax: plt.Axes, image: Tensor) -> None:
    img = image_array(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")


def draw_overlay(ax: plt.Axes, image: Tensor, m: Tensor, signed: bool) -> matplotlib.image.AxesImage:
    """The image (grey stays grey) under the channel-summed map. Non-negative maps (Grad-CAM): `jet` from 0
    at half opacity, as in the paper. Signed maps (CAM, occlusion): red for evidence for the target, blue
    against, opacity growing with |value|, so the image shows through where the map is near 0."""
    draw_original(ax, image)
    heat = _as_image_size(m, tuple(image.shape[-2:])).sum(0).numpy()
    top = _scale(heat)
    if not signed:
        return ax.imshow(heat, cmap="jet", norm=Normalize(0.0, top), alpha=ALPHA)
    rgba = plt.get_cmap("RdBu_r")(TwoSlopeNorm(0.0, -top, top)(np.clip(heat, -top, top)))
    rgba[..., 3] = SIGNED_ALPHA * np.clip(np.abs(heat) / top, 0, 1)
    return ax.imshow(rgba)


def draw_gradient(ax: plt.Axes, m: Tensor) -> matplotlib.image.AxesImage:
    """A signed input-space map as an image: 0 is mid-grey (grey images) or mid-grey per channel (RGB)."""
    g = m.detach().float().cpu().numpy()
    top = _scale(g)
    if g.shape[0] == 1:
        return ax.imshow(g[0], cmap="gray", vmin=-top, vmax=top, interpolation="nearest")
    rgb = np.clip(0.5 + 0.5 * np.moveaxis(g[:3], 0, -1) / top, 0, 1)
    return ax.imshow(rgb, interpolation="nearest")


def draw_map(ax: plt.Axes, method: str, image: Tensor, m: Tensor) -> matplotlib.image.AxesImage:
    return draw_overlay(ax, image, m, OVERLAID[method]) if method in OVERLAID else draw_gradient(ax, m)


def _grid(rows: int, cols: int, margin: float = 0.05) -> tuple[plt.Figure, np.ndarray]:
    """rows x cols image cells without ticks; `margin` inches free on the right (for colour-bar labels)."""
    width, height = figure_size(rows, cols)
    width += margin
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), dpi=DPI, squeeze=False)
    fig.subplots_adjust(left=LABEL / width, right=1 - margin / width, top=1 - HEADER / height, bottom=0.05 / height,
                        wspace=0.06, hspace=0.06)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def panel_figure(images: Tensor, maps: Mapping[str, Tensor], row_labels: Sequence[str]) -> plt.Figure:
    """images (N, C, H, W) in [-1, 1]; maps: method -> (N, C|1, h, w), in column order; one label per row."""
    methods = list(maps)
    fig, axes = _grid(len(images), 1 + len(methods), margin=0.0)
    for r, image in enumerate(images):
        draw_original(axes[r, 0], image)
        axes[r, 0].set_ylabel(row_labels[r], fontsize="small", rotation=0, ha="right", va="center")
        for c, method in enumerate(methods, start=1):
            draw_map(axes[r, c], method, image, maps[method][r])
    for c, title in enumerate(["Original", *map(title_of, methods)]):
        axes[0, c].set_title(title, fontsize="medium")
    return fig


def method_figure(method: str, images: Tensor, m: Tensor, row_labels: Sequence[str]) -> plt.Figure:
    """One method: image | map | raw map with its colour bar, so values can be read off, one row per image."""
    fig, axes = _grid(len(images), 3, margin=0.8)
    for r, image in enumerate(images):
        draw_original(axes[r, 0], image)
        axes[r, 0].set_ylabel(row_labels[r], fontsize="small", rotation=0, ha="right", va="center")
        draw_map(axes[r, 1], method, image, m[r])
        raw = _as_image_size(m[r], tuple(image.shape[-2:])).sum(0).numpy()
        top = float(np.abs(raw).max()) or 1.0
        shown = axes[r, 2].imshow(raw, cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
        fig.colorbar(shown, ax=axes[r, 2], fraction=0.046, pad=0.04)
    for c, title in enumerate(["Original", title_of(method), "raw (sum over channels)"]):
        axes[0, c].set_title(title, fontsize="small")
    return fig


def cascade_figure(images: Tensor, cascades: Mapping[str, CascadeResult], index: int = 0) -> plt.Figure:
    """Adebayo et al. (2018) fig. 2: one row per method, the image, then |map| of image ``index`` (scaled by
    ``normalize_map``, as the SSIM and HOG similarities see it) for the trained model and after each
    cumulative randomisation step, top layer first."""
    methods = list(cascades)
    layers = cascades[methods[0]].layers
    fig, axes = _grid(len(methods), 1 + len(layers), margin=0.0)
    for r, method in enumerate(methods):
        draw_original(axes[r, 0], images[index])
        axes[r, 0].set_ylabel(title_of(method), fontsize="small", rotation=0, ha="right", va="center")
        for c, step in enumerate(cascades[method].maps, start=1):
            shown = normalize_map(step[index:index + 1])[0, 0].numpy()
            axes[r, c].imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for c, title in enumerate(["Original", *layers]):
        axes[0, c].set_title(title, fontsize="x-small" if c > 1 else "small")
    return fig


def cascade_curves_figure(cascades: Mapping[str, CascadeResult]) -> plt.Figure:
    """Adebayo et al. (2018) fig. 4: each similarity to the trained model's maps against the randomised
    layers (cumulative, top first), mean over images +- standard error, one line per method."""
    methods = list(cascades)
    layers = cascades[methods[0]].layers
    titles = {"spearman": "Spearman rank correlation (|map|)", "ssim": "SSIM", "hog": "HOG correlation"}
    fig, axes = plt.subplots(1, len(titles), figsize=(len(titles) * (1.5 + 0.4 * len(layers)), 4.2), dpi=DPI,
                             sharey=True, squeeze=False)
    x = np.arange(len(layers))
    for ax, (measure, title) in zip(axes[0], titles.items()):
        for method in methods:
            mean = np.array(cascades[method].mean(measure))
            error = np.array(cascades[method].standard_error(measure))
            line, = ax.plot(x, mean, marker="o", markersize=3, label=title_of(method))
            ax.fill_between(x, mean - error, mean + error, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(title, fontsize="medium")
        ax.set_xticks(x, layers, rotation=90, fontsize="x-small")
        ax.set_xlabel("randomised down to (cumulative)", fontsize="small")
    axes[0, 0].set_ylabel("similarity to the trained model's maps")
    axes[0, 0].set_ylim(top=1.05)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize="small", loc="center right")
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    return fig


def save_figure(fig: plt.Figure, path: str) -> None:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


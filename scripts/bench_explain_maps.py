"""Checkerboard share and stroke mass of the maps in `ganlab explain` output dirs (their maps.pt).

    python scripts/bench_explain_maps.py <run>/explain/<timestamp> [more dirs ...] [--dilation 1]

One markdown row per method: the checkerboard ratio (the maps' share of variance at the 2-pixel period over
the inputs' own share; lower is better, an edge map of the inputs is the reference row), the share of
positive mass on the inputs' dilated strokes (pixels above mid-grey; meaningful for MNIST-like images) and,
with `--box 32` (PCam), the share of positive mass in the centre box that decides the label.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from ganlab.explain.artifacts import checkerboard_ratio, mass_in_mask, stroke_mask
from ganlab.explain.evaluation import centre_box, mass_in_box


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """Forward-difference gradient magnitude of the channel-summed images: the reference for a map that
    shows edges (on MNIST digits it scores 7-8; a smoother Sobel edge map scores ~1)."""
    gray = images.sum(dim=1, keepdim=True)
    dx = F.pad(gray[..., :, 1:] - gray[..., :, :-1], (0, 1))
    dy = F.pad(gray[..., 1:, :] - gray[..., :-1, :], (0, 0, 0, 1))
    return (dx.square() + dy.square()).sqrt()


def rows(explain_dir: Path, dilation: int, box: int | None) -> list[str]:
    saved = torch.load(explain_dir / "maps.pt", map_location="cpu", weights_only=True)
    inputs, maps = saved["inputs"].float(), saved["maps"]
    mask = stroke_mask(inputs, dilation=dilation)
    where = centre_box(tuple(inputs.shape[-2:]), box) if box else None
    lines = []
    for name, m in {**maps, "(edge map of the inputs)": edge_map(inputs)}.items():
        cells = [f"{checkerboard_ratio(m, inputs):.1f}", f"{torch.nanmean(mass_in_mask(m, mask)):.3f}"]
        if where:
            cells.append(f"{torch.nanmean(mass_in_box(m, where)):.3f}")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    header = "| method | checkerboard ratio | positive mass on strokes |" + (f" mass in centre {box}x{box} |" if box else "")
    area = mask.float().mean()
    return [f"{explain_dir} ({inputs.shape[0]} images; dilated strokes cover {area:.1%} of the image)",
            "", header, "|---" * (3 + bool(box)) + "|", *lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--dilation", type=int, default=1, help="pixels the stroke mask is grown by")
    parser.add_argument("--box", type=int, default=None, help="also the mass in the centre box of this size")
    args = parser.parse_args()
    for d in args.dirs:
        print("\n".join(rows(d, args.dilation, args.box)))


if __name__ == "__main__":
    main()

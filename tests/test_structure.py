"""MIND structure descriptors: blind to contrast (even inverted), sensitive to moved anatomy."""

import math

import pytest
import torch

from ganlab.structure import mind, mind_loss


def _head_slice(shift: int = 0) -> torch.Tensor:
    """(1, 1, 32, 32): a bright ring (a skull) on a dark background, with a little noise."""
    torch.manual_seed(0)
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0 + shift)[shift:], indexing="ij")
    r = ((x - 16) ** 2 + (y - 16) ** 2).sqrt()
    ring = ((r > 9) & (r < 12)).float()
    return (ring + 0.01 * torch.randn(32, 32))[None, None]


def test_mind_is_contrast_blind_and_sees_moved_structure():
    mr = _head_slice()
    ct = 1.0 - 3.0 * mr  # the same anatomy with inverted, rescaled intensities (bone dark in MR, bright in CT)
    assert mind(mr).shape == (1, 4, 32, 32) and 0 < mind(mr).min() and mind(mr).max() <= 1
    assert mind_loss(mr, ct).item() < 1e-5
    moved = mind_loss(mr, _head_slice(shift=2)).item()
    assert moved > 0.05  # the ring moved by two pixels


def test_mind_of_a_step_edge_matches_the_hand_computed_value():
    # A vertical step 0 | 1 between columns 3 and 4, patch 1 (no averaging), distance 1, replicate padding.
    # At column 3 the right neighbour differs by 1, the other three by 0: D = (1, 0, 0, 0) over shifts
    # (right, down, left, up); V = 1/4; MIND = (exp(-4), 1, 1, 1).
    x = torch.zeros(1, 1, 6, 8)
    x[..., 4:] = 1.0
    descriptor = mind(x, patch=1)[0, :, 2, 3]
    assert descriptor.tolist() == pytest.approx([math.exp(-4), 1.0, 1.0, 1.0], rel=1e-5)

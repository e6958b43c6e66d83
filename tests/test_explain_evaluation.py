"""ganlab.explain.evaluation: deletion/insertion, the randomisation sanity check, mass in a box, display scaling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganlab.errors import GanlabError
from ganlab.explain import GradCAM, Occlusion
from ganlab.explain.evaluation import (centre_box, deletion_insertion_auc, fails_sanity, mass_in_box, normalize_map,
                                       randomisation_sanity)


class TopLeft(nn.Module):
    """realness logit = 10 * (mean of the top-left 4x4 block - 0.5): depends on that region only."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x[:, :, :4, :4].mean(dim=(1, 2, 3)) - 0.5)


def test_deletion_and_insertion_rank_a_good_map_above_a_random_one() -> None:
    x = torch.rand(3, 2, 12, 12, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    good = torch.zeros(3, 1, 12, 12)
    good[..., :4, :4] = 1
    random = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    model = TopLeft()
    good_auc = deletion_insertion_auc(model, x, good, steps=36)
    random_auc = deletion_insertion_auc(model, x, random, steps=36)
    assert (good_auc["deletion"] < random_auc["deletion"] - 0.2).all()
    assert (good_auc["insertion"] > random_auc["insertion"] + 0.2).all()
    for auc in (*good_auc.values(), *random_auc.values()):
        assert auc.shape == (3,) and ((auc >= 0) & (auc <= 1)).all()


def test_auc_of_a_model_that_ignores_the_image_is_its_probability() -> None:
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(torch.tensor([[1.0, 3.0]])).expand(x.shape[0], 2)  # softmax = [1/4, 3/4]

    x, maps = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    auc = deletion_insertion_auc(Constant(), x, maps, target=torch.tensor([0, 1]), steps=5)
    torch.testing.assert_close(auc["deletion"], torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(auc["insertion"], torch.tensor([0.25, 0.75], dtype=torch.float64))


class Edges:
    """A 'method' that ignores the model: Sobel edge magnitude of the image."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
        gray = inputs.mean(dim=1, keepdim=True)
        return torch.hypot(F.conv2d(gray, kx, padding=1), F.conv2d(gray, kx.transpose(2, 3), padding=1))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2)).eval()


def test_sanity_check_flags_a_method_that_ignores_the_model() -> None:
    x = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    model = cnn()
    edges = randomisation_sanity(Edges, model, x, 1)
    torch.testing.assert_close(edges, torch.ones(3), check_dtype=False)
    assert fails_sanity(edges).all()
    gradcam = randomisation_sanity(GradCAM, model, x, 1)
    occlusion = randomisation_sanity(lambda m: Occlusion(m, window=3, stride=1), model, x, 1)
    assert not fails_sanity(gradcam).any() and not fails_sanity(occlusion).any()
    assert model[0].weight.abs().sum() > 0 and torch.equal(cnn()[0].weight, model[0].weight)  # model untouched


def test_mass_in_box() -> None:
    maps = torch.full((2, 2, 6, 6), -1.0)
    maps[0, 0, 2:4, 2:4] = 0.5  # 4 pixels x (0.5 - 1 + ... ) -> use channel sums below
    maps[0, 1, 2:4, 2:4] = 1.5  # channel sum inside: 2 per pixel, 8 in all
    maps[0, :, 0, 0] = 3.0      # channel sum 6 outside
    assert centre_box((6, 6), 2) == (2, 2, 2, 2)
    mass = mass_in_box(maps, centre_box((6, 6), 2))
    torch.testing.assert_close(mass[0], torch.tensor(8 / 14))
    assert torch.isnan(mass[1])  # no positive mass at all
    with pytest.raises(GanlabError, match="not inside"):
        mass_in_box(maps, (4, 4, 3, 3))
    assert centre_box((96, 96)) == (32, 32, 32, 32)  # PCam's labelled centre


def test_normalize_map_keeps_the_hottest_region_hottest() -> None:
    torch.manual_seed(0)
    maps = torch.randn(3, 1, 10, 10)
    maps[1] = maps[1] + 100  # all large: a min-max scaling would change nothing, this must not flatten it
    maps[2] = -maps[2].abs()  # no positive evidence
    out = normalize_map(maps)
    assert out.shape == maps.shape and out.min() >= 0 and out.max() <= 1
    for i in (0, 1):
        hot = maps[i] > maps[i].quantile(0.5)
        assert out[i][hot].min() >= out[i][~hot].max()  # monotone
        assert out[i].flatten().topk(1).indices == maps[i].flatten().topk(1).indices
    assert (out[0][maps[0] <= 0] == 0).all() and (out[0] == 1).sum() >= 1
    assert torch.equal(out[2], torch.zeros_like(out[2]))



def test_sanity_similarity_is_nan_for_a_constant_map(monkeypatch):
    """A randomised model whose map is all zeros has no ranking to compare: NaN, never a passing 0."""
    import torch
    from torch import nn

    import ganlab.explain.evaluation as evaluation

    real_randomise = evaluation.randomise_parameters

    def randomise_and_mark(model, seed=0):
        copy = real_randomise(model, seed)
        copy.randomised = True
        return copy

    class ZeroOnRandomised:  # the input itself for the trained model, all zeros for the randomised one
        def __init__(self, model: nn.Module) -> None:
            self.model = model

        def attribute(self, inputs, target=None):
            return torch.zeros_like(inputs) if getattr(self.model, "randomised", False) else inputs.clone()

    monkeypatch.setattr(evaluation, "randomise_parameters", randomise_and_mark)
    similarity = evaluation.randomisation_sanity(ZeroOnRandomised, nn.Conv2d(1, 1, 3), torch.rand(2, 1, 8, 8), None)
    assert similarity.shape == (2,) and torch.isnan(similarity).all()

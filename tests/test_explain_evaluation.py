"""ganlab.explain.evaluation and .cascade: deletion/insertion, ROAD, the randomisation sanity check and its
per-layer cascade, mass in a box, display scaling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganlab.errors import GanlabError
from ganlab.explain import GradCAM, Occlusion
from ganlab.explain.cascade import (MEASURES, TRAINED, cascading_randomisation, hog_correlation, parameterised_layers,
                                    randomisation_steps)
from ganlab.explain.evaluation import (centre_box, deletion_insertion_auc, fails_sanity, mass_in_box,
                                       noisy_linear_imputation, normalize_map, randomisation_sanity,
                                       randomise_parameters, road_auc)
from ganlab.nets.classifier import CNNClassifier


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


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.tensor([[1.0, 3.0]])).expand(x.shape[0], 2)  # softmax = [1/4, 3/4]


def test_auc_of_a_model_that_ignores_the_image_is_its_probability() -> None:
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


def ramp(n: int = 2, c: int = 3, h: int = 12, w: int = 14) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    scale = torch.tensor([1.0, -1.0, 2.0])[:c, None, None]  # a different ramp per channel
    return (0.1 * rows - 0.05 * cols + 0.2)[None, None].repeat(n, c, 1, 1) * scale


def test_noisy_linear_imputation_reproduces_a_ramp() -> None:
    """Each removed pixel is the (1/6 direct, 1/12 diagonal) mean of its neighbours: symmetric weights, so an
    image linear in (row, column) is its own solution, whatever the hole's shape (away from the border)."""
    x = ramp()
    removed = torch.zeros(2, 1, 12, 14, dtype=torch.bool)
    removed[0, :, 2:10, 3:11] = True          # one big hole
    removed[1, :, 1:11:2, 1:13:3] = True      # scattered pixels
    exact = noisy_linear_imputation(x, removed, noise=0.0, tol=1e-6)
    torch.testing.assert_close(exact, x, atol=1e-4, rtol=0)
    noisy = noisy_linear_imputation(x, removed, noise=0.01, seed=3)
    keep = ~removed.expand_as(x)
    assert torch.equal(noisy[keep], x[keep])  # known pixels are never touched
    deviation = (noisy - x)[~keep]
    assert 0.007 < float(deviation.std()) < 0.013 and float(deviation.abs().max()) < 0.06
    assert torch.equal(noisy, noisy_linear_imputation(x, removed, noise=0.01, seed=3))  # seeded
    # A hole reaching the border is a weighted mean with fewer neighbours there: bounded by the known values.
    removed[:] = False
    removed[:, :, :5, :5] = True
    corner = noisy_linear_imputation(x[:, :1], removed, noise=0.0)
    assert x[:, :1].min() <= corner.min() and corner.max() <= x[:, :1].max()


def test_road_of_a_model_that_ignores_the_image_is_its_probability() -> None:
    x, maps = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    for order in ("morf", "lerf"):
        road = road_auc(Constant(), x, maps, target=torch.tensor([0, 1]), order=order)
        torch.testing.assert_close(road, torch.tensor([0.25, 0.75], dtype=torch.float64))
    with pytest.raises(GanlabError, match="order must be morf"):
        road_auc(Constant(), x, maps, target=0, order="random")


def test_road_ranks_a_map_on_the_evidence_above_a_random_one() -> None:
    """TopLeft's logit is linear in the mean of the top-left 4x4 block, bright (1) on a dark (0) image: the
    imputation fills removed block pixels from their neighbours, so removing the block first (the good map)
    darkens it, while a random order mostly fills block pixels from other block pixels."""
    noise = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 0.05
    x = noise.clone()
    x[..., :4, :4] += 1
    good = torch.zeros(3, 1, 12, 12)
    good[..., :4, :4] = 1
    random = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    model = TopLeft()
    assert (road_auc(model, x, good, order="morf") < road_auc(model, x, random, order="morf") - 0.2).all()
    assert (road_auc(model, x, good, order="lerf") > road_auc(model, x, random, order="lerf") + 0.1).all()


def test_randomise_parameters_of_some_modules_only() -> None:
    model = cnn()
    some = randomise_parameters(model, seed=1, modules=["2"])
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(some.named_parameters())[name]) != name.startswith("2."), name
    every = randomise_parameters(model, seed=1, modules=[n for n, m in model.named_modules() if n])
    assert all(torch.equal(a, b) for a, b in zip(every.parameters(), randomise_parameters(model, seed=1).parameters()))
    with pytest.raises(GanlabError, match="no module named 'nope'"):
        randomise_parameters(model, modules=["nope"])


def small_classifier() -> CNNClassifier:
    torch.manual_seed(0)
    return CNNClassifier(in_channels=1, num_classes=3, widths=(4, 8), strides=(2, 1)).eval()


def test_cascade_layers_of_a_small_classifier() -> None:
    """One step per conv/linear module in forward order, each conv with its BatchNorm; randomised top first."""
    net, x = small_classifier(), torch.randn(2, 1, 12, 12)
    assert parameterised_layers(net, x) == ["features.0.0", "features.0.1", "features.1.0", "features.1.1", "head"]
    assert randomisation_steps(net, x) == [("features.0.0", ["features.0.0", "features.0.1"]),
                                           ("features.1.0", ["features.1.0", "features.1.1"]), ("head", ["head"])]
    result = cascading_randomisation(GradCAM, net, x, 1)
    assert result.layers == [TRAINED, "head", "features.1.0", "features.0.0"]
    assert all(len(result.measure(m)) == 4 and all(v.shape == (2,) for v in result.measure(m)) for m in MEASURES)
    assert [m.shape for m in result.maps] == [(2, 1, 12, 12)] * 4


class Identity:
    """A 'method' that ignores the model: the input itself."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        return inputs.clone()


def test_cascade_of_a_method_that_ignores_the_model_stays_at_one() -> None:
    x = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    net = CNNClassifier(in_channels=2, num_classes=3, widths=(4, 8), strides=(2, 1)).eval()
    result = cascading_randomisation(Identity, net, x, 0)
    for measure in MEASURES:
        for values in result.measure(measure):
            torch.testing.assert_close(values.double(), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    assert result.summary()["hog"] == [1.0] * 4 and result.standard_error("ssim")[1] == pytest.approx(0, abs=1e-6)
    assert torch.equal(result.maps[2], x.abs().sum(dim=1, keepdim=True))  # |map| summed over channels


def test_cascade_of_gradcam_starts_at_one_and_falls() -> None:
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    model = cnn()
    before = [p.clone() for p in model.parameters()]
    result = cascading_randomisation(GradCAM, model, x, 1)
    assert result.layers == [TRAINED, "8", "4", "2", "0"]
    for measure in MEASURES:
        torch.testing.assert_close(result.measure(measure)[0].double(), torch.ones(4, dtype=torch.float64),
                                   atol=1e-5, rtol=0)  # trained against itself
        assert result.mean(measure)[-1] < 0.5, measure  # every layer randomised: Grad-CAM passes
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is untouched


def test_cascade_of_a_spectrally_normalised_conditional_discriminator() -> None:
    from ganlab.nets.dcgan import DCGANDiscriminator
    from ganlab.tasks.explain import RealnessScore

    torch.manual_seed(0)
    net = RealnessScore(DCGANDiscriminator((1, 16, 16), base_width=4, num_classes=3, spectral_norm=True)).eval()
    net.label = torch.tensor(2)
    x = torch.randn(2, 1, 16, 16)
    steps = [name for name, _ in randomisation_steps(net, x)]
    assert steps == ["discriminator.body.0", "discriminator.body.2", "discriminator.head",
                     "discriminator.projection.embed"]  # forward order: the projection term comes last
    randomised = randomise_parameters(net, modules=["discriminator.body.0"])
    assert not torch.equal(randomised.discriminator.body[0].parametrizations.weight.original,
                           net.discriminator.body[0].parametrizations.weight.original)
    result = cascading_randomisation(GradCAM, net, x)
    assert result.layers == [TRAINED, *reversed(steps)] and result.mean("spearman")[0] == pytest.approx(1)


def stripes(size: int = 28, period: int = 4) -> torch.Tensor:
    column = (torch.arange(size) // (period // 2) % 2).float()
    return column.expand(size, size)[None, None].clone()  # vertical stripes


def test_hog_correlation_of_an_image_with_itself_and_its_rotation() -> None:
    image = stripes() + 0.1 * torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hog_correlation(image, image), torch.ones(1, dtype=torch.float64))
    assert float(hog_correlation(image, image.rot90(1, dims=(2, 3)))) < 0.2  # vertical edges vs horizontal
    assert torch.isnan(hog_correlation(torch.zeros(1, 1, 28, 28), image)).all()  # no edges: undefined

"""Image-quality metrics of generated images that work offline, in a ganlab classifier's feature space.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from ganlab.errors import GanlabError

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class ClassifierFeatures(nn.Module):
    """A classifier's `embed` as a torchmetrics `feature` module.

    torchmetrics passes a custom feature module the images exactly as given to `update`, by its convention
    uint8 in [0, 255] (normalize=False) or float in [0, 1] (normalize=True); both are mapped here to
    ganlab's [-1, 1], the range the classifier was trained on. Images of another size than the classifier's
    training data are resized to it. The module never leaves eval mode (batch-norm running statistics),
    even when a parent module is put in training mode.
    """

    def __init__(self, net: nn.Module, image_size: int | None = None, source: str = "feature net") -> None:
        super().__init__()
        self.net = net
        self.num_features = int(net.num_features)  # torchmetrics reads this instead of probing with a dummy image
        self.in_channels: int | None = getattr(net, "in_channels", None)
        self.image_size = image_size
        self.source = source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)

    def prepare(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> the classifier's input: channel count checked, resized to its training size."""
        if self.in_channels is not None and images.shape[1] != self.in_channels:
            raise GanlabError(f"{self.source}: the classifier takes {self.in_channels}-channel images, got images "
                              f"of shape {tuple(images.shape)}; use a feature run trained on the same data")
        if self.image_size is not None and tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        return images

    @torch.no_grad()
    def forward(self, imgs: Tensor) -> Tensor:
        images = imgs.float() / 127.5 - 1.0 if imgs.dtype == torch.uint8 else imgs * 2.0 - 1.0
        return self.net.embed(self.prepare(images))

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """Class logits of images in [-1, 1] (ganlab's range, not torchmetrics')."""
        return self.net(self.prepare(images))


def _distances(a: Tensor, b: Tensor) -> Tensor:
    # Exact Euclidean distances (not the |a|^2 - 2ab + |b|^2 matrix-product shortcut, whose rounding can
    # move a point across a ball's boundary).
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features: Tensor, k: int = 3, batch_size: int = 1024) -> Tensor:
    """Distance from each feature vector to its k-th nearest other vector, (N,), in row batches."""
    if not 1 <= k < features.shape[0]:
        raise GanlabError(f"knn_radii: need 1 <= k < number of points, got k={k} for {features.shape[0]} points")
    # The (k+1)-th smallest distance of a row, because its smallest is the point's distance to itself.
    return torch.cat([_distances(rows, features).kthvalue(k + 1, dim=1).values for rows in features.split(batch_size)])


def in_manifold(queries: Tensor, points: Tensor, radii: Tensor, batch_size: int = 1024) -> Tensor:
    """For each query, whether it lies in some ball B(points[j], radii[j]) (boundary included), (M,) bool."""
    return torch.cat([(_distances(rows, points) <= radii).any(dim=1) for rows in queries.split(batch_size)])


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, batch_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of fake vs real feature vectors, (N, D).

    Each set's manifold is the union of balls around its points with radius the distance to the k-th
    nearest neighbour in the same set. Precision: the fraction of fake points inside the real manifold
    (are samples realistic?); recall: the fraction of real points inside the fake manifold (is the real
    variety covered?). Hand-written because torchmetrics does not provide it.
    """
    precision = in_manifold(fake, real, knn_radii(real, k, batch_size), batch_size).double().mean().item()
    recall = in_manifold(real, fake, knn_radii(fake, k, batch_size), batch_size).double().mean().item()
    return precision, recall


def to_unit_range(images: Tensor) -> Tensor:
    """ganlab's [-1, 1] -> torchmetrics' float convention [0, 1] (`normalize=True`)."""
    return (images + 1.0) / 2.0


class ImageQuality(nn.Module):
    """FID, KID, precision/recall and, for labelled fakes, conditional accuracy in one feature space.

    `features` follows torchmetrics' convention (float images in [0, 1]) and has `num_features`, like
    `ClassifierFeatures`; `update` takes ganlab images in [-1, 1]. Real features are kept across `reset`
    (held-out data does not change between evaluations), fakes are dropped. KID subsets are drawn with a
    fixed seed, so one set of images always gives the same numbers; the global RNG is left untouched.
    Metrics never synchronise across processes: each rank must see the whole data (see the callback).
    """

    def __init__(self, features: nn.Module, k: int = 3, kid_subsets: int = 50, kid_subset_size: int = 1000,
                 num_classes: int | None = None, seed: int = 0, batch_size: int = 1024) -> None:
        super().__init__()
        self.features, self.k, self.seed, self.batch_size = features, k, seed, batch_size
        self.kid_subset_size = kid_subset_size
        common = dict(feature=features, normalize=True, reset_real_features=False, sync_on_compute=False)
        self.fid = FrechetInceptionDistance(**common)
        with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point here
            warnings.filterwarnings("ignore", message=".*save all extracted features.*")
            self.kid = KernelInceptionDistance(subsets=kid_subsets, subset_size=kid_subset_size, **common)
        self.cond_acc = (MulticlassAccuracy(num_classes, average="micro", sync_on_compute=False)
                         if num_classes else None)

    def update(self, images: Tensor, real: bool, labels: Tensor | None = None) -> None:
        """Add real or generated images in [-1, 1]; `labels` of generated ones: the classes asked for."""
        unit = to_unit_range(images)
        self.fid.update(unit, real=real)
        self.kid.update(unit, real=real)
        if labels is not None and not real:
            if self.cond_acc is None:
                raise ValueError("ImageQuality: labels given but num_classes was not set")
            self.cond_acc.update(self.features.logits(images), labels.to(images.device))

    def compute(self) -> dict[str, float]:
        real = dim_zero_cat(self.kid.real_features)
        fake = dim_zero_cat(self.kid.fake_features)  # KID keeps every feature vector: reused for precision/recall
        if min(len(real), len(fake)) <= self.k:
            raise GanlabError(f"ImageQuality: need more than k={self.k} real and generated images, "
                              f"got {len(real)} and {len(fake)}")
        self.kid.subset_size = min(self.kid_subset_size, len(real), len(fake))  # KID refuses larger subsets
        with torch.random.fork_rng(devices=[]):  # KID samples subsets with torch.randperm on the CPU RNG
            torch.manual_seed(self.seed)
            kid_mean, _ = self.kid.compute()
        precision, recall = precision_recall(real, fake, self.k, self.batch_size)
        values = {"fid": self.fid.compute().item(), "kid": kid_mean.item(), "precision": precision, "recall": recall}
        if self.cond_acc is not None and self.cond_acc.update_called:
            values["cond_acc"] = self.cond_acc.compute().item()
        return values

    def reset(self) -> None:
        """Forget the generated images (and conditional accuracy); keep the real ones."""
        self.fid.reset()
        self.kid.reset()
        if self.cond_acc is not None:
            self.cond_acc.reset()


def inception_input(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> what `inception_fid` expects: float in [0, 1], 3 channels (grey repeated)."""
    unit = to_unit_range(images).clamp(0.0, 1.0)
    return unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit


def inception_fid(weights_path: str | os.PathLike | None, feature: int = 2048) -> FrechetInceptionDistance:
    """torchmetrics' Inception-v3 FID built from a local weights file; update it with `inception_input(x)`.

    torchmetrics/torch-fidelity download the weights when no path is given; ganlab never does, so a
    missing path stops here, before the network is built. Real features are kept across `reset`.
    """
    if weights_path is None or str(weights_path) == "":
        raise GanlabError(f"inception_weights: not given; Inception FID needs a local copy of {INCEPTION_WEIGHTS_FILE} "
                          "(inception_weights=/path/to/it). ganlab never downloads it; the classifier-feature "
                          "metrics (feature_run=...) need no download")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise GanlabError(f"inception_weights={path}: no such file; expected a local copy of {INCEPTION_WEIGHTS_FILE} "
                          "(ganlab never downloads it)")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise GanlabError(f"inception_weights={path}: Inception FID needs the torch-fidelity package "
                          "(pip install torch-fidelity), which is not installed")
    try:
        return FrechetInceptionDistance(feature=feature, normalize=True, feature_extractor_weights_path=str(path),
                                        reset_real_features=False, sync_on_compute=False)
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        raise GanlabError(f"inception_weights={path}: not usable Inception-v3 FID weights ({err})") from None

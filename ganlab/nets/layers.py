"""Pieces every ganlab generator and discriminator shares: label conditioning, PacGAN packing, minibatch std,
spectral norm, and the Generator/Discriminator interface. How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ganlab.errors import GanlabError

CONDITIONINGS = ("projection", "concat")


def check_labels(owner: str, y: Tensor | None, num_classes: int, batch: int) -> None:
    """Fail with one clear message when labels are missing, extra, mis-shaped or out of range."""
    if num_classes == 0:
        if y is not None:
            raise GanlabError(f"{owner} is unconditional (num_classes=0) but labels y were passed; "
                              f"set num_classes to condition on them")
        return
    if y is None:
        raise GanlabError(f"{owner} is conditional (num_classes={num_classes}): forward needs labels y of shape "
                          f"({batch},)")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise GanlabError(f"{owner}: labels y must be integer class indices (torch.long), got dtype {y.dtype}")
    if tuple(y.shape) != (batch,):
        raise GanlabError(f"{owner}: labels y must have shape ({batch},) to match the batch, got {tuple(y.shape)}")
    # The range check reads y on the host: free on the CPU, a sync per forward on a GPU (and a graph break under
    # torch.compile), so there it is left to the training module, which checks its first batch
    # (GAN.on_train_batch_start; ganlab compiles only after an eager first step).
    if batch and not y.is_cuda and not torch.compiler.is_compiling() and (
            int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise GanlabError(f"{owner}: labels y must lie in [0, {num_classes - 1}], "
                          f"got values from {int(y.min())} to {int(y.max())}")


def check_positive(owner: str, **sizes: int | Sequence[int]) -> None:
    """Raise naming every non-positive size (ints or sequences of ints), e.g. ``hidden=[64, 0]``."""
    bad = {k: v for k, v in sizes.items()
           if (min(v, default=1) if isinstance(v, Sequence) else v) < 1}
    if bad:
        raise GanlabError(f"{owner}: sizes must be positive, got "
                          + ", ".join(f"{k}={list(v) if isinstance(v, Sequence) else v}" for k, v in bad.items()))


class LabelConcat(nn.Module):
    """Concatenate a learned label embedding to the features (dim 1) of a tensor of any rank.

    For a vector (N, F) this appends E features: the conditional GAN of Mirza & Osindero (2014), used on z by
    every conditional generator and on the flattened input by the MLP discriminator. For a map (N, C, H, W)
    the embedding is broadcast to (N, E, H, W) "label maps", appended as extra input channels (the usual
    conditional-DCGAN discriminator input).
    """

    def __init__(self, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        e = self.embed(y.long())
        e = e.view(*e.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return torch.cat([x, e.to(x.dtype)], dim=1)


class Projection(nn.Module):
    """The class term of the projection discriminator (Miyato & Koyama 2018): <embed(y), phi(x)>.

    The embedding is initialised Xavier-uniform as in the authors' code, so the term starts at the scale of
    the unconditional head rather than N(0, 1) per feature (which would dominate wide feature vectors).
    """

    def __init__(self, num_classes: int, features: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, features)
        nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, phi: Tensor, y: Tensor) -> Tensor:
        return (self.embed(y.long()) * phi).sum(dim=1)


class MinibatchStdDev(nn.Module):
    """Append the minibatch standard deviation as one extra feature/channel (Karras et al. 2018, ProGAN).

    Samples are split into groups of ``group_size`` consecutive samples; within each group the standard
    deviation of every feature (and pixel) across the group's samples is taken, averaged into one number,
    and appended to each sample of that group (broadcast over H x W for maps). A generator that collapses
    to a few outputs gives a visibly small value, which D can use against it.

    Like the paper, the deviation is the biased one, sqrt(mean((x - mean)^2) + 1e-8). When the batch size
    is not a multiple of ``group_size`` (for instance a smaller last batch or a single sample), the whole
    batch is used as one group instead of failing.
    """

    def __init__(self, group_size: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        if group_size < 1:
            raise GanlabError(f"MinibatchStdDev: group_size must be >= 1, got {group_size}")
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        group = self.group_size if n % self.group_size == 0 else n
        groups = x.reshape(n // group, group, -1)                      # (M, G, features*pixels)
        std = torch.sqrt(groups.var(dim=1, unbiased=False) + self.eps)  # (M, features*pixels)
        stat = std.mean(dim=1).repeat_interleave(group)                 # (N,), one value per group
        stat = stat.view(n, 1, *([1] * (x.dim() - 2))).expand(n, 1, *x.shape[2:])
        return torch.cat([x, stat.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


def add_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectrally normalise every Linear and Conv layer of ``module`` in place (Miyato et al. 2018, SN-GAN).

    Each weight is divided by an estimate of its largest singular value (conv kernels reshaped to
    (out, in*k*k)), refined by one power iteration per training forward pass, so D is 1-Lipschitz per layer.
    Embeddings (conditioning) are left alone. Returns ``module`` for chaining.
    """
    for m in list(module.modules()):
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spectral_norm(m)
    return module


class Generator(nn.Module):
    """Base of ganlab generators: checks (z, y) and concatenates the label embedding to z when conditional.

    Subclasses build their layers for an input of ``self.input_dim`` features and implement ``decode``.
    ``embed_dim`` defaults to ``num_classes`` (the width of a one-hot label, as in Mirza & Osindero 2014).
    """

    def __init__(self, latent_dim: int, out_shape: Sequence[int], num_classes: int = 0,
                 embed_dim: int | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        out_shape = tuple(int(s) for s in out_shape)
        check_positive(name, latent_dim=latent_dim, out_shape=out_shape)
        if num_classes < 0:
            raise GanlabError(f"{name}: num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        embed_dim = num_classes if embed_dim is None else embed_dim
        if num_classes:
            check_positive(name, embed_dim=embed_dim)
        self.latent_dim = latent_dim
        self.out_shape = out_shape
        self.num_classes = num_classes
        self.label = LabelConcat(num_classes, embed_dim) if num_classes else None
        self.input_dim = latent_dim + (embed_dim if num_classes else 0)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise GanlabError(f"{name} expects z of shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        check_labels(name, y, self.num_classes, z.shape[0])
        h = self.label(z, y) if self.label is not None else z
        return self.decode(h).reshape(z.shape[0], *self.out_shape)

    def decode(self, h: Tensor) -> Tensor:
        """Map the (conditioned) latent (N, input_dim) to an output with prod(out_shape) values per sample."""
        raise NotImplementedError


class Discriminator(nn.Module):
    """Base of ganlab discriminators: input checks, PacGAN packing, label conditioning and the logit.

    Subclasses call ``conditioning_setup(features)`` once they know the width of phi(x), set ``self.head``
    (or override it) to the final Linear(features, 1), and implement ``features``. Then
    ``forward(x, y)``:

    1. checks x is (N, *in_shape) with N divisible by ``pack`` and checks y;
    2. packs (PacGAN, Lin et al. 2018): consecutive groups of ``pack`` samples are concatenated along
       dim 1, (N, C, ...) -> (N/pack, pack*C, ...), so D judges ``pack`` samples jointly (mode collapse
       shows as repeated samples within a pack). ``pack > 1`` with labels is refused: the samples of a
       pack would need one label;
    3. ``conditioning="concat"``: ``prepare`` flattens (MLP) or not (conv), then the label embedding is
       concatenated as features/label maps before ``features``;
    4. logit = head(phi(x)), plus <embed(y), phi(x)> for ``conditioning="projection"``
       (Miyato & Koyama 2018).
    """

    head: nn.Module

    def __init__(self, in_shape: Sequence[int], num_classes: int = 0, conditioning: str = "projection",
                 pack: int = 1, embed_dim: int | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        in_shape = tuple(int(s) for s in in_shape)
        check_positive(name, in_shape=in_shape, pack=pack)
        if num_classes < 0:
            raise GanlabError(f"{name}: num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        if conditioning not in CONDITIONINGS:
            raise GanlabError(f"{name}: conditioning must be one of {', '.join(CONDITIONINGS)}; got {conditioning!r}")
        if pack > 1 and num_classes > 0:
            raise GanlabError(f"{name}: pack={pack} cannot be combined with num_classes={num_classes} "
                              f"(the samples of a pack have different labels); use pack=1 for a conditional D")
        embed_dim = num_classes if embed_dim is None else embed_dim
        if num_classes and conditioning == "concat":
            check_positive(name, embed_dim=embed_dim)
        self.in_shape = in_shape
        self.num_classes = num_classes
        self.conditioning = conditioning
        self.pack = pack
        # Label embedding for concat conditioning (features/channels added to the input); None otherwise.
        self.label = LabelConcat(num_classes, embed_dim) if num_classes and conditioning == "concat" else None
        self.label_dim = embed_dim if self.label is not None else 0
        self.projection: Projection | None = None

    def conditioning_setup(self, features: int) -> None:
        """Create the projection embedding once the width of phi(x) is known."""
        if self.num_classes and self.conditioning == "projection":
            self.projection = Projection(self.num_classes, features)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        if tuple(x.shape[1:]) != self.in_shape:
            raise GanlabError(f"{name} expects inputs of shape (N, {', '.join(map(str, self.in_shape))}), "
                              f"got {tuple(x.shape)}")
        if x.shape[0] % self.pack:
            raise GanlabError(f"{name}: batch size {x.shape[0]} is not divisible by pack={self.pack}")
        check_labels(name, y, self.num_classes, x.shape[0])
        x = x.reshape(x.shape[0] // self.pack, self.pack * x.shape[1], *x.shape[2:])
        h = self.prepare(x)
        if self.label is not None:
            h = self.label(h, y)
        phi = self.features(h)
        logit = self.head(phi).squeeze(1)
        if self.projection is not None:
            logit = logit + self.projection(phi, y)
        return logit

    def prepare(self, x: Tensor) -> Tensor:
        """Reshape the packed input before label concatenation (identity by default)."""
        return x

    def features(self, h: Tensor) -> Tensor:
        """phi: the (conditioned) packed input -> a feature vector (N/pack, F) for the head."""
        raise NotImplementedError


"""The images `ganlab explain` explains: dataset samples, image files, or a GAN's own samples.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from ganlab.errors import GanlabError, first_line


@dataclass(frozen=True)
class Inputs:
    images: Tensor                 # (N, C, H, W) in [-1, 1], CPU
    labels: Tensor | None          # (N,) long: dataset labels, or a conditional GAN's labels; None if unknown
    indices: list[int]             # dataset index per image (-1 for files and generated samples)
    paths: list[str] | None        # image files, when they are the source
    names: list[str]               # one short name per image for the figures

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, order: Tensor) -> Inputs:
        """Rows in `order` (repeats allowed): one row per (image, target class)."""
        rows = order.tolist()
        return replace(self, images=self.images[order], labels=None if self.labels is None else self.labels[order],
                       indices=[self.indices[i] for i in rows], names=[self.names[i] for i in rows],
                       paths=None if self.paths is None else [self.paths[i] for i in rows])


def dataset_inputs(run_cfg: DictConfig, split: str, indices: Any) -> Inputs:
    """Samples `indices` of the run's own datamodule (rebuilt from its config.yaml), split `split`."""
    wanted = [indices] if isinstance(indices, int) else list(indices or [])
    if not wanted or any(not isinstance(i, int) or isinstance(i, bool) for i in wanted):
        raise GanlabError(f"indices={indices}: expected a list of sample indices, e.g. indices=[0,1,2]")
    try:
        datamodule = instantiate(run_cfg.data)
        datamodule.setup("validate")
    except GanlabError:
        raise
    except Exception as err:
        raise GanlabError(f"data: cannot rebuild the run's datamodule {run_cfg.data.get('_target_')} "
                          f"({first_line(err)}); "
                          "pass images=[...] to explain image files instead") from None
    datasets = getattr(datamodule, "datasets", None) or {}
    if split not in datasets:
        raise GanlabError(f"split={split}: the run's data ({type(datamodule).__name__}) has splits "
                          f"{', '.join(datasets) or 'none'}")
    dataset = datasets[split]
    bad = [i for i in wanted if not 0 <= i < len(dataset)]
    if bad:
        raise GanlabError(f"indices={wanted}: index {bad[0]} is out of range for split {split!r} "
                          f"({len(dataset)} samples, indices 0..{len(dataset) - 1})")
    items = [dataset[i] for i in wanted]
    images = torch.stack([torch.as_tensor(item["image"]).float() for item in items])
    labels = torch.stack([torch.as_tensor(item["label"]).long().reshape(()) for item in items])
    return Inputs(images, labels, wanted, None, [f"{split}[{i}]" for i in wanted])


def image_shape(run_cfg: DictConfig) -> tuple[int, int, int]:
    """(C, H, W) the run's networks take, from its data config (`channels`, `image_size`)."""
    data = run_cfg.get("data") or {}
    channels, size = data.get("channels"), data.get("image_size")
    if not isinstance(channels, int) or not isinstance(size, int):
        raise GanlabError("images=: the run's config.yaml has no data.channels / data.image_size, so the image "
                          "size its network expects is unknown")
    return channels, size, size


def read_image_file(path: str, shape: Sequence[int]) -> Tensor:
    """A PNG/JPEG file -> (C, H, W) float in [-1, 1] at the run's channel count and size."""
    from torchvision.io import ImageReadMode, read_image  # deferred: torchvision is slow to import

    channels, height, width = shape
    if channels not in (1, 3):
        raise GanlabError(f"images=: the run's images have {channels} channels; only 1 (grey) or 3 (RGB) "
                          "can be read from image files")
    file = Path(path).expanduser()
    if not file.is_file():
        raise GanlabError(f"images: {file}: no such file")
    try:
        image = read_image(str(file), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except Exception as err:
        raise GanlabError(f"images: {file}: not a readable PNG/JPEG image ({str(err).strip()[:200]})") from None
    scale = 65535.0 if image.dtype == torch.uint16 else 255.0
    x = image.float() / scale
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    return (x.clamp(0, 1) * 2 - 1).contiguous()


def file_inputs(paths: list[str], run_cfg: DictConfig) -> Inputs:
    shape = image_shape(run_cfg)
    images = torch.stack([read_image_file(str(p), shape) for p in paths])
    return Inputs(images, None, [-1] * len(paths), [str(p) for p in paths], [Path(p).name for p in paths])


def generated_inputs(model: Any, n: int, seed: int, device: torch.device) -> Inputs:
    """`n` samples of the run's generator (EMA if it has one), with their labels for a conditional GAN."""
    if n < 1:
        raise GanlabError(f"n={n}: expected at least 1 generated sample")
    rng = torch.Generator(device=device).manual_seed(seed)
    z = model.sample_z(n, generator=rng)
    labels = model.sample_labels(n, generator=rng)
    images = model.generate(z, labels).float().cpu()
    return Inputs(images, None if labels is None else labels.cpu(), [-1] * n, None,
                  [f"generated {i}" for i in range(n)])

"""Feature networks of the image-quality metrics: a classifier run's net, or a net shipped with ganlab.

Kept out of ganlab/metrics/ (which knows features, not where they come from): loading a run dir needs
ganlab.models and ganlab.runs. How the packaged MNIST net was made: scripts/train_feature_net.py and
benchmarks/feature_net_mnist.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ganlab.errors import GanlabError
from ganlab.metrics.image_quality import ClassifierFeatures

WEIGHTS_DIR = Path(__file__).parent / "metrics" / "weights"
# feature_net=<name>: the weights files shipped in the package (scripts/train_feature_net.py writes them).
PACKAGED = {"mnist": "mnist_classifier.pt"}
# What a weights file may ask CNNClassifier for; nothing else in it is ever called or built.
NET_KWARGS = ("in_channels", "num_classes", "widths", "strides", "downsample", "coords")
REBUILD = "rebuild it with `python scripts/train_feature_net.py` or reinstall ganlab"


def packaged_weights(name: str) -> Path:
    """The file behind `feature_net=<name>`."""
    return WEIGHTS_DIR / PACKAGED[name]


def read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """The dict a weights file holds (state_dict, net_kwargs, image_size, training record), read with
    weights_only=True; a missing, truncated or foreign file is one GanlabError naming it."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GanlabError(f"{path}: feature-net weights file not found; {REBUILD}") from None
    except Exception as err:  # truncated zip, not a torch file, a pickle weights_only refuses, ...
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        # torch's weights_only refusal puts the reason on a later line than its advice
        first = next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0])[:200]
        raise GanlabError(f"{path}: not a readable feature-net weights file ({first}); {REBUILD}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict) \
            or not isinstance(saved.get("net_kwargs"), dict):
        raise GanlabError(f"{path}: not a feature-net weights file (expected a dict with 'state_dict' and "
                          f"'net_kwargs'); {REBUILD}")
    return saved


def load_weights_file(path: str | os.PathLike, source: str | None = None) -> ClassifierFeatures:
    """A CNNClassifier rebuilt from a weights file (float16 entries back to float32), as metric features."""
    from ganlab.nets.classifier import CNNClassifier

    path = Path(path)
    saved = read_weights_file(path)
    kwargs = saved["net_kwargs"]
    unknown = sorted(set(kwargs) - set(NET_KWARGS))
    try:
        if unknown:
            raise ValueError(f"unknown net_kwargs {', '.join(map(str, unknown))}")
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave training's RNG alone
            net = CNNClassifier(**kwargs)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state_dict"].items()})
    except (ValueError, TypeError, RuntimeError, AttributeError) as err:
        first = " ".join(str(err).strip().splitlines()[:2])[:300]
        raise GanlabError(f"{path}: weights do not fit ganlab.nets.classifier.CNNClassifier ({first}); "
                          f"{REBUILD}") from None
    image_size = saved.get("image_size")
    return ClassifierFeatures(net.eval(), int(image_size) if image_size else None, source=source or str(path))


def load_feature_net(name: str | os.PathLike) -> ClassifierFeatures:
    """`feature_net=mnist` (a packaged net) or a path to a weights file of the same format."""
    spec = str(name)
    if spec in PACKAGED:
        return load_weights_file(packaged_weights(spec), source=f"feature_net={spec} ({packaged_weights(spec)})")
    path = Path(spec).expanduser()
    if path.suffix == ".pt" or path.exists():
        return load_weights_file(path, source=f"feature_net={path}")
    raise GanlabError(f"feature_net={spec}: expected one of {', '.join(PACKAGED)} (packaged with ganlab) or a "
                      "path to a .pt weights file; for another dataset give feature_run=<classifier run>")


def load_classifier_features(run: str | os.PathLike, log_dir: str | os.PathLike = "outputs",
                             device: str | torch.device = "cpu") -> ClassifierFeatures:
    """The feature extractor of a classifier run (`latest:classifier_mnist`, a run dir or a .ckpt)."""
    from ganlab.models.classifier import Classifier
    from ganlab.runs import load_model, resolve_run

    try:
        ref = resolve_run(run, log_dir)
        with torch.random.fork_rng(devices=[]):  # building the model draws its random init: not from training's RNG
            model, cfg = load_model(ref, device)
    except GanlabError as err:
        raise GanlabError(f"feature_run={run}: {err}") from None
    net = getattr(model, "net", None)
    if not isinstance(model, Classifier) or not callable(getattr(net, "embed", None)):
        raise GanlabError(f"feature_run={run}: {ref.run_dir} trains {OmegaConf.select(cfg, 'model._target_')}, "
                          "expected a classifier run (ganlab.models.classifier.Classifier with a net that has "
                          "`embed`), e.g. from `ganlab train +experiment=classifier_mnist`")
    return ClassifierFeatures(net, OmegaConf.select(cfg, "data.image_size"), source=f"feature_run={ref.run_dir}")


def feature_source(feature_run: str | os.PathLike | None, feature_net: str | os.PathLike | None,
                   log_dir: str | os.PathLike = "outputs") -> ClassifierFeatures:
    """The metrics' feature space: `feature_run` when given (it wins), else the packaged `feature_net`."""
    if feature_run not in (None, ""):
        return load_classifier_features(feature_run, log_dir)
    if feature_net not in (None, ""):
        return load_feature_net(feature_net)
    raise GanlabError("callbacks.image_metrics: no feature space; give feature_run=<classifier run> (latest:<name>, "
                      f"a run dir or a .ckpt) or feature_net={'|'.join(PACKAGED)} (a net shipped with ganlab)")

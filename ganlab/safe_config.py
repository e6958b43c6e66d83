"""Decide whether a config read from a run dir may be handed to Hydra's `instantiate`.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, ListConfig
from omegaconf.nodes import ValueNode

from ganlab.errors import GanlabError

# Packages a target may start from at all; nothing outside them is ever imported while resolving.
TRUSTED_ROOTS = ("ganlab", "torch", "torchvision", "pytorch_lightning", "lightning")

# ganlab classes are allowed by where they are defined: adding a network, model, datamodule, callback or
# explainer is one module plus one YAML, with no list to update. ganlab *functions* are listed one by one
# (most of ganlab's functions read or write files: runs.write_yaml_atomic must never be a target).
GANLAB_CLASS_PACKAGES = ("ganlab.nets.", "ganlab.models.", "ganlab.data.", "ganlab.callbacks.", "ganlab.explain.")
GANLAB_FUNCTIONS = ("ganlab.data.gaussian_mixture.ring_centers", "ganlab.data.gaussian_mixture.grid_centers")

# The third-party objects configs use (or a user may reasonably swap in): constructors with no side effects
# beyond building the object. Spelled by public path; compared by identity after import.
THIRD_PARTY = (
    *(f"torch.optim.{name}" for name in ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam")),
    *(f"torch.optim.lr_scheduler.{name}" for name in (
        "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR", "ConstantLR",
        "OneCycleLR", "ReduceLROnPlateau", "CosineAnnealingWarmRestarts")),
    *(f"torch.nn.{name}" for name in (
        "Identity", "Tanh", "Sigmoid", "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Softplus", "Hardtanh",
        "BatchNorm1d", "BatchNorm2d", "InstanceNorm2d", "GroupNorm", "LayerNorm", "Dropout", "Dropout2d")),
    "pytorch_lightning.Trainer",
    *(f"pytorch_lightning.callbacks.{name}" for name in (
        "ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "TQDMProgressBar", "RichProgressBar",
        "ModelSummary", "RichModelSummary", "Timer", "StochasticWeightAveraging", "GradientAccumulationScheduler")),
    *(f"pytorch_lightning.loggers.{name}" for name in ("TensorBoardLogger", "CSVLogger")),
    *(f"pytorch_lightning.strategies.{name}" for name in ("DDPStrategy", "SingleDeviceStrategy")),
)


def _import_trusted(name: str) -> Any:
    if name.partition(".")[0] not in TRUSTED_ROOTS:
        raise ImportError(name)
    return importlib.import_module(name)


def locate(path: str) -> Any:
    """Resolve `path` as Hydra's `_locate` does (attribute first, then submodule import), minus its reach:
    only trusted packages are imported and no part may be private (`_C`, `__builtins__`, `__globals__`)."""
    parts = path.split(".")
    if not all(part.isidentifier() and not part.startswith("_") for part in parts):
        raise ImportError(path)
    obj = _import_trusted(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = _import_trusted(".".join(parts[: i + 1]))
    return obj


@lru_cache(maxsize=1)
def _third_party() -> frozenset[int]:
    found = set()
    for path in THIRD_PARTY:
        try:
            found.add(id(locate(path)))
        except ImportError:  # a class this torch/Lightning version lacks cannot be a target either
            continue
    return frozenset(found)


def _own_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _is_canonical(obj: Any) -> bool:
    """The object really is what its `__module__`/`__qualname__` say (not an alias carrying borrowed names)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    found: Any = module
    for part in str(getattr(obj, "__qualname__", "<none>")).split("."):
        found = getattr(found, part, None)
    return found is obj


def is_allowed(obj: Any) -> bool:
    if id(obj) in _third_party():
        return True
    if not _is_canonical(obj):
        return False
    if isinstance(obj, type):
        return obj.__module__.startswith(GANLAB_CLASS_PACKAGES)
    return _own_name(obj) in GANLAB_FUNCTIONS


def check_target(target: Any, source: str, key: str) -> None:
    """Refuse a `_target_` unless what it resolves to is allowed; nothing it names is ever called."""
    if not isinstance(target, str):
        raise GanlabError(f"{source}: {key}={target!r} is not allowed; a target is a dotted class name")
    try:
        obj = locate(target)
    except Exception:  # ImportError, or a module's own import error: either way not a target we build
        raise GanlabError(f"{source}: {key}={target!r} is not allowed; it does not name a ganlab, torch or "
                          "Lightning class") from None
    if not is_allowed(obj):
        raise GanlabError(f"{source}: {key}={target!r} is not allowed; it resolves to {_own_name(obj)}, which is "
                          "not one of ganlab's networks, models, data, callbacks or explainers, nor an allowed "
                          "torch/Lightning class")


def check_plain_value(node: ValueNode, source: str, key: str) -> None:
    value = node._value()
    if isinstance(value, str) and "${" in value:
        raise GanlabError(f"{source}: {key}={value!r} is an interpolation; a run's config.yaml is written resolved "
                          "by `ganlab train`, so one with ${...} in it was edited or planted and is refused")
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise GanlabError(f"{source}: {key} holds a {type(value).__name__} value; a run's config.yaml holds only "
                          "strings, numbers, booleans and null")


def targets_of(node: Any, key: str = "") -> dict[str, str]:
    """Every `_target_` string of a config by its dotted key, read without resolving anything."""
    found: dict[str, str] = {}
    if isinstance(node, DictConfig) and not (node._is_missing() or node._is_none() or node._is_interpolation()):
        for k in node.keys():
            child_key = f"{key}.{k}" if key else str(k)
            child = node._get_node(k)
            if k == "_target_" and isinstance(child, ValueNode) and isinstance(child._value(), str):
                found[child_key] = child._value()
            else:
                found.update(targets_of(child, child_key))
    elif isinstance(node, ListConfig) and not (node._is_missing() or node._is_none() or node._is_interpolation()):
        for i in range(len(node)):
            found.update(targets_of(node._get_node(i), f"{key}[{i}]"))
    return found


def check_run_config(node: Any, source: str, key: str = "", vouched: Mapping[str, str] | None = None) -> None:
    """Walk the whole tree (data, model, callbacks, logger, hydra, `_args_`, kwargs) without resolving any
    value, refusing interpolations, odd value types and every target that is not allowed.

    `vouched` maps keys to the targets the current command composes itself (train resuming a run that used
    the user's own callback): the same target at the same key runs in this command anyway, so it is let
    through; any other key or spelling is checked as usual."""
    vouched = vouched or {}
    if isinstance(node, DictConfig):
        if node._is_missing() or node._is_none():
            return
        if node._is_interpolation():
            raise GanlabError(f"{source}: {key} is an interpolation; a run's config.yaml is written resolved")
        # The target first: the message then says what the node would have called.
        for k in sorted(node.keys(), key=lambda k: k != "_target_"):
            if not isinstance(k, str) or "${" in k:
                raise GanlabError(f"{source}: key {k!r} under {key or 'the top level'} is not allowed")
            child_key = f"{key}.{k}" if key else k
            child = node._get_node(k)
            if k == "_target_":
                check_plain_value(child, source, child_key)
                if vouched.get(child_key) != child._value():
                    check_target(child._value(), source, child_key)
            else:
                check_run_config(child, source, child_key, vouched)
    elif isinstance(node, ListConfig):
        if node._is_missing() or node._is_none():
            return
        if node._is_interpolation():
            raise GanlabError(f"{source}: {key} is an interpolation; a run's config.yaml is written resolved")
        for i in range(len(node)):
            check_run_config(node._get_node(i), source, f"{key}[{i}]", vouched)
    elif isinstance(node, ValueNode):
        check_plain_value(node, source, key)

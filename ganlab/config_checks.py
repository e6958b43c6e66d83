"""Check the values a user types into a composed config, before anything is built from it.

Why: Hydra composes `data.batch_size=big` or `seed=abc` into a string without complaint, and an interpolation
such as `${oc.env:UNSET}` fails only when some constructor reads it; either way the user got 6-86 lines of
traceback from deep inside Lightning, torch or OmegaConf, most without the key. Each verb calls
`check_values` first, so a bad value ends as one line naming the key, the value and what is expected, before
a dataset, a model or a run manifest exists. Checks that need the data (label ranges, empty splits, missing
files) live in the data modules, where the files are read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ganlab.errors import GanlabError, first_line

MAX_SEED = 2**32 - 1  # Lightning's (and numpy's) seed range


def _integer(low: int, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v and (high is None or v <= high)


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _device(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None


# (test, what is expected, null allowed)
Check = tuple[Callable[[Any], bool], str, bool]
SEED: Check = (_integer(0, MAX_SEED), f"an integer in 0..{MAX_SEED}", False)
COUNT: Check = (_integer(1), "an integer >= 1", False)
STEPS: Check = (_integer(-1), "an integer >= -1 (-1: no limit)", False)
LEARNING_RATE: Check = (_positive_number, "a positive finite number", False)
DEVICE: Check = (_device, "cpu, cuda, cuda:N or auto", False)

# Per verb: key (the last part may be a glob over the keys of its parent) -> check. A key the config lacks
# is skipped (not every experiment has model.lr_d or trainer.max_epochs).
CHECKS: dict[str, dict[str, Check]] = {
    "train": {
        "seed": SEED,
        "trainer.max_steps": STEPS,
        "trainer.max_epochs": (STEPS[0], "an integer >= -1 (-1: no limit) or null", True),
        "data.batch_size": COUNT,
        "model.lr": LEARNING_RATE,
        "model.lr_*": LEARNING_RATE,
    },
    "sample": {
        "seed": SEED,
        "n": COUNT,
        "steps": (_integer(2), "an integer >= 2", False),
        "rows": COUNT,
        "nrow": (COUNT[0], "an integer >= 1 or null", True),
        "batch_size": COUNT,
        "panel_slices": COUNT,
        "device": DEVICE,
        "truncation": (_positive_number, "a positive number (latent entries beyond it are redrawn) or null", True),
    },
    "explain": {
        "seed": SEED,
        "n": COUNT,
        "device": DEVICE,
        "smooth": (_integer(0), "an integer >= 0 (noisy copies per map; 0: off)", False),
        "smooth_sigma": (_positive_number, "a positive number (noise std / each image's value range)", False),
        "sanity": (lambda v: v in ("single", "cascade"), "single (one score per method) or cascade (layer by layer)",
                   False),
    },
    "runs": {},
}


def check_values(cfg: DictConfig, verb: str) -> None:
    """Raise GanlabError for the first value in `cfg` that cannot resolve or is not what `verb` expects."""
    _resolve_all(cfg)
    for pattern, (ok, expected, nullable) in CHECKS[verb].items():
        for key, value in _select(cfg, pattern):
            if not (ok(value) or (nullable and value is None)):
                shown = "null" if value is None else value
                raise GanlabError(f"{key}={shown}: expected {expected}")


def _select(cfg: DictConfig, pattern: str) -> Iterator[tuple[str, Any]]:
    """(key, value) for every key of `cfg` that `pattern` names; its last part may be a glob."""
    parent_key, _, leaf = pattern.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or parent._is_none():
        return
    for name in parent.keys():
        if fnmatchcase(str(name), leaf):
            yield f"{parent_key}.{name}" if parent_key else str(name), parent[name]


def _resolve_all(node: DictConfig | ListConfig, prefix: str = "") -> None:
    """Read every value once, so an interpolation that fails (`${oc.env:UNSET}`) or a missing `???` is reported
    here with its key rather than as a traceback from whichever constructor reads it first."""
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for k in keys:
        key = f"{prefix}[{k}]" if isinstance(k, int) else f"{prefix}.{k}" if prefix else str(k)
        raw = node._get_node(k)._value()
        try:
            value = node[k]
        except MissingMandatoryValue:
            raise GanlabError(f"{key}=???: missing; expected a value (add {key}=... to the command)") from None
        except OmegaConfBaseException as err:
            if not HydraConfig.initialized() and "HydraConfig was not set" in str(err):
                continue  # composed outside a Hydra app (tests, notebooks): ${hydra:...} has nothing to read yet
            reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", first_line(err)).strip('"')
            raise GanlabError(f"{key}={raw}: {reason}; expected a value or an interpolation that resolves") from None
        if isinstance(value, (DictConfig, ListConfig)) and not OmegaConf.is_interpolation(node, k):
            _resolve_all(value, key)

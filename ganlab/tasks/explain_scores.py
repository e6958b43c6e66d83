"""`ganlab explain evaluate=true`: how faithful each method's maps are, averaged over the explained rows.

- deletion / insertion AUC (Petsiuk et al. 2018): the target's probability as the most-attributed pixels are
  removed (low is good) or added back (high is good);
- randomisation sanity check (Adebayo et al. 2018): similarity of the maps before and after the network's
  weights are randomised (low is good: a map that survives randomisation does not explain the model);
- on PCam only: the share of positive attribution inside the centre 32x32 box, where the label is decided.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

PCAM_BOX, PCAM_SIZE = 32, 96  # PCam labels a 96x96 patch by tumour tissue in its centre 32x32 pixels


def _nanmean(values: list[Tensor]) -> float | None:
    """Mean over rows, ignoring undefined values (NaN: a constant map has no rank correlation, a map with
    no positive mass no box fraction); None if every row is undefined."""
    mean = torch.nanmean(torch.cat([v.detach().double().cpu().reshape(-1) for v in values]))
    return None if torch.isnan(mean) else round(float(mean), 4)


def evaluate_methods(cfg: DictConfig, explainers: dict[str, Any], net: nn.Module, rows: Any, targets: Tensor | None,
                     maps: dict[str, Tensor], groups: list[list[int]], bind: Callable[[list[int]], None],
                     pcam: bool, device: torch.device) -> dict[str, dict]:
    """method -> {deletion_auc, insertion_auc, randomisation_similarity[, centre_mass]}, means over rows.

    Rows are scored in `groups`; `bind(group)` prepares `net` for one (a conditional D takes the row's label).
    """
    from hydra.utils import instantiate

    from ganlab.explain import evaluation  # deferred: only evaluate=true needs it

    size = tuple(rows.images.shape[-2:])
    box = evaluation.centre_box(size, max(1, round(PCAM_BOX * min(size) / PCAM_SIZE))) if pcam else None
    results: dict[str, dict] = {}
    for name in explainers:
        factory = instantiate(cfg.explainers[name])
        scores: dict[str, list[Tensor]] = {"deletion_auc": [], "insertion_auc": [], "randomisation_similarity": []}
        for group in groups:
            bind(group)
            x, m = rows.images[group].to(device), maps[name][group].to(device)
            target = None if targets is None else targets[group].to(device)
            aucs = evaluation.deletion_insertion_auc(net, x, m, target)
            scores["deletion_auc"].append(aucs["deletion"])
            scores["insertion_auc"].append(aucs["insertion"])
            scores["randomisation_similarity"].append(evaluation.randomisation_sanity(factory, net, x, target))
        if box is not None:
            scores["centre_mass"] = [evaluation.mass_in_box(maps[name], box)]
        results[name] = {key: _nanmean(values) for key, values in scores.items()}
    return results


def print_table(results: dict[str, dict[str, float | None]]) -> None:
    """One line per method; deletion: lower is better, insertion: higher, randomisation similarity: lower."""
    columns = list(next(iter(results.values())))
    print(f"{'method':<16}" + "".join(f"{c:>{len(c) + 2}}" for c in columns))
    for name, scores in results.items():
        cells = ("n/a" if scores[c] is None else f"{scores[c]:.3f}" for c in columns)
        print(f"{name:<16}" + "".join(f"{cell:>{len(c) + 2}}" for c, cell in zip(columns, cells)))

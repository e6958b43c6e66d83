"""`ganlab explain evaluate=true` and `sanity=cascade`: how faithful each method's maps are.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

if TYPE_CHECKING:
    from ganlab.explain.cascade import CascadeResult


def _nanmean(values: list[Tensor]) -> float | None:
    """Mean over rows, ignoring undefined values (NaN: a constant map has no rank correlation, a map with
    no positive mass no box fraction); None if every row is undefined."""
    mean = torch.nanmean(torch.cat([v.detach().double().cpu().reshape(-1) for v in values]))
    return None if torch.isnan(mean) else round(float(mean), 4)


def method_factory(cfg: DictConfig, name: str) -> Callable[[nn.Module], Any]:
    """model -> explainer `name` as the maps are made (with SmoothGrad for `smooth=N`): the one recipe for the
    maps and for the checks that rebuild a method on a randomised copy of the network."""
    from hydra.utils import instantiate

    from ganlab.explain.smooth import SmoothGrad

    partial = instantiate(cfg.explainers[name])
    smooth = int(cfg.get("smooth", 0))
    if smooth <= 0:
        return partial
    return lambda model: SmoothGrad(partial(model), smooth, float(cfg.smooth_sigma), seed=int(cfg.seed))


def _batches(rows: Any, targets: Tensor | None, groups: list[list[int]], bind: Callable[[list[int]], None],
             device: torch.device) -> Iterator[tuple[list[int], Tensor, Tensor | None]]:
    """(group, images, targets) on `device` per group of rows, `net` bound to each group first."""
    for group in groups:
        bind(group)
        yield group, rows.images[group].to(device), None if targets is None else targets[group].to(device)


def evaluate_methods(cfg: DictConfig, explainers: dict[str, Any], net: nn.Module, rows: Any, targets: Tensor | None,
                     maps: dict[str, Tensor], groups: list[list[int]], bind: Callable[[list[int]], None],
                     box: tuple[int, int, int, int] | None, device: torch.device) -> dict[str, dict]:
    """method -> {deletion_auc, insertion_auc, road_morf, road_lerf[, randomisation_similarity][, centre_mass]},
    means over rows; the randomisation similarity with `sanity=single` only (the cascade replaces it).

    Rows are scored in `groups`; `bind(group)` prepares `net` for one (a conditional D takes the row's label).
    """
    from ganlab.explain import artifacts, evaluation  # deferred: only evaluate=true needs them

    size = tuple(rows.images.shape[-2:])
    single = cfg.get("sanity", "single") == "single"
    results: dict[str, dict] = {}
    for name in explainers:
        factory = method_factory(cfg, name)
        scores: dict[str, list[Tensor]] = {"deletion_auc": [], "insertion_auc": [], "road_morf": [], "road_lerf": []}
        if single:
            scores["randomisation_similarity"] = []
        for group, x, target in _batches(rows, targets, groups, bind, device):
            m = maps[name][group].to(device)
            aucs = evaluation.deletion_insertion_auc(net, x, m, target)
            scores["deletion_auc"].append(aucs["deletion"])
            scores["insertion_auc"].append(aucs["insertion"])
            for order in ("morf", "lerf"):
                scores[f"road_{order}"].append(evaluation.road_auc(net, x, m, target, order=order))
            if single:
                scores["randomisation_similarity"].append(evaluation.randomisation_sanity(factory, net, x, target))
        if box is not None:
            scores["centre_mass"] = [evaluation.mass_in_box(maps[name], box)]
        results[name] = {key: _nanmean(values) for key, values in scores.items()}
        if size[0] % 2 == 0 and size[1] % 2 == 0:  # the 2-pixel period needs an even grid
            results[name]["checkerboard"] = round(artifacts.checkerboard_ratio(maps[name], rows.images), 4)
    return results


def cascade_methods(cfg: DictConfig, explainers: dict[str, Any], net: nn.Module, rows: Any, targets: Tensor | None,
                    groups: list[list[int]], bind: Callable[[list[int]], None],
                    device: torch.device) -> dict[str, CascadeResult]:
    """method -> its cascading randomisation over all rows (scored in `groups`, as `evaluate_methods`)."""
    from ganlab.explain.cascade import CascadeResult, cascading_randomisation

    results = {}
    for name in explainers:
        factory = method_factory(cfg, name)
        parts = [cascading_randomisation(factory, net, x, target)
                 for _, x, target in _batches(rows, targets, groups, bind, device)]
        results[name] = CascadeResult.concat(parts)
    return results


def cascade_summary(cascades: dict[str, CascadeResult]) -> dict[str, Any]:
    """explain.yaml's `cascade:` section: the layers (`trained` first), then per method the mean of each
    similarity per layer."""
    layers = next(iter(cascades.values())).layers
    return {"layers": list(layers), **{name: result.summary() for name, result in cascades.items()}}


def write_cascade(out_dir: Path, images: Tensor, cascades: dict[str, CascadeResult]) -> None:
    """cascade.png (the first row's maps, one row per method) and cascade_curves.png into `out_dir`."""
    from ganlab.explain.figures import cascade_curves_figure, cascade_figure, save_figure

    save_figure(cascade_figure(images, cascades), str(out_dir / "cascade.png"))
    save_figure(cascade_curves_figure(cascades), str(out_dir / "cascade_curves.png"))


def print_table(results: dict[str, dict[str, float | None]]) -> None:
    """One line per method; deletion and road_morf: lower is better, insertion and road_lerf: higher,
    randomisation similarity: lower."""
    columns = list(next(iter(results.values())))
    width = max(16, *(len(name) + 1 for name in results))
    print(f"{'method':<{width}}" + "".join(f"{c:>{len(c) + 2}}" for c in columns))
    for name, scores in results.items():
        cells = ("n/a" if scores[c] is None else f"{scores[c]:.3f}" for c in columns)
        print(f"{name:<{width}}" + "".join(f"{cell:>{len(c) + 2}}" for c, cell in zip(columns, cells)))


def print_cascade(cascades: dict[str, CascadeResult]) -> None:
    """The cascade's Spearman similarity per layer (columns, randomised cumulatively from the left), one
    line per method; the SSIM and HOG curves are in explain.yaml and cascade_curves.png."""
    print("cascading randomisation: Spearman rank correlation of |map| with the trained model's")
    print_table({name: dict(zip(result.layers, result.summary()["spearman"])) for name, result in cascades.items()})

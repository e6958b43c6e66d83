"""`ganlab explain`: attribution maps of a trained classifier or a GAN's discriminator, into <run>/explain/<timestamp>/.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from ganlab.config_checks import check_values
from ganlab.errors import GanlabError
from ganlab.nets.layers import MinibatchStdDev
from ganlab.runs import load_model, new_output_dir, resolve_device, resolve_run, write_yaml_atomic
from ganlab.tasks.explain_inputs import Inputs, dataset_inputs, file_inputs, generated_inputs
from ganlab.tasks.explain_scores import (cascade_methods, cascade_summary, evaluate_methods, method_factory,
                                         print_cascade, print_table, write_cascade)

# CAM reads the weights of a global-average-pooling + linear head: classifiers have one, discriminators don't.
NEEDS_GAP_HEAD = frozenset({"cam"})


class RealnessScore(nn.Module):
    """A GAN discriminator as a one-output model, x -> D(x, y) of shape (N,), for the attribution methods.

    `label` (one class, set per image) conditions a class-conditional D. A D with a minibatch-stddev layer is
    run one sample at a time, so an image's score never depends on the other images (or occlusions) in a batch.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.label: Tensor | None = None
        self.conditional = getattr(discriminator, "num_classes", 0) > 0
        self.per_sample = any(isinstance(m, MinibatchStdDev) for m in discriminator.modules())

    def forward(self, x: Tensor) -> Tensor:
        y = self.label.reshape(1).expand(x.shape[0]) if self.conditional and self.label is not None else None
        if self.per_sample:
            return torch.cat([self.discriminator(x[i:i + 1], None if y is None else y[i:i + 1])
                              for i in range(x.shape[0])])
        return self.discriminator(x, y)


def _methods(cfg: DictConfig) -> list[str]:
    """`method=<name>|all` -> explainer names, in the panel's column order (the defaults list order)."""
    names = list(cfg.explainers)
    method = str(cfg.method)
    if method == "all":
        return names
    if method not in names:
        raise GanlabError(f"method={method}: unknown method; expected all or one of {', '.join(names)}")
    return [method]


def _subject(cfg: DictConfig, model: Any, run_cfg: DictConfig, run_dir: Path) -> nn.Module:
    """The network to explain: a classifier run's `net`, or a GAN run's discriminator wrapped as a score."""
    kind = run_cfg.model.get("_target_")
    is_gan = hasattr(model, "discriminator") and hasattr(model, "generate")  # GAN, ProGAN
    if cfg.target == "classifier":
        if is_gan:
            raise GanlabError(f"{run_dir}: a GAN run (its model is {kind}) has no classifier; use "
                              "target=discriminator to explain its discriminator")
        if not isinstance(getattr(model, "net", None), nn.Module) or not hasattr(model.net, "num_classes"):
            raise GanlabError(f"{run_dir}: not a classifier run (its model is {kind}); ganlab explain needs a "
                              "ganlab.models.classifier.Classifier run or target=discriminator on a GAN run")
        return model.net
    if cfg.target != "discriminator":
        raise GanlabError(f"target={cfg.target}: expected classifier or discriminator")
    if not is_gan:
        raise GanlabError(f"target=discriminator: {run_dir} is not a GAN run (its model is {kind}); "
                          "use target=classifier")
    if cfg.targets is not None:
        raise GanlabError(f"targets={cfg.targets}: a discriminator has one output (its realness logit); "
                          "drop targets= for target=discriminator")
    pack = getattr(model, "pack", 1)
    if pack > 1:
        raise GanlabError(f"{run_dir}: its discriminator judges packs of {pack} samples (PacGAN), so a "
                          "single image has no score to explain; explain a run with model.discriminator.pack=1")
    return RealnessScore(model.discriminator)


def _applicable(cfg: DictConfig, methods: list[str], net: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Drop methods that cannot apply to a discriminator (method=all) or refuse the one asked for."""
    if not isinstance(net, RealnessScore):
        return methods, {}
    skipped = {m: "needs a global-average-pooling + linear head; a discriminator has none (use gradcam)"
               for m in methods if m in NEEDS_GAP_HEAD}
    if skipped and cfg.method != "all":
        raise GanlabError(f"method={cfg.method}: {skipped[cfg.method]}")
    return [m for m in methods if m not in skipped], skipped


def _build(cfg: DictConfig, methods: list[str], net: nn.Module) -> dict[str, Any]:
    """Explainer factories (`_partial_` configs) -> explainers of `net`; bad options get one message.
    With `smooth=N` each one is wrapped in SmoothGrad (N noisy copies, seeded by `seed`)."""
    built = {}
    for name in methods:
        try:
            built[name] = method_factory(cfg, name)(net)
        except GanlabError:
            raise
        except Exception as err:
            raise GanlabError(f"explainers.{name}: cannot build {cfg.explainers[name].get('_target_')} "
                              f"for this network ({err})") from None
    return built


def _inputs(cfg: DictConfig, run_cfg: DictConfig, model: Any, net: nn.Module, device: torch.device) -> Inputs:
    if cfg.source not in ("data", "generated"):
        raise GanlabError(f"source={cfg.source}: expected data or generated")
    if cfg.source == "generated":
        if not isinstance(net, RealnessScore):
            raise GanlabError("source=generated: only for target=discriminator (a classifier run has no generator)")
        return generated_inputs(model, int(cfg.n), int(cfg.seed), device)
    if cfg.images:
        if isinstance(net, RealnessScore) and net.conditional:
            raise GanlabError("images=: this run's discriminator is class-conditional and image files carry no "
                              "label; explain dataset samples (indices=) or source=generated")
        return file_inputs(list(cfg.images), run_cfg)
    return dataset_inputs(run_cfg, str(cfg.split), cfg.indices)


def _groups(net: nn.Module, rows: Inputs, size: int = 32) -> list[list[int]]:
    """Rows explained together: chunks of `size`, or one at a time for a conditional discriminator (each row
    is scored under its own label, which `_bind` sets on the network)."""
    if isinstance(net, RealnessScore) and net.conditional and rows.labels is not None:
        size = 1
    return [list(range(i, min(i + size, len(rows)))) for i in range(0, len(rows), size)]


def _bind(net: nn.Module, rows: Inputs, group: list[int] | None, device: torch.device) -> None:
    if isinstance(net, RealnessScore):
        net.label = None if group is None or rows.labels is None else rows.labels[group[0]].to(device)


def _rows(cfg: DictConfig, inputs: Inputs, net: nn.Module,
          device: torch.device) -> tuple[Inputs, Tensor | None, Tensor]:
    """One row per (image, target class): the targets (None for a discriminator) and each row's score
    (the target's softmax probability, or D's logit)."""
    with torch.no_grad():
        if isinstance(net, RealnessScore):
            scores = []
            for group in _groups(net, inputs):
                _bind(net, inputs, group, device)
                scores.append(net(inputs.images[group].to(device)).float().cpu())
            _bind(net, inputs, None, device)
            return inputs, None, torch.cat(scores)
        probs = torch.softmax(net(inputs.images.to(device)).float(), dim=1).cpu()
    classes = probs.shape[1]
    if cfg.targets is None:
        targets = probs.argmax(1)
        return inputs, targets, probs.gather(1, targets[:, None])[:, 0]
    wanted = [cfg.targets] if isinstance(cfg.targets, int) else list(cfg.targets)
    if not wanted or any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < classes for t in wanted):
        raise GanlabError(f"targets={cfg.targets}: expected class indices in 0..{classes - 1} (or null for the "
                          "predicted class)")
    order = torch.arange(len(inputs)).repeat_interleave(len(wanted))
    targets = torch.tensor(wanted).repeat(len(inputs))
    return inputs.take(order), targets, probs[order, targets]


def _row_labels(rows: Inputs, targets: Tensor | None, scores: Tensor, predicted: bool) -> list[str]:
    """name / true label / target class and its probability (or D's logit), one string per panel row."""
    labels = []
    for i, name in enumerate(rows.names):
        lines = [name]
        if rows.labels is not None:
            lines.append(f"label {int(rows.labels[i])}")
        if targets is None:
            lines.append(f"D logit {float(scores[i]):+.2f}")
        else:
            lines.append(f"{'predicted' if predicted else 'class'} {int(targets[i])}: p={float(scores[i]):.2f}")
        labels.append("\n".join(lines))
    return labels


def _attribute(explainers: dict[str, Any], net: nn.Module, rows: Inputs, targets: Tensor | None,
               groups: list[list[int]], device: torch.device) -> dict[str, Tensor]:
    """Every method on every group of rows; maps come back on the CPU at the image's resolution."""
    size = tuple(rows.images.shape[-2:])
    maps: dict[str, list[Tensor]] = {m: [] for m in explainers}
    total = len(explainers) * len(rows)  # a bar on a terminal for long runs; none in logs and pipes
    with tqdm(total=total, desc="ganlab explain", unit="map", disable=None if total >= 50 else True,
              leave=False) as bar:
        for name, explainer in explainers.items():
            for group in groups:
                _bind(net, rows, group, device)
                target = None if targets is None else targets[group].to(device)
                m = explainer.attribute(rows.images[group].to(device), target=target).detach().float().cpu()
                if tuple(m.shape[-2:]) != size:  # the methods promise image-sized maps; be safe for new ones
                    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                maps[name].append(m)
                bar.update(len(group))
    _bind(net, rows, None, device)
    return {name: torch.cat(ms) for name, ms in maps.items()}


def _label_region(run_cfg: DictConfig, size: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The box that decides the label, when the run's datamodule declares one (``LabelRegion``: PCam's centre
    32x32) and the images are square; None otherwise. The target was checked when the run config was read."""
    from hydra.utils import get_class

    from ganlab.data.loaders import LabelRegion

    target = run_cfg.data.get("_target_")
    if not target or size[0] != size[1]:
        return None
    data_class = get_class(str(target))
    return data_class.label_region(int(size[0])) if isinstance(data_class, LabelRegion) else None


def explain(cfg: DictConfig) -> Path:
    check_values(cfg, "explain")
    methods = _methods(cfg)
    ref = resolve_run(cfg.run, cfg.paths.log_dir)
    device = resolve_device(cfg.device)
    model, run_cfg = load_model(ref, device)
    net = _subject(cfg, model, run_cfg, ref.run_dir)
    methods, skipped = _applicable(cfg, methods, net)
    explainers = _build(cfg, methods, net)
    rows, targets, scores = _rows(cfg, _inputs(cfg, run_cfg, model, net, device), net, device)
    groups = _groups(net, rows)
    maps = _attribute(explainers, net, rows, targets, groups, device)
    evaluation = None
    if cfg.evaluate:
        box = _label_region(run_cfg, tuple(rows.images.shape[-2:]))
        evaluation = evaluate_methods(cfg, explainers, net, rows, targets, maps, groups,
                                      lambda group: _bind(net, rows, group, device), box, device)
        _bind(net, rows, None, device)
    cascade = None
    if cfg.sanity == "cascade":  # Adebayo et al.'s per-layer test, with or without evaluate=true
        cascade = cascade_methods(cfg, explainers, net, rows, targets, groups,
                                  lambda group: _bind(net, rows, group, device), device)
        _bind(net, rows, None, device)

    # Everything is computed: only now create the output dir (a failed call leaves no half-written one).
    from ganlab.explain.figures import method_figure, panel_figure, save_figure  # deferred: matplotlib is slow
    out_dir = new_output_dir(Path(cfg.output) if cfg.output else ref.run_dir / "explain")
    row_labels = _row_labels(rows, targets, scores, predicted=cfg.targets is None)
    save_figure(panel_figure(rows.images, maps, row_labels), str(out_dir / "panel.png"))
    if len(maps) == 1:  # one method: also its map with a colour bar, so values can be read off
        (name, m), = maps.items()
        save_figure(method_figure(name, rows.images, m, row_labels), str(out_dir / f"{name}.png"))
    if cascade:
        write_cascade(out_dir, rows.images, cascade)
    torch.save({"maps": maps, "inputs": rows.images, "targets": targets, "indices": torch.tensor(rows.indices),
                "labels": rows.labels, "scores": scores, "paths": rows.paths}, out_dir / "maps.pt")
    write_yaml_atomic(out_dir / "explain.yaml", OmegaConf.create({
        "run": str(ref.run_dir), "checkpoint": str(ref.checkpoint), "target": cfg.target,
        "source": "images" if rows.paths else cfg.source, "methods": methods, "skipped": skipped,
        "split": cfg.split if cfg.source == "data" and not rows.paths else None,
        "indices": rows.indices, "paths": rows.paths, "targets": None if targets is None else targets.tolist(),
        "labels": None if rows.labels is None else rows.labels.tolist(),
        "score": "D logit" if targets is None else "p(target)", "scores": [round(float(s), 6) for s in scores],
        "options": {m: OmegaConf.to_container(cfg.explainers[m], resolve=True) for m in methods},
        "smooth": int(cfg.smooth), "smooth_sigma": float(cfg.smooth_sigma),
        "evaluation": evaluation, "cascade": cascade_summary(cascade) if cascade else None,
    }))
    if evaluation:
        print_table(evaluation)
    if cascade:
        print_cascade(cascade)
    print(f"ganlab explain: wrote {out_dir} ({len(rows)} rows x {len(methods)} methods: {', '.join(methods)})")
    return out_dir

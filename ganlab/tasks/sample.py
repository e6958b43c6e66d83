"""`ganlab sample`: draw from a trained generator into <run>/samples/<timestamp>/.

For GANs it writes the raw tensor (`samples.pt`, values in [-1, 1] for images) and a picture: an image
grid, a 1-D histogram, a 2-D scatter over the target's mode centres, or a latent interpolation strip with
`interpolate=true`. Image-to-image runs (a model with `translate`) go to `sample_volumes`: `input=` NIfTI
volumes in, synthetic volumes out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ganlab.callbacks.sample_logger import snapshots_of_state
from ganlab.config_checks import check_values
from ganlab.errors import GanlabError, first_line
from ganlab.files import removed_on_failure, torch_save_atomic
from ganlab.metrics.modes import mode_coverage
from ganlab.plots import (density_figure, interpolation_figure, save_figure, save_grid_png, scatter_figure,
                          snapshot_strip_figure)
from ganlab.runs import (RunRef, load_checkpoint, load_model, new_output_dir, resolve_device, resolve_run,
                         write_yaml_atomic)
from ganlab.tasks.sample_truncation import check_thresholds, latents, write_strip


def slerp(z0: Tensor, z1: Tensor, steps: int) -> Tensor:
    """Spherical interpolation (White 2016): stays on the shell where Gaussian latents live.

    (rows, dim) x2 -> (rows, steps, dim). Falls back to linear when the two vectors are parallel.
    """
    t = torch.linspace(0, 1, steps, device=z0.device).view(1, steps, 1)
    a, b = z0.unsqueeze(1), z1.unsqueeze(1)
    cos = torch.nn.functional.cosine_similarity(z0, z1, dim=1).clamp(-1, 1).view(-1, 1, 1)
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    linear = (1 - t) * a + t * b
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / so.clamp_min(1e-8)
    return torch.where(so.abs() < 1e-6, linear, spherical)


def _run_data(run_cfg: DictConfig, run_dir: Path) -> Any:
    """The run's rebuilt datamodule, whose target facts (held-out `val_set`, mode `centers` and `std`) are
    drawn under G's samples. A part of a loaded run that fails to build stops the command: carrying on
    without it would hide a damaged or planted config.yaml."""
    try:
        return instantiate(run_cfg.data)
    except GanlabError:
        raise
    except Exception as err:
        raise GanlabError(f"{run_dir / 'config.yaml'}: cannot rebuild the run's data section "
                          f"{run_cfg.data.get('_target_')} ({first_line(err)})") from None


def _scatter_title(x: Tensor, data: Any | None) -> str:
    """The scatter's title: the sample count, plus PacGAN's mode count when the run's mixture is known."""
    centers, std = getattr(data, "centers", None), getattr(data, "std", None)
    if centers is None or std is None:
        return f"{len(x)} samples"
    coverage = mode_coverage(x, centers, std)
    return (f"{len(x)} samples: {coverage.modes_captured}/{len(centers)} modes, "
            f"{100 * coverage.high_quality:.1f}% high quality")


def _training_snapshots(checkpoint: Path) -> list[tuple[int, Tensor]]:
    """G's 2-D points over training, as GeneratedSamplesLogger kept them in the checkpoint ([] if none)."""
    for state in load_checkpoint(checkpoint).get("callbacks", {}).values():
        if isinstance(state, dict) and "snapshot_steps" in state:
            return snapshots_of_state(state)
    return []


def _labels(cfg: DictConfig, model: Any) -> Tensor | None:
    """Class labels for a conditional run (`labels=` or every class); None for an unconditional one."""
    classes = getattr(model, "num_classes", 0)
    if not classes:
        if cfg.labels is not None:
            raise GanlabError(f"labels={cfg.labels}: this run's GAN is unconditional; drop labels=")
        return None
    wanted = list(range(classes)) if cfg.labels is None else (
        [cfg.labels] if isinstance(cfg.labels, int) else list(cfg.labels))
    if not wanted or any(not isinstance(c, int) or not 0 <= c < classes for c in wanted):
        raise GanlabError(f"labels={cfg.labels}: expected class indices in 0..{classes - 1}")
    return torch.tensor(wanted)


def sample(cfg: DictConfig) -> Path:
    check_values(cfg, "sample")
    if cfg.output and Path(str(cfg.output)).exists() and not Path(str(cfg.output)).is_dir():
        raise GanlabError(f"output={cfg.output}: is a file; expected a folder (made if missing) to hold the new "
                          "sample dir")
    ref = resolve_run(cfg.run, cfg.paths.log_dir)
    device = resolve_device(cfg.device)
    model, run_cfg = load_model(ref, device)
    target = run_cfg.model.get("_target_")
    if hasattr(model, "translate"):  # image-to-image (pix2pix, CycleGAN): whole NIfTI volumes in and out
        if not cfg.get("input"):
            raise GanlabError(f"{ref.run_dir}: an image-to-image run ({target}) translates volumes; "
                              "give input=<mr.nii.gz | folder of volumes | SynthRAD folder>")
        from ganlab.tasks.sample_volumes import sample_volumes  # deferred: the NIfTI/metrics stack is needed only here

        return sample_volumes(cfg, ref, model, run_cfg, device)
    if cfg.get("input"):
        raise GanlabError(f"input={cfg.input}: only image-to-image runs (pix2pix, CycleGAN) translate volumes; "
                          f"this run's model is {target}; drop input=")
    if not hasattr(model, "generate"):
        raise GanlabError(f"{ref.run_dir}: not a GAN run (its model is {run_cfg.model.get('_target_')}); "
                          "ganlab sample needs a run with a generator")
    labels = _labels(cfg, model)
    if cfg.get("truncation") is not None:
        check_thresholds(cfg.truncation, cfg.get("truncation_strip"))
    out_dir = new_output_dir(Path(cfg.output) if cfg.output else ref.run_dir / "samples")
    with removed_on_failure(out_dir):  # a failed sample leaves no partial output dir
        return _write_samples(cfg, ref, model, run_cfg, labels, device, out_dir)


def _write_samples(cfg: DictConfig, ref: RunRef, model: Any, run_cfg: DictConfig, labels: Tensor | None,
                   device: torch.device, out_dir: Path) -> Path:
    """Draw and write samples.pt (or interpolation.pt), the picture and sample.yaml into the new `out_dir`;
    each file goes through a temp name, sample.yaml last."""
    rng = torch.Generator(device=device).manual_seed(int(cfg.seed))
    shape = tuple(model.sample_shape)
    collapse_strip = None
    truncation = cfg.get("truncation")  # the truncation trick (sample_truncation.py); None: plain z

    if cfg.interpolate:
        # Conditional runs: one strip per label, the label held fixed along it.
        rows = cfg.rows if labels is None else len(labels)
        z0, z1 = latents(model, rows, rng, truncation), latents(model, rows, rng, truncation)
        z = slerp(z0, z1, cfg.steps).reshape(rows * cfg.steps, -1)
        y = None if labels is None else labels.repeat_interleave(cfg.steps)
        x = model.generate(z, y).cpu()
        saved = {"z": z.cpu(), "samples": x.view(rows, cfg.steps, *shape)}
        if y is not None:
            saved["labels"] = y.view(rows, cfg.steps)
        torch_save_atomic(saved, out_dir / "interpolation.pt")
        picture = "interpolation.png"
        if len(shape) == 3:
            save_grid_png(x, out_dir / picture, nrow=cfg.steps)
        elif shape == (1,):
            save_figure(interpolation_figure(x.view(rows, cfg.steps)), out_dir / picture)
        else:
            picture = None
    else:
        # Conditional runs: n samples per label, one grid row per label.
        y = None if labels is None else labels.repeat_interleave(cfg.n)
        z = latents(model, cfg.n if y is None else len(y), rng, truncation)
        x = model.generate(z, y).cpu()
        torch_save_atomic({"z": z.cpu(), "samples": x} | ({} if y is None else {"labels": y}), out_dir / "samples.pt")
        if len(shape) == 3:
            picture = "grid.png"
            save_grid_png(x, out_dir / picture, nrow=cfg.nrow if y is None else cfg.n)
        elif shape == (1,):
            picture = "histogram.png"
            title = f"generated mean {x.mean():.3f}, std {x.std():.3f} (n={cfg.n})"
            target = getattr(_run_data(run_cfg, ref.run_dir), "val_set", None)
            save_figure(density_figure(x, target, title=title), out_dir / picture)
        elif shape == (2,):
            picture = "scatter.png"
            data = _run_data(run_cfg, ref.run_dir)
            figure = scatter_figure(x, getattr(data, "centers", None), title=_scatter_title(x, data))
            save_figure(figure, out_dir / picture)
            snapshots = _training_snapshots(ref.checkpoint)
            if snapshots:  # G's points over training, as TensorBoard's samples/collapse_strip shows them
                collapse_strip = "collapse_strip.png"
                save_figure(snapshot_strip_figure(snapshots, getattr(data, "centers", None)), out_dir / collapse_strip)
        else:
            picture = None
    strip = None
    if truncation is not None:
        thresholds = check_thresholds(truncation, cfg.get("truncation_strip"))
        columns = cfg.n if len(shape) != 3 else cfg.nrow or (8 if labels is None else len(labels))
        strip = write_strip(model, labels, thresholds, columns, int(cfg.seed), device, out_dir)
    write_yaml_atomic(out_dir / "sample.yaml", OmegaConf.create({
        "run": str(ref.run_dir), "checkpoint": str(ref.checkpoint), "n": cfg.n, "seed": cfg.seed,
        "interpolate": cfg.interpolate, "picture": picture,
        "labels": None if labels is None else labels.tolist(),
        "truncation": truncation, **({"truncation_strip": strip} if strip else {}),
        **({"collapse_strip": collapse_strip} if collapse_strip else {}),
    }))
    shown = ", ".join(p for p in (picture, strip, collapse_strip) if p)
    print(f"ganlab sample: wrote {out_dir}" + (f" ({shown})" if shown else ""))
    return out_dir

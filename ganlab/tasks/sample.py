"""`ganlab sample`: draw from a trained generator into <run>/samples/<timestamp>/.

Writes the raw tensor (`samples.pt`, values in [-1, 1] for images) and a picture: an image grid, a 1-D
histogram, or a latent interpolation strip with `interpolate=true`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ganlab.errors import GanlabError
from ganlab.plots import density_figure, interpolation_figure, save_figure, save_grid_png
from ganlab.runs import load_model, new_output_dir, resolve_run, write_yaml_atomic


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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GanlabError(f"device={name}: CUDA is not available on this machine; use device=cpu")
    return torch.device(name)


def _held_out_target(run_cfg: DictConfig) -> Tensor | None:
    """The run's held-out 1-D target samples, to draw under the generated histogram (None for images)."""
    try:
        return getattr(instantiate(run_cfg.data), "val_set", None)
    except Exception:
        return None


def sample(cfg: DictConfig) -> Path:
    if cfg.n < 1 or cfg.steps < 2 or cfg.rows < 1:
        raise GanlabError(f"need n >= 1, steps >= 2, rows >= 1; got n={cfg.n}, steps={cfg.steps}, rows={cfg.rows}")
    ref = resolve_run(cfg.run, cfg.paths.log_dir)
    device = _device(cfg.device)
    model, run_cfg = load_model(ref, device)
    out_dir = new_output_dir(Path(cfg.output) if cfg.output else ref.run_dir / "samples")
    rng = torch.Generator(device=device).manual_seed(int(cfg.seed))
    shape = tuple(model.sample_shape)

    if cfg.interpolate:
        z0, z1 = model.sample_z(cfg.rows, generator=rng), model.sample_z(cfg.rows, generator=rng)
        z = slerp(z0, z1, cfg.steps).reshape(cfg.rows * cfg.steps, -1)
        x = model.generate(z).cpu()
        torch.save({"z": z.cpu(), "samples": x.view(cfg.rows, cfg.steps, *shape)}, out_dir / "interpolation.pt")
        picture = "interpolation.png"
        if len(shape) == 3:
            save_grid_png(x, out_dir / picture, nrow=cfg.steps)
        elif shape == (1,):
            save_figure(interpolation_figure(x.view(cfg.rows, cfg.steps)), out_dir / picture)
        else:
            picture = None
    else:
        z = model.sample_z(cfg.n, generator=rng)
        x = model.generate(z).cpu()
        torch.save({"z": z.cpu(), "samples": x}, out_dir / "samples.pt")
        if len(shape) == 3:
            picture = "grid.png"
            save_grid_png(x, out_dir / picture, nrow=cfg.nrow)
        elif shape == (1,):
            picture = "histogram.png"
            title = f"generated mean {x.mean():.3f}, std {x.std():.3f} (n={cfg.n})"
            save_figure(density_figure(x, _held_out_target(run_cfg), title=title), out_dir / picture)
        else:
            picture = None
    write_yaml_atomic(out_dir / "sample.yaml", OmegaConf.create({
        "run": str(ref.run_dir), "checkpoint": str(ref.checkpoint), "n": cfg.n, "seed": cfg.seed,
        "interpolate": cfg.interpolate, "picture": picture,
    }))
    print(f"ganlab sample: wrote {out_dir}" + (f" ({picture})" if picture else ""))
    return out_dir

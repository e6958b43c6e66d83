"""Train the reference MNIST feature network shipped as ganlab/metrics/weights/mnist_classifier.pt.

It is `ganlab train +experiment=classifier_mnist` itself (the architecture of configs/model/classifier.yaml,
read from the run's composed config, never repeated here), run through the CLI in a scratch folder on the
embedded digits' training split only (data.root=null, data.train_range=[0,1]; the held-out t10k split is
only validated on), with a fixed seed and the last weights (no checkpoint chosen by held-out accuracy).
The net's state_dict is then written with its constructor kwargs, input size, training steps, seed and
held-out accuracy: float16 when every reference FID stays within 1% of float32's (checked here), else
float32. `ganlab.feature_nets` loads it with weights_only=True (`feature_net=mnist`).

It also prints the reference rows of benchmarks/feature_net_mnist.md, computed with the written file:
real vs real (held-out vs training digits, two halves of the held-out digits) and uniform noise.

Usage (from the repo root, in the venv; a few minutes on one core):
    OMP_NUM_THREADS=1 python scripts/train_feature_net.py [--out ganlab/metrics/weights/mnist_classifier.pt]
    python scripts/train_feature_net.py --evaluate-only      # the reference rows of the shipped file
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from ganlab.data.mnist import MNISTDataModule
from ganlab.feature_nets import NET_KWARGS, load_weights_file, packaged_weights, read_weights_file
from ganlab.metrics.image_quality import ClassifierFeatures, ImageQuality
from ganlab.runs import load_model, read_manifest, resolve_run

GANLAB = shutil.which("ganlab") or str(Path(sys.executable).parent / "ganlab")
NET_TARGET = "ganlab.nets.classifier.CNNClassifier"
FID_TOLERANCE = 0.01  # float16 is kept only if every reference FID is within 1% of float32's
N = 500  # images per set of a reference row


def train(work: Path, seed: int, extra: list[str]) -> tuple[Path, float, list[str]]:
    command = [GANLAB, "train", "+experiment=classifier_mnist", f"seed={seed}", "data.root=null",
               "data.train_range=[0.0,1.0]", "trainer.accelerator=cpu", "name=feature_net_mnist", "logger=none",
               "trainer.enable_progress_bar=false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "GANLAB_ROOT": str(work)}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{proc.stderr[-3000:]}")
    run_dir = Path(proc.stdout.strip().splitlines()[-1].rsplit("run dir: ", 1)[1])
    return run_dir, seconds, ["ganlab", *command[1:]]


def net_of_run(run_dir: Path) -> tuple[nn.Module, dict]:
    model, cfg = load_model(resolve_run(run_dir, run_dir.parent))
    node = OmegaConf.to_container(cfg.model.net, resolve=True)
    if node.pop("_target_") != NET_TARGET or set(node) - set(NET_KWARGS):
        sys.exit(f"{run_dir}: expected a {NET_TARGET} with arguments among {NET_KWARGS}, got {node}")
    return model.net.eval(), node


def digits(cache_dir: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """The embedded splits as (images in [-1, 1], labels)."""
    data = MNISTDataModule(root=None, cache_dir=str(cache_dir))
    data.setup()
    return {split: (ds.images.float() / 127.5 - 1.0, ds.labels) for split, ds in data.datasets.items()}


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor) -> float:
    predictions = torch.cat([net(batch).argmax(1) for batch in images.split(250)])
    return (predictions == labels).double().mean().item()


def rounded_to_half(net: nn.Module) -> nn.Module:
    """A copy of `net` whose float weights went through float16 and back (what the shipped file holds)."""
    import copy

    half = copy.deepcopy(net)
    half.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in net.state_dict().items()})
    return half.eval()


def reference_sets(splits: dict[str, tuple[Tensor, Tensor]]) -> list[tuple[str, Tensor, Tensor, Tensor | None]]:
    """(row name, real images, "generated" images, the latter's labels or None)."""
    held_x, held_y = splits["val"]
    train_x, train_y = splits["train"]
    noise = torch.rand(N, *held_x.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = nn.functional.avg_pool2d(train_x[:N], 3, stride=1, padding=1, count_include_pad=False)
    return [
        (f"{N} held-out vs {N} training digits", held_x[:N], train_x[:N], train_y[:N]),
        (f"{N // 2} held-out vs the other {N // 2} held-out digits", held_x[: N // 2], held_x[N // 2: N],
         held_y[N // 2: N]),
        (f"{N} held-out vs {N} training digits blurred (3x3 box)", held_x[:N], blurred, train_y[:N]),
        (f"{N} held-out digits vs {N} images of uniform noise in [-1, 1]", held_x[:N], noise, None),
    ]


def quality(features: ClassifierFeatures, real: Tensor, fake: Tensor, labels: Tensor | None) -> dict[str, float]:
    metrics = ImageQuality(features, num_classes=features.net.num_classes)
    for batch in real.split(250):
        metrics.update(batch, real=True)
    for i, batch in enumerate(fake.split(250)):
        metrics.update(batch, real=False, labels=None if labels is None else labels[i * 250:(i + 1) * 250])
    return metrics.compute()


def table(features: ClassifierFeatures, rows) -> list[str]:
    lines = ["| real set vs \"generated\" set | FID | KID | precision | recall | cond. acc. | s |",
             "|---|---|---|---|---|---|---|"]
    for name, real, fake, labels in rows:
        start = time.perf_counter()
        m = quality(features, real, fake, labels)
        seconds = time.perf_counter() - start
        cond = f"{m['cond_acc']:.3f}" if "cond_acc" in m else "-"
        lines.append(f"| {name} | {m['fid']:.4g} | {m['kid']:.4g} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"{cond} | {seconds:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=packaged_weights("mnist"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("auto", "float16", "float32"), default="auto",
                        help="auto: float16 if every reference FID stays within 1%% of float32's")
    parser.add_argument("--work-dir", type=Path, help="keep the classifier run and the data cache here")
    parser.add_argument("--evaluate-only", action="store_true", help="only print the reference rows of --out")
    parser.add_argument("overrides", nargs="*", help="extra `ganlab train` overrides (changes the recipe!)")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="feature_net_"))
    work.mkdir(parents=True, exist_ok=True)
    splits = digits(work / "data")
    rows = reference_sets(splits)
    held_x, held_y = splits["val"]

    if not args.evaluate_only:
        run_dir, seconds, command = train(work, args.seed, args.overrides)
        net, kwargs = net_of_run(run_dir)
        manifest = read_manifest(run_dir)
        acc32 = accuracy(net, held_x, held_y)
        half = rounded_to_half(net)
        acc16 = accuracy(half, held_x, held_y)
        print(f"trained in {seconds:.0f} s ({manifest['global_step']} steps): held-out accuracy float32 {acc32:.4f}, "
              f"float16 weights {acc16:.4f}; run.yaml val/acc {manifest['metrics'].get('val/acc')}")
        image_size = int(OmegaConf.load(run_dir / "config.yaml").data.image_size)
        worst = 0.0
        print("\nFID with float32 vs float16-rounded weights:")
        for name, real, fake, labels in rows:
            f32 = quality(ClassifierFeatures(net, image_size), real, fake, labels)["fid"]
            f16 = quality(ClassifierFeatures(half, image_size), real, fake, labels)["fid"]
            worst = max(worst, abs(f16 - f32) / abs(f32))
            print(f"  {name}: {f32:.6g} vs {f16:.6g} ({100 * (f16 - f32) / f32:+.4f}%)")
        use_half = args.dtype == "float16" or (args.dtype == "auto" and worst <= FID_TOLERANCE)
        print(f"largest relative FID change {100 * worst:.4f}%: storing {'float16' if use_half else 'float32'}")
        state = {k: (v.half() if use_half and v.is_floating_point() else v).clone()
                 for k, v in net.state_dict().items()}
        record = {
            "state_dict": state,
            "net_target": NET_TARGET,
            "net_kwargs": kwargs,
            "image_size": image_size,
            "dtype": "float16" if use_half else "float32",
            "seed": args.seed,
            "training_steps": int(manifest["global_step"]),
            "training_digits": int(len(splits["train"][1])),
            "held_out_digits": int(len(held_y)),
            "held_out_accuracy": acc16 if use_half else acc32,
            "max_fid_change_float16": worst,
            "command": " ".join(command),
            "trained": dt.date.today().isoformat(),
            "torch": str(torch.__version__),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        torch.save(record, tmp)
        os.replace(tmp, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")

    saved = read_weights_file(args.out)
    features = load_weights_file(args.out)
    check = accuracy(features.net, held_x, held_y)
    info = {k: v for k, v in saved.items() if k != "state_dict"}
    print(f"\n{args.out}: {info}\nreloaded (weights_only=True): held-out accuracy {check:.4f} "
          f"(recorded {saved['held_out_accuracy']:.4f})")
    print(f"\nReference rows, in the features of {args.out}:\n")
    print("\n".join(table(features, rows)))


if __name__ == "__main__":
    main()

"""Images per second: ganlab's PCam reader vs torchvision.datasets.PCAM over the same official-format files.

    OMP_NUM_THREADS=1 python scripts/bench_pcam_loader.py            # 8192 generated patches, ~1-2 min

Both go through a shuffled DataLoader (batch 256) and yield float tensors (torchvision: ToTensor in [0, 1];
ganlab: [-1, 1]). The files are freshly written, so they sit in the page cache: this measures the reading
and decoding overhead of each loader, not the disk. The first batch (worker start-up) is not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import PCAM
from torchvision.transforms import ToTensor

from ganlab.data.pcam import PCamDataset
from ganlab.data.pcam_fixture import file_names, make_split, write_split


def images_per_second(dataset: torch.utils.data.Dataset, workers: int, batch_size: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    next(iterator)  # start-up, not timed
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        batch = next(iterator)
        seen += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192, help="training patches in the generated files")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per row (ganlab)")
    parser.add_argument("--torchvision-batches", type=int, default=4, help="timed batches per row (torchvision)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    images, labels = make_split(args.n, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for storage in ("contiguous", "chunked"):
            root = Path(tmp) / storage
            (root / "pcam").mkdir(parents=True)
            write_split(root / "pcam", "train", images, labels, storage)
            ours = PCamDataset(*(root / "pcam" / name for name in file_names("train")))
            reference = PCAM(str(root), split="train", transform=ToTensor())
            for workers in args.workers:
                fast = images_per_second(ours, workers, args.batch_size, args.batches)
                slow = images_per_second(reference, workers, args.batch_size, args.torchvision_batches)
                rows.append((storage, workers, fast, slow))
                print(f"{storage:10s} workers={workers}: ganlab {fast:8.0f} img/s, torchvision {slow:8.0f} img/s",
                      flush=True)
    print(f"\n| storage | num_workers | ganlab PCamDataset (img/s) | torchvision PCAM (img/s) | speed-up |")
    print("|---|---|---|---|---|")
    for storage, workers, fast, slow in rows:
        print(f"| {storage} | {workers} | {fast:,.0f} | {slow:,.0f} | {fast / slow:.1f}x |")


if __name__ == "__main__":
    main()

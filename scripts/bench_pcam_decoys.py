"""Does a PCam classifier look where the label is? Its accuracy on stand-in patches with and without
tumour-like decoy nuclei outside the centre 32x32, the same tissue and centre otherwise.

    python scripts/bench_pcam_decoys.py <run dir | latest:classifier_pcam> [--n 512] [--seed 7]

Decoys are drawn at fresh random positions (outside the centre region) for every patch, so "with decoys"
also measures patches whose decoys were moved. A classifier that keys on the centre scores the same on
both sets; one that counts nuclei anywhere loses accuracy on negatives with decoys.
"""

from __future__ import annotations

import argparse

import torch

from ganlab.data.pcam import decode_on_device
from ganlab.data.pcam_fixture import decoy_pairs
from ganlab.runs import load_model, resolve_run


@torch.no_grad()
def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    predicted = torch.cat([net(decode_on_device(chunk, 96)).argmax(1) for chunk in images.split(128)])
    right = predicted == labels
    return {"all": right.float().mean().item(), "positives": right[labels == 1].float().mean().item(),
            "negatives": right[labels == 0].float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=512, help="patches per set (half positive)")
    parser.add_argument("--seed", type=int, default=7, help="not a training or validation seed of the stand-in")
    parser.add_argument("--log-dir", default="outputs")
    args = parser.parse_args()
    model, _ = load_model(resolve_run(args.run, args.log_dir), "cpu")
    clean, decoyed, labels = decoy_pairs(args.n, args.seed)
    labels = torch.from_numpy(labels).long()
    print(f"{args.run}: {args.n} stand-in patches per set (seed {args.seed})\n")
    print("| patches | accuracy | positives | negatives |\n|---|---|---|---|")
    for name, images in (("no decoys", clean), ("decoys outside the centre", decoyed)):
        acc = accuracy(model.net.eval(), torch.from_numpy(images), labels)
        print(f"| {name} | {acc['all']:.3f} | {acc['positives']:.3f} | {acc['negatives']:.3f} |")


if __name__ == "__main__":
    main()

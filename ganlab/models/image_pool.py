"""The image history buffer of Shrivastava et al. (2017), as CycleGAN uses it for its discriminators.

D is updated on a mix of the newest fakes and fakes from earlier generators, so it does not chase the
latest G only (less oscillation). Until `size` fakes are stored each new fake is stored and returned;
after that each new fake, with probability 1/2, replaces a random stored one and the stored one is
returned instead, else it is returned as is. size=0 turns the pool off.

The stored images are part of the training state: `state_dict()` / `load_state_dict()` carry them (and
the pool's RNG) through a checkpoint, so a resumed run continues with the same history.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ImagePool:
    def __init__(self, size: int = 50, seed: int | None = None) -> None:
        if size < 0:
            raise ValueError(f"image pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[Tensor] = []
        # The pool's own CPU RNG: its draws never depend on (or disturb) the global or CUDA streams.
        self.rng = torch.Generator()
        self.rng.manual_seed(int(torch.randint(2**62, (1,))) if seed is None else seed)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, fakes: Tensor) -> Tensor:
        """(N, ...) new fakes -> (N, ...) images for D, each either the new fake or one from the history."""
        if self.size == 0:
            return fakes.detach()
        out = []
        for fake in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(fake.clone())
                out.append(fake)
            elif torch.rand((), generator=self.rng) < 0.5:
                i = int(torch.randint(self.size, (), generator=self.rng))
                out.append(self.images[i].to(fake.device))  # (a resumed pool may still sit on the CPU)
                self.images[i] = fake.clone()
            else:
                out.append(fake)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Tensor]:
        images = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"images": images, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Tensor], device: torch.device | str = "cpu") -> None:
        images = state["images"]
        if len(images) > self.size:
            raise ValueError(f"image pool state holds {len(images)} images, more than its size {self.size}")
        self.images = [img.to(device) for img in images]
        self.rng.set_state(state["rng"])

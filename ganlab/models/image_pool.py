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

from ganlab.errors import GanlabError


class ImagePool:
    def __init__(self, size: int = 50, seed: int | None = None) -> None:
        if size < 0:
            raise GanlabError(f"image pool size must be >= 0, got {size}")
        self.size = size
        self.buffer: Tensor | None = None  # (size, ...) on the fakes' device, the first `count` rows in use
        self.count = 0
        # The pool's own CPU RNG: its draws never depend on (or disturb) the global or CUDA streams.
        self.rng = torch.Generator()
        self.rng.manual_seed(int(torch.randint(2**62, (1,))) if seed is None else seed)

    def __len__(self) -> int:
        return self.count

    @property
    def images(self) -> Tensor:
        """(len(self), ...) the stored images."""
        return self.buffer[:self.count] if self.buffer is not None else torch.empty(0)

    def _plan(self, n: int) -> tuple[int, list[tuple[int, int]], dict[int, int]]:
        """The per-image draws of the algorithm above, on host ints only: how many new fakes fill free slots,
        which outputs come from which stored slot, and which new fake each slot holds afterwards.
        Images are decided one after another (a slot replaced earlier in the batch hands out that new fake)."""
        from_slot, holds = [], {}  # holds: slot -> index of the new fake now in it
        count = self.count
        for j in range(n):
            if count < self.size:
                holds[count] = j
                count += 1
            elif torch.rand((), generator=self.rng) < 0.5:
                i = int(torch.randint(self.size, (), generator=self.rng))
                from_slot.append((j, i if i not in holds else -1 - holds[i]))  # < 0: a new fake of this batch
                holds[i] = j
        return count - self.count, from_slot, holds

    @torch.no_grad()
    def query(self, fakes: Tensor) -> Tensor:
        """(N, ...) new fakes -> (N, ...) images for D, each either the new fake or one from the history.
        Why not one image at a time: that was ~4 small device ops per image; this is a few indexed copies."""
        fakes = fakes.detach()
        if self.size == 0:
            return fakes
        if self.buffer is None or self.buffer.device != fakes.device:  # first query, or a resumed pool on the CPU
            buffer = fakes.new_empty((self.size, *fakes.shape[1:]))
            if self.count:
                buffer[:self.count] = self.images.to(fakes.device)
            self.buffer = buffer
        filled, from_slot, holds = self._plan(len(fakes))
        out = fakes.clone()
        index = lambda values: torch.tensor(values, device=fakes.device)  # noqa: E731
        old = [(j, i) for j, i in from_slot if i >= 0]
        if old:  # images from the history, read before this batch overwrites their slots
            out[index([j for j, _ in old])] = self.buffer[index([i for _, i in old])]
        new = [(j, -1 - i) for j, i in from_slot if i < 0]
        if new:  # a slot filled earlier in this batch hands out that new fake
            out[index([j for j, _ in new])] = fakes[index([k for _, k in new])]
        if holds:
            self.buffer[index(list(holds))] = fakes[index(list(holds.values()))]
        self.count += filled
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {"images": self.images.cpu().clone(), "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Tensor], device: torch.device | str = "cpu") -> None:
        images = state["images"]
        if len(images) > self.size:
            raise GanlabError(f"image pool state holds {len(images)} images, more than its size {self.size}")
        self.count = len(images)
        self.buffer = None
        if self.count:
            self.buffer = images.new_empty((self.size, *images.shape[1:]), device=device)
            self.buffer[:self.count] = images.to(device)
        self.rng.set_state(state["rng"])

"""ProGAN's growth schedule as a pure function of the number of real images shown to D so far.

Phases (Karras et al. 2018, section 3): train at 4x4 for ``stabilize_images``; then for every doubling up to
``max_resolution``, fade the new blocks in over ``fade_images`` (alpha rises linearly from 0 to 1) and
stabilise for ``stabilize_images`` (alpha = 1). After the last stabilise phase training stays at the full
resolution. Counting images rather than steps makes the schedule independent of the batch size, which
changes with the resolution (``batch_sizes[i]`` for resolution 4 * 2**i; entries past the last are unused).
Because the trainer derives the stage from the saved image counter alone, a resumed run is at exactly the
resolution and alpha where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ganlab.errors import GanlabError
from ganlab.nets.progan import resolutions_up_to


@dataclass(frozen=True)
class Stage:
    """Where training is: ``resolution``, fade ``alpha`` (1 outside fades), ``phase`` ('stabilize' or 'fade'),
    ``index`` (0 = 4x4 stabilise, 1 = 8x8 fade, 2 = 8x8 stabilise, ...) and the image count it started at."""

    resolution: int
    alpha: float
    phase: str
    index: int
    start: int


@dataclass(frozen=True)
class GrowthSchedule:
    max_resolution: int
    stabilize_images: int
    fade_images: int
    batch_sizes: Sequence[int]

    def __post_init__(self) -> None:
        sizes = resolutions_up_to(self.max_resolution)
        if self.stabilize_images < 1 or self.fade_images < 1:
            raise GanlabError(f"model.stabilize_images={self.stabilize_images}, model.fade_images="
                              f"{self.fade_images}: both phase lengths must be >= 1 image")
        given = list(self.batch_sizes)
        if len(given) < len(sizes) or any(not isinstance(b, int) or b < 1 for b in given[:len(sizes)]):
            raise GanlabError(f"model.batch_sizes={given}: expected a positive batch size for each resolution "
                              f"{sizes}, in that order ({len(sizes)} values)")

    @property
    def resolutions(self) -> list[int]:
        return resolutions_up_to(self.max_resolution)

    @property
    def largest_batch(self) -> int:
        return max(self.batch_sizes[:len(self.resolutions)])

    def batch_size(self, resolution: int) -> int:
        return self.batch_sizes[self.resolutions.index(resolution)]

    @property
    def growth_images(self) -> int:
        """Images until the last stabilise phase ends (after that: full resolution, alpha 1)."""
        return self.stabilize_images + (len(self.resolutions) - 1) * (self.fade_images + self.stabilize_images)

    def stage(self, images: int) -> Stage:
        """The stage after ``images`` real images: pure arithmetic on the counter."""
        if images < 0:
            raise ValueError(f"image counter must be >= 0, got {images}")
        sizes = self.resolutions
        if images < self.stabilize_images:
            return Stage(sizes[0], 1.0, "stabilize", 0, 0)
        cycle = self.fade_images + self.stabilize_images  # one fade + stabilise per doubling
        grown, into = divmod(images - self.stabilize_images, cycle)
        if grown >= len(sizes) - 1:  # fully grown: the last stabilise phase never ends
            last = self.stabilize_images + (len(sizes) - 2) * cycle + self.fade_images
            return Stage(sizes[-1], 1.0, "stabilize", 2 * (len(sizes) - 1), last)
        start = self.stabilize_images + grown * cycle
        if into < self.fade_images:
            return Stage(sizes[grown + 1], into / self.fade_images, "fade", 2 * grown + 1, start)
        return Stage(sizes[grown + 1], 1.0, "stabilize", 2 * grown + 2, start + self.fade_images)

    def growth_iterations(self) -> int:
        """D+G iterations until fully grown, each showing one batch of the current stage's size
        (twice that many optimizer steps for ``trainer.max_steps``)."""
        images, iterations = 0, 0
        while images < self.growth_images:
            stage = self.stage(images)
            end = min(self.growth_images, stage.start + (self.fade_images if stage.phase == "fade"
                                                         else self.stabilize_images))
            batch = self.batch_size(stage.resolution)
            n = math.ceil((end - images) / batch)
            images, iterations = images + n * batch, iterations + n
        return iterations

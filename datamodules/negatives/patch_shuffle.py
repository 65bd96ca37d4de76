"""I'_S: the image cut into an N×N grid whose cells are permuted (never the identity permutation)."""

from __future__ import annotations

import random

from PIL import Image

from datamodules.negatives.base import NegativeGenerator
from datamodules.records import Negative, Record


def random_derangement_free_perm(n: int, rng: random.Random) -> list[int]:
    """A uniformly random permutation of range(n) other than the identity (n >= 2)."""
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if perm != list(range(n)):
            return perm


def patch_shuffle(image: Image.Image, grid: int, rng: random.Random) -> tuple[Image.Image, list[int]]:
    w, h = image.size
    cw, ch = w // grid, h // grid
    if cw == 0 or ch == 0:
        raise ValueError(f"image {w}x{h} is smaller than a {grid}x{grid} grid")
    cells = [
        image.crop((c * cw, r * ch, (c + 1) * cw, (r + 1) * ch)) for r in range(grid) for c in range(grid)
    ]
    perm = random_derangement_free_perm(grid * grid, rng)
    out = image.copy()  # keeps the border strip of sizes not divisible by the grid
    for dst, src in enumerate(perm):
        r, c = divmod(dst, grid)
        out.paste(cells[src], (c * cw, r * ch))
    return out, perm


class PatchShuffle(NegativeGenerator):
    """Args: grid: N of the N×N grid (>= 2); num_per_image: negatives per image."""

    name = "patch_shuffle"
    version = "1"

    def __init__(self, grid: int = 2, num_per_image: int = 1) -> None:
        super().__init__()
        if grid < 2 or num_per_image < 1:
            raise ValueError(
                f"patch_shuffle: need grid >= 2 and num_per_image >= 1, got {grid}, {num_per_image}"
            )
        self.grid = grid
        self.num_per_image = num_per_image

    def generate(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]:
        out: list[Negative] = []
        original = image.tobytes()
        for _ in range(self.num_per_image):
            # A non-identity permutation of identical cells (e.g. empty background) can still reproduce the
            # positive pixel for pixel: retry, and mask the slot if the image has no distinct cells to move.
            for _try in range(10):
                shuffled, _ = patch_shuffle(image, self.grid, rng)
                if shuffled.tobytes() != original:
                    out.append(self.image("structure/patch_shuffle", shuffled))
                    break
            else:
                self.stats["masked"] += 1
        return out

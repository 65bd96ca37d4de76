"""The synthetic world as *raw* data (issue: preprocessing): a share of pairs get another scene's caption
(mismatched), some images lose their caption (lone images) and some captions lose their image (lone texts).
Ground truth stays in `meta` (`noise`, `true_caption`) so the gate and repair can be measured."""

from __future__ import annotations

import random

from datamodules.records import Record
from datamodules.sources.base import Source
from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world.scene import World


class NoisySyntheticSource(Source):
    """Args: world; num_train / num_val / num_test; image_size; mismatch_rate / lone_image_rate / lone_text_rate
    (applied to every split except test, which stays clean for evaluation); seed of the noise."""

    def __init__(
        self,
        world: World | None = None,
        *,
        num_train: int = 20000,
        num_val: int = 1000,
        num_test: int = 1000,
        image_size: int = 48,
        mismatch_rate: float = 0.1,
        lone_image_rate: float = 0.05,
        lone_text_rate: float = 0.05,
        seed: int = 0,
    ) -> None:
        rates = (mismatch_rate, lone_image_rate, lone_text_rate)
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError(f"noisy synthetic: rates must be >= 0 and sum to <= 1, got {rates}")
        self.clean = SyntheticWorldSource(
            world, num_train=num_train, num_val=num_val, num_test=num_test, image_size=image_size
        )
        self.world = self.clean.world
        self.rates, self.seed = rates, seed
        self._cache: dict[str, list[Record]] = {}

    @property
    def vocabulary(self):
        return self.clean.vocabulary

    def leaks(self, text: str) -> bool:
        return self.clean.leaks(text)

    def records(self, split: str) -> list[Record]:
        recs = self.clean.records(split)  # validates the split name
        if split in self._cache:
            return self._cache[split]
        if split == "test":
            return recs
        rng = random.Random(f"noise-{self.seed}-{split}")
        out = []
        mis, lone_img, lone_txt = self.rates
        for i, r in enumerate(recs):
            u = rng.random()
            meta = {**r.meta, "true_caption": r.caption, "noise": "clean"}
            if u < mis and len(recs) > 1:
                j = rng.randrange(len(recs) - 1)
                j += j >= i
                out.append(
                    Record(
                        r.id,
                        r.image,
                        recs[j].caption,
                        "pair",
                        list(r.provenance),
                        meta=meta | {"noise": "mismatched"},
                    )
                )
            elif u < mis + lone_img:
                out.append(
                    Record(
                        r.id,
                        r.image,
                        None,
                        "lone_image",
                        list(r.provenance),
                        meta=meta | {"noise": "lone_image"},
                    )
                )
            elif u < mis + lone_img + lone_txt:
                out.append(
                    Record(
                        r.id,
                        None,
                        r.caption,
                        "lone_text",
                        list(r.provenance),
                        meta=meta | {"noise": "lone_text", "scene": r.image.scene},
                    )
                )
            else:
                out.append(Record(r.id, r.image, r.caption, "pair", list(r.provenance), meta=meta))
        self._cache[split] = out
        return out

    def describe(self) -> dict:
        return {"type": "noisy_synthetic", **self.clean.describe(), "rates": list(self.rates)}

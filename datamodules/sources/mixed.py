"""Several raw sources as one (e.g. a pairs manifest + a folder of lone images + a file of lone texts). Record ids
are prefixed by the source's name so they stay unique; `skipped` counts are merged with the same prefix."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from datamodules.records import Record
from datamodules.sources.base import SPLITS, Source


class MixedSource(Source):
    """Args: sources: {name: source}."""

    def __init__(self, sources: dict[str, Source]) -> None:
        if not sources:
            raise ValueError("raw.sources: at least one source is needed")
        self.sources = dict(sources)

    def records(self, split: str) -> list[Record]:
        out = []
        for name, src in self.sources.items():
            out += [replace(r, id=f"{name}:{r.id}") for r in src.records(split)]
        return out

    @property
    def skipped(self) -> dict[str, Counter]:
        merged = {s: Counter() for s in SPLITS}
        for name, src in self.sources.items():
            for s, c in (getattr(src, "skipped", None) or {}).items():
                for k, v in c.items():
                    merged[s][f"{name}:{k}"] += v
        return merged

    def describe(self) -> dict:
        return {"type": "mixed", "sources": {k: v.describe() for k, v in self.sources.items()}}

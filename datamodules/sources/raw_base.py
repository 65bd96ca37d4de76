"""Shared parts of the raw sources (image folder, text file, COCO captions, webdataset shards): all of their
records belong to one configured split, unreadable entries are skipped and counted per split in `skipped`."""

from __future__ import annotations

from collections import Counter

from datamodules.records import Record
from datamodules.sources.base import SPLITS, Source

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class RawSource(Source):
    def __init__(self, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.skipped: dict[str, Counter] = {s: Counter() for s in SPLITS}
        self._records: list[Record] | None = None

    def records(self, split: str) -> list[Record]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
        if split != self.split:
            return []
        if self._records is None:
            self._records = self._read(self.skipped[split])
        return self._records

    def _read(self, skipped: Counter) -> list[Record]:
        raise NotImplementedError

from __future__ import annotations

from abc import ABC, abstractmethod

from datamodules.records import Record

SPLITS = ("train", "val", "test")


class Source(ABC):
    """A data source yields records per split. Sources validate their inputs at construction (fail fast)."""

    @abstractmethod
    def records(self, split: str) -> list[Record]:
        """Records of `split`; an empty list when the source has no such split."""

    def describe(self) -> dict:
        """Primitive description (logged, and stored beside the run)."""
        return {"type": type(self).__name__}

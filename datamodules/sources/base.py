from __future__ import annotations

from abc import ABC, abstractmethod

from datamodules.records import Record

SPLITS = ("train", "val", "test")


class Source(ABC):
    """A data source yields records per split. Sources validate their inputs at construction (fail fast).

    `prepare()` runs once before the records are read (the DataModule's `prepare_data`, rank 0 of each node): a
    source that must build its data first (the preprocessed manifests) does it there. `reads_preprocessed` marks
    the sources that read preprocessing output, so a raw source selected without one is refused.
    """

    reads_preprocessed: bool = False

    def prepare(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Builds whatever the source needs on disk before `records` (default: nothing)."""

    @abstractmethod
    def records(self, split: str) -> list[Record]:
        """Records of `split`; an empty list when the source has no such split."""

    def describe(self) -> dict:
        """Primitive description, quoted in error messages (e.g. a split with no records)."""
        return {"type": type(self).__name__}

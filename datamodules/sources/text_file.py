"""A text file with one caption a line as raw data: every line is a lone text (to be drawn by text-to-image).
Empty lines and lines that are not valid UTF-8 are skipped and counted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from datamodules.records import Record
from datamodules.sources.raw_base import RawSource


class TextFileSource(RawSource):
    """Args: path; split."""

    def __init__(self, path: str, *, split: str = "train") -> None:
        super().__init__(split)
        if not Path(path).is_file():
            raise FileNotFoundError(f"raw.path: caption file not found: '{path}'")
        self.path = Path(path)

    def _read(self, skipped: Counter) -> list[Record]:
        out = []
        with self.path.open("rb") as f:
            for i, line in enumerate(f):
                try:
                    text = line.decode("utf-8").strip()
                except UnicodeDecodeError:
                    skipped["invalid_utf8"] += 1
                    continue
                if not text:
                    skipped["empty_line"] += 1
                    continue
                out.append(Record(f"{self.path.stem}-{i}", None, text, "lone_text"))
        return out

    def describe(self) -> dict:
        return {"type": "text_file", "path": str(self.path)}

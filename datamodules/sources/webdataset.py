"""webdataset tar shards as raw data. Files are grouped into samples by their key (the path up to the first dot
of the file name, as webdataset does); a sample's image is its first `jpg/jpeg/png/webp` member and its caption
the `txt` member (or `json` with a `caption` field). A sample with both is a pair, with an image only a lone
image, with a caption only a lone text. Shards are read with `tarfile` (no sleeping retry handlers); an unreadable
shard or member is skipped and counted, never fatal.

`shards`: a list, a glob (`/data/shard-*.tar`) or a brace range (`/data/shard-{000000..000099}.tar`)."""

from __future__ import annotations

import glob
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

from datamodules.records import Record
from datamodules.sources.raw_base import RawSource

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def expand_shards(shards: str | list[str]) -> list[str]:
    if not isinstance(shards, str):
        return [p for s in shards for p in expand_shards(s)]
    m = re.search(r"\{(\d+)\.\.(\d+)\}", shards)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo)
        return [
            p
            for i in range(int(lo), int(hi) + 1)
            for p in expand_shards(shards[: m.start()] + str(i).zfill(width) + shards[m.end() :])
        ]
    if any(c in shards for c in "*?["):
        return sorted(glob.glob(shards))
    return [shards]


class WebDatasetSource(RawSource):
    """Args: shards; caption_key (json field for captions); split."""

    def __init__(
        self, shards: str | list[str], *, caption_key: str = "caption", split: str = "train"
    ) -> None:
        super().__init__(split)
        self.shards = expand_shards(list(shards) if not isinstance(shards, str) else shards)
        if not self.shards:
            raise FileNotFoundError(f"raw.shards: no shard matches {shards!r}")
        self.caption_key = caption_key

    def _read(self, skipped: Counter) -> list[Record]:
        out: list[Record] = []
        for shard in self.shards:
            if not Path(shard).is_file():
                skipped["shard_missing"] += 1
                continue
            samples: dict[str, dict[str, bytes]] = {}
            try:
                with tarfile.open(shard) as tar:
                    for m in tar:
                        if not m.isfile():
                            continue
                        base = m.name.rsplit("/", 1)[-1]
                        if "." not in base:
                            skipped["member_without_extension"] += 1
                            continue
                        prefix = m.name[: len(m.name) - len(base)] + base.split(".", 1)[0]
                        ext = base.split(".", 1)[1].lower()
                        f = tar.extractfile(m)
                        samples.setdefault(prefix, {})[ext] = f.read() if f is not None else b""
            except (tarfile.TarError, OSError, EOFError):
                skipped["shard_unreadable"] += 1
                if not samples:
                    continue  # keep the members read before a truncated end
            stem = Path(shard).name
            for key, files in samples.items():
                image = next((files[k] for k in IMAGE_KEYS if k in files), None)
                caption = None
                try:
                    if "txt" in files:
                        caption = files["txt"].decode("utf-8").strip() or None
                    elif "json" in files:
                        caption = json.loads(files["json"].decode("utf-8")).get(self.caption_key)
                except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                    skipped["caption_unreadable"] += 1
                    caption = None
                if image is None and caption is None:
                    skipped["sample_without_image_or_caption"] += 1
                    continue
                kind = (
                    "pair"
                    if image is not None and caption
                    else "lone_image"
                    if image is not None
                    else "lone_text"
                )
                out.append(Record(f"{stem}/{key}", image, caption, kind))
        return out

    def describe(self) -> dict:
        return {"type": "webdataset", "shards": len(self.shards)}

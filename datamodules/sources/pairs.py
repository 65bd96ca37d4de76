"""Image-caption pairs from JSONL or CSV manifests (real data from day one).

JSONL: one object per line, e.g. {"image": "imgs/0001.jpg", "caption": "a dog on a red sofa", "id": "0001"}.
CSV: a header row with the same column names. Relative image paths resolve against `image_root` (default: the
manifest's folder). Several rows may share one image (multi-caption retrieval groups them).
Rows that cannot be used are skipped and counted with their reason (`skipped`), never dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from datamodules.records import Record
from datamodules.sources.base import SPLITS, Source

log = logging.getLogger(__name__)


def _unit_hash(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class PairsSource(Source):
    """Args:
    train_path / val_path / test_path: manifests (.jsonl, .csv or .tsv); val/test are optional.
    separator: the column separator of .csv/.tsv manifests (open_clip's `--csv-separator`); None: by suffix
        ("," for .csv, a tab for .tsv).
    image_root: folder that relative image paths resolve against (default: each manifest's folder).
    image_key / caption_key / id_key: column names.
    check_images: verify at load time that every image file exists (skips and counts missing ones).
    allow_lone: raw mode for preprocessing — a row without a caption is a lone image, a row without an image a
        lone text (instead of being skipped).
    val_fraction: without val_path, this fraction of training *images* (by a hash of the path, so every caption
        of an image lands on the same side) becomes the val split.
    meta_keys: row fields copied into `Record.meta` when present (e.g. the scene graph that preprocessed manifests
        of the synthetic world carry).
    """

    def __init__(
        self,
        train_path: str | None,
        val_path: str | None = None,
        test_path: str | None = None,
        *,
        val_fraction: float = 0.05,
        image_root: str | None = None,
        image_key: str = "image",
        caption_key: str = "caption",
        id_key: str = "id",
        check_images: bool = True,
        allow_lone: bool = False,
        separator: str | None = None,
        meta_keys: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.meta_keys = tuple(meta_keys)
        if separator is not None and len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.separator = separator
        self.allow_lone = allow_lone
        self.paths = {"train": train_path, "val": val_path, "test": test_path}
        for split, path in self.paths.items():
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(
                    f"{split}_path: manifest not found: '{path}' (expected a .jsonl, .csv or .tsv file with "
                    f"'{image_key}' and '{caption_key}' columns)"
                )
            if path is not None and Path(path).suffix.lower() not in (".jsonl", ".json", ".csv", ".tsv"):
                raise ValueError(
                    f"{split}_path: unsupported manifest type '{path}'; use .jsonl, .csv or .tsv"
                )
        if image_root is not None and not Path(image_root).is_dir():
            raise FileNotFoundError(f"image_root: folder not found: '{image_root}'")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.image_root = image_root
        self.keys = (image_key, caption_key, id_key)
        self.check_images = check_images
        self.skipped: dict[str, Counter] = {s: Counter() for s in SPLITS}
        self._cache: dict[str, list[Record]] = {}

    def _rows(self, path: Path):
        if path.suffix.lower() in (".csv", ".tsv"):
            sep = self.separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
            # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row is skipped (and counted),
            # not the whole file
            # utf-8-sig: a byte-order mark would otherwise rename the first column
            with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
                reader = csv.DictReader(f, delimiter=sep)
                image_key, caption_key, _ = self.keys
                cols = reader.fieldnames or []
                if image_key not in cols and caption_key not in cols:
                    raise ValueError(
                        f"{path}: CSV header has columns {cols} (separator {sep!r}); expected '{image_key}' and "
                        f"'{caption_key}' (set image_key / caption_key to the file's names, or separator)"
                    )
                for i, row in enumerate(reader, start=2):  # line numbers: the header is line 1
                    try:
                        for v in row.values():
                            if isinstance(v, str):
                                v.encode("utf-8")
                    except UnicodeEncodeError:
                        yield i, None, "invalid_utf8"
                        continue
                    yield i, row, None
            return
        with path.open("rb") as f:
            for i, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8-sig"))
                except UnicodeDecodeError:
                    yield i, None, "invalid_utf8"
                    continue
                except json.JSONDecodeError:
                    yield i, None, "bad_json_line"
                    continue
                if not isinstance(row, dict):
                    yield i, None, "not_an_object"
                    continue
                yield i, row, None

    def records(self, split: str) -> list[Record]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
        if split in self._cache:
            return self._cache[split]
        if split in ("train", "val") and self.paths["val"] is None and self.val_fraction > 0:
            rows = self._read(Path(self.paths["train"]), "train")
            is_val = [_unit_hash(r.image_key) < self.val_fraction for r in rows]
            self._cache["train"] = [r for r, v in zip(rows, is_val) if not v]
            self._cache["val"] = [r for r, v in zip(rows, is_val) if v]
            return self._cache[split]
        path = self.paths[split]
        if path is None:
            return []
        self._cache[split] = self._read(Path(path), split)
        return self._cache[split]

    def _read(self, path: Path, split: str) -> list[Record]:
        root = Path(self.image_root) if self.image_root else path.parent
        image_key, caption_key, id_key = self.keys
        out: list[Record] = []
        seen: set[str] = set()
        skipped = self.skipped[split]
        lines: dict[str, list[int]] = {}  # first few line numbers per skip reason, for the warning

        def skip(reason: str, line: int) -> None:
            skipped[reason] += 1
            if len(lines.setdefault(reason, [])) < 5:
                lines[reason].append(line)

        n_rows = 0
        for i, row, err in self._rows(path):
            n_rows += 1
            if err:
                skip(err, i)
                continue
            image, caption = row.get(image_key), row.get(caption_key)
            has_caption = isinstance(caption, str) and bool(caption.strip())
            has_image = isinstance(image, str) and bool(image.strip())
            kind = "pair"
            if self.allow_lone and has_image and not has_caption:
                kind, caption = "lone_image", None
            elif self.allow_lone and has_caption and not has_image:
                kind, image = "lone_text", None
            elif not has_caption:
                skip("empty_caption", i)
                continue
            elif not has_image:
                skip("missing_image_field", i)
                continue
            img_path = None
            if image is not None:
                img_path = Path(image) if Path(image).is_absolute() else root / image
                if self.check_images and not img_path.is_file():
                    skip("image_not_found", i)
                    continue
            rid = str(row.get(id_key) or f"{path.stem}-{i}")
            if rid in seen:
                skip("duplicate_id", i)
                continue
            seen.add(rid)
            out.append(
                Record(
                    id=rid,
                    image=None if img_path is None else str(img_path),
                    caption=None if caption is None else caption.strip(),
                    source=kind,
                    meta={k: row[k] for k in self.meta_keys if k in row},
                )
            )
        if skipped:
            log.warning(
                "%s: skipped %d rows of %s: %s (first lines: %s)",
                split,
                sum(skipped.values()),
                path,
                dict(skipped),
                lines,
            )
        if n_rows and not out:
            raise ValueError(
                f"{path}: none of its {n_rows} rows is usable: {dict(skipped)} (first lines: {lines})"
            )
        return out

    def describe(self) -> dict:
        return {"type": "pairs", **{f"{k}_path": v for k, v in self.paths.items()}}

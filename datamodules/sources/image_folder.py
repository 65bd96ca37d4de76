"""A folder of images as raw data: an image with a caption file beside it (`cat.jpg` + `cat.txt`) is a pair, an
image without one is a lone image (to be captioned). Ids are the paths relative to the root."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from datamodules.records import Record
from datamodules.sources.raw_base import IMAGE_EXTS, RawSource


class ImageFolderSource(RawSource):
    """Args: root; recursive; extensions; caption_ext (sidecar caption files; null: every image is lone); split."""

    def __init__(
        self,
        root: str,
        *,
        recursive: bool = True,
        extensions: list[str] | tuple[str, ...] = IMAGE_EXTS,
        caption_ext: str | None = ".txt",
        split: str = "train",
    ) -> None:
        super().__init__(split)
        if not Path(root).is_dir():
            raise FileNotFoundError(f"raw.root: image folder not found: '{root}'")
        self.root = Path(root)
        self.recursive, self.caption_ext = recursive, caption_ext
        self.extensions = tuple(e.lower() for e in extensions)

    def _read(self, skipped: Counter) -> list[Record]:
        files = sorted(self.root.rglob("*") if self.recursive else self.root.iterdir())
        out = []
        for f in files:
            if not f.is_file() or f.suffix.lower() not in self.extensions:
                continue
            caption = None
            side = f.with_suffix(self.caption_ext) if self.caption_ext else None
            if side is not None and side.is_file():
                try:
                    caption = side.read_bytes().decode("utf-8").strip() or None
                except UnicodeDecodeError:
                    skipped["caption_invalid_utf8"] += 1
                    caption = None  # the image is still usable as a lone image
            rid = str(f.relative_to(self.root))
            out.append(Record(rid, str(f), caption, "pair" if caption else "lone_image"))
        return out

    def describe(self) -> dict:
        return {"type": "image_folder", "root": str(self.root)}

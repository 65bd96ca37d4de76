"""COCO captions JSON (`captions_train2017.json`: `images` [{id, file_name}], `annotations` [{id, image_id,
caption}]) as raw pairs, one record per caption. With `lone_images: true`, images without any annotation become lone
images. Annotations of unknown images are skipped and counted."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from datamodules.records import Record
from datamodules.sources.raw_base import RawSource


class CocoCaptionsSource(RawSource):
    """Args: annotations (the JSON file); image_root (folder of the images); lone_images; split."""

    def __init__(
        self, annotations: str, image_root: str, *, lone_images: bool = True, split: str = "train"
    ) -> None:
        super().__init__(split)
        if not Path(annotations).is_file():
            raise FileNotFoundError(f"raw.annotations: COCO captions JSON not found: '{annotations}'")
        if not Path(image_root).is_dir():
            raise FileNotFoundError(f"raw.image_root: image folder not found: '{image_root}'")
        self.annotations, self.image_root, self.lone_images = Path(annotations), Path(image_root), lone_images

    def _read(self, skipped: Counter) -> list[Record]:
        try:
            data = json.loads(self.annotations.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"raw.annotations: '{self.annotations}' is not valid COCO JSON: {e}") from e
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"raw.annotations: '{self.annotations}' lacks 'images' / 'annotations'")
        files = {}
        for im in data["images"]:
            if (
                not isinstance(im, dict)
                or not isinstance(im.get("id"), (int, str))
                or not isinstance(im.get("file_name"), str)
                or not im["file_name"]
            ):
                skipped["bad_image_entry"] += 1  # missing or non-scalar id / file_name
                continue
            files[im["id"]] = str(self.image_root / im["file_name"])
        out, used = [], set()
        for a in data["annotations"]:
            if not isinstance(a, dict) or not isinstance(a.get("image_id"), (int, str)):
                skipped["bad_annotation"] += 1
                continue
            if a["image_id"] not in files:
                skipped["annotation_of_unknown_image"] += 1
                continue
            used.add(a["image_id"])
            cap = a.get("caption")
            out.append(
                Record(
                    f"coco-{a.get('id', len(out))}",
                    files[a["image_id"]],
                    cap if isinstance(cap, str) else "",
                    "pair",
                    meta={"image_id": a["image_id"]},
                )
            )
        if self.lone_images:
            for iid, f in files.items():
                if iid not in used:
                    out.append(Record(f"coco-image-{iid}", f, None, "lone_image", meta={"image_id": iid}))
        return out

    def describe(self) -> dict:
        return {"type": "coco_captions", "annotations": str(self.annotations)}

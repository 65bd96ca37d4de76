"""The data contract (ARCHITECTURE §3): records flowing from sources through preprocessing into datasets, and
negatives attached to them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

SourceKind = Literal["pair", "lone_image", "lone_text"]


@runtime_checkable
class ImageRef(Protocol):
    """A lazily produced image (e.g. a scene rendered on demand). `key` identifies its content."""

    key: str

    def load(self) -> Image.Image: ...


@dataclass
class Record:
    """One unit of data.

    Attributes:
        id: unique within a source split.
        image: a file path, encoded bytes, an `ImageRef`, or None (lone text).
        caption: the caption, or None (lone image).
        source: pair | lone_image | lone_text.
        provenance: stages that produced or changed the record, each {"stage", "model", ...}.
        gate_scores: per-scorer similarity scores set by the gate.
        meta: free-form extras (the synthetic world stores the scene graph and claim here).
    """

    id: str
    image: str | bytes | ImageRef | None
    caption: str | None
    source: SourceKind = "pair"
    provenance: list[dict[str, Any]] = field(default_factory=list)
    gate_scores: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image_key(self) -> str:
        """Identity of the image, used to group captions of one image (multi-caption retrieval)."""
        if isinstance(self.image, str):
            return self.image
        if isinstance(self.image, ImageRef):
            return self.image.key
        if isinstance(self.image, bytes):
            import hashlib

            return hashlib.sha256(self.image).hexdigest()
        return f"none:{self.id}"


@dataclass
class Negative:
    """A hard negative of one sample (the owner). `payload` is a caption (text) or a PIL image (image).

    `pair`: for an image negative made to match a text negative of the same sample (I'_C for T'_C), the index of
    that text negative among the sample's text negatives; None otherwise.
    """

    modality: Literal["text", "image"]
    kind: str  # e.g. "structure/trigram_shuffle", "compositional/color"
    payload: Any
    generator: str
    version: str
    pair: int | None = None


MAX_IMAGE_PIXELS = 50_000_000  # the training-time default of `load_image(max_pixels=...)`


def load_image(image: str | bytes | ImageRef | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Opens any supported image reference as RGB. Raises ValueError/OSError naming the offending reference.

    max_pixels: refuse images larger than this (checked on the header, before any pixel is decoded); also turns
    PIL's decompression-bomb error into a ValueError that names the file."""
    name = str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"
    if isinstance(image, ImageRef):
        return image.load().convert("RGB")
    if not isinstance(image, (str, Path, bytes)):
        raise ValueError(f"cannot load image from {type(image).__name__}")
    try:
        with Image.open(image if not isinstance(image, bytes) else io.BytesIO(image)) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ValueError(f"image {name}: {w}x{h} = {w * h} pixels exceeds the limit {max_pixels}")
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {name}: refused as a decompression bomb ({e})") from None

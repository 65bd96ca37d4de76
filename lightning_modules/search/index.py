"""A vector index of a collection for text->image and image->text search with a trained model (seed paper §6.1).

    index = SearchIndex.build(model_ref, "data/images/", "indexes/my_index")     # or a manifest (.jsonl/.csv/.tsv)
    index = SearchIndex.load("indexes/my_index")
    hits = index.search_text(scorer, "a red cube left of a blue ball", k=10)        # [(score, item), ...]

Stored beside its items in one folder: `images.faiss` (image embeddings), `texts.faiss` (caption embeddings, when
the collection has captions), `items.jsonl` (id, image path, caption; row i = vector i) and `meta.json` (model
reference and fingerprint, embedding dim, index kind, counts). Vectors are L2-normalised and searched by inner
product, i.e. cosine similarity. Kinds: `flat` (exact, the default), `ivf` (IndexIVFFlat: trained k-means cells,
`nprobe` searched) and `hnsw` (IndexHNSWFlat) for large collections. An index refuses queries from a model whose
fingerprint differs from the one it was built with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.atomic import atomic_write_bytes, atomic_write_text
from datamodules.records import load_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
KINDS = ("flat", "ivf", "hnsw")


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the model's parameter names, shapes and bytes (16 hex digits): two models embed alike iff equal."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def scorer_fingerprint(scorer: Any) -> str:
    """`model_fingerprint` of the scorer's model, hashed once and reused until a weight tensor is modified in place
    or replaced (tracked by the tensors' version counters and storage): queries do not re-hash every weight."""
    state = scorer.model.state_dict()
    key = tuple((name, t._version, t.data_ptr()) for name, t in state.items())
    cached = getattr(scorer, "_search_fingerprint", None)
    if cached is None or cached[0] != key:
        cached = (key, model_fingerprint(scorer.model))
        scorer._search_fingerprint = cached
    return cached[1]


def read_collection(source: str | Path) -> list[dict[str, Any]]:
    """Items of an image folder (recursive; id = relative path, no caption) or a manifest (.jsonl/.csv/.tsv with
    image and caption columns, read like `data=pairs`)."""
    src = Path(source)
    if src.is_dir():
        paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise ValueError(f"search index: no images ({', '.join(IMAGE_SUFFIXES)}) under '{src}'")
        return [{"id": str(p.relative_to(src)), "image": str(p.resolve()), "caption": None} for p in paths]
    if src.is_file():
        from datamodules.sources.pairs import PairsSource

        source_ = PairsSource(str(src), val_fraction=0.0, allow_lone=True)
        records = source_.records("train")
        skipped = sum(source_.skipped["train"].values())
        if skipped:
            log.warning(
                "search index: %d manifest rows skipped (%s)", skipped, dict(source_.skipped["train"])
            )
        items = [{"id": r.id, "image": str(r.image), "caption": r.caption} for r in records if r.image]
        if not items:
            raise ValueError(f"search index: no rows with an image in '{src}'")
        return items
    raise FileNotFoundError(f"search index: collection not found: '{src}' (an image folder or a manifest)")


def make_faiss_index(dim: int, kind: str, n: int, nlist: int | None = None) -> Any:
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        nlist = nlist or max(1, min(4096, int(4 * math.sqrt(max(n, 1)))))
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"search index kind: expected one of {KINDS}, got {kind!r}")


def _add(index: Any, vectors: np.ndarray) -> None:
    if not index.is_trained:
        if len(vectors) < index.nlist:
            raise ValueError(
                f"ivf index: {len(vectors)} vectors cannot train {index.nlist} cells; use kind=flat or a smaller "
                "nlist"
            )
        index.train(vectors)
    index.add(vectors)


@dataclass
class SearchIndex:
    root: Path
    meta: dict[str, Any]
    items: list[dict[str, Any]]
    images: Any  # faiss index of image embeddings
    texts: Any | None = None  # faiss index of caption embeddings (items with a caption, in `text_rows` order)
    text_rows: list[int] = field(default_factory=list)

    # -- building -----------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        scorer: Any,
        model_ref: str,
        source: str | Path,
        root: str | Path,
        *,
        kind: str = "flat",
        nlist: int | None = None,
        progress: Callable[[int], None] | None = None,
        items: list[dict[str, Any]] | None = None,
    ) -> SearchIndex:
        """Embeds the collection's images (and captions) with `scorer` (a `ClipScorer`) into a new index at `root`.
        `items`: the collection already read by `read_collection(source)` (not read again)."""
        if kind not in KINDS:
            raise ValueError(f"search index kind: expected one of {KINDS}, got {kind!r}")
        items = read_collection(source) if items is None else items
        dim = int(scorer.encode_texts(["a"]).shape[-1])
        meta = {
            "model": model_ref,
            "fingerprint": scorer_fingerprint(scorer),
            "dim": dim,
            "kind": kind,
            "source": str(source),
            "count": 0,
        }
        index = cls(Path(root), meta, [], make_faiss_index(dim, kind, len(items), nlist))
        index.add_items(scorer, items, progress=progress)
        return index

    def add_items(
        self, scorer: Any, items: Sequence[dict[str, Any]], *, progress: Callable[[int], None] | None = None
    ) -> int:
        """Embeds and appends `items` (incremental add; an IVF index keeps its trained cells). Unreadable images are
        skipped, logged and counted in meta["skipped"]. Returns the number added."""
        self.check_model(scorer)
        kept, vectors, skipped = [], [], 0
        batch = getattr(scorer, "batch_size", 256)
        for s in range(0, len(items), batch):
            chunk, images = [], []
            for it in items[s : s + batch]:
                try:
                    images.append(load_image(it["image"]))
                    chunk.append(it)
                except (OSError, ValueError) as e:
                    log.warning("search index: item %s skipped: %s", it["id"], e)
                    skipped += 1
            if images:
                vectors.append(scorer.encode_images(images).float().numpy())
                kept.extend(chunk)
            if progress is not None:
                progress(len(items[s : s + batch]))
        if not kept:
            raise ValueError(f"search index: none of the {len(items)} images could be read")
        _add(self.images, np.ascontiguousarray(np.concatenate(vectors), dtype=np.float32))
        first = len(self.items)
        self.items.extend(kept)
        captioned = [i for i, it in enumerate(kept) if it.get("caption")]
        if captioned:
            if self.texts is None:
                self.texts = make_faiss_index(self.meta["dim"], "flat", len(captioned))
            t = scorer.encode_texts([kept[i]["caption"] for i in captioned]).float().numpy()
            _add(self.texts, np.ascontiguousarray(t, dtype=np.float32))
            self.text_rows.extend(first + i for i in captioned)
        self.meta["count"] = len(self.items)
        self.meta["skipped"] = self.meta.get("skipped", 0) + skipped
        return len(kept)

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self) -> Path:
        import faiss

        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "images.faiss", faiss.serialize_index(self.images).tobytes())
        if self.texts is not None:
            atomic_write_bytes(self.root / "texts.faiss", faiss.serialize_index(self.texts).tobytes())
        atomic_write_text(self.root / "items.jsonl", "".join(json.dumps(it) + "\n" for it in self.items))
        self.meta["text_rows"] = len(self.text_rows)
        atomic_write_text(self.root / "text_rows.json", json.dumps(self.text_rows))
        atomic_write_text(self.root / "meta.json", json.dumps(self.meta, indent=2))  # last: marks it complete
        return self.root

    @classmethod
    def load(cls, root: str | Path) -> SearchIndex:
        import faiss

        root = Path(root)
        if not (root / "meta.json").is_file():
            raise FileNotFoundError(
                f"search index: '{root}' holds no index (meta.json missing); build one first"
            )
        meta = json.loads((root / "meta.json").read_text())
        images = faiss.deserialize_index(np.frombuffer((root / "images.faiss").read_bytes(), dtype=np.uint8))
        texts = None
        if (root / "texts.faiss").is_file():
            texts = faiss.deserialize_index(
                np.frombuffer((root / "texts.faiss").read_bytes(), dtype=np.uint8)
            )
        items = [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines() if line.strip()]
        rows = (
            json.loads((root / "text_rows.json").read_text()) if (root / "text_rows.json").is_file() else []
        )
        if images.ntotal != len(items):
            raise ValueError(
                f"search index '{root}': {images.ntotal} vectors but {len(items)} items (corrupt?)"
            )
        return cls(root, meta, items, images, texts, rows)

    # -- querying -----------------------------------------------------------------------------------------------
    def check_model(self, scorer: Any) -> None:
        fp = scorer_fingerprint(scorer)
        if self.meta.get("fingerprint") and fp != self.meta["fingerprint"]:
            raise ValueError(
                f"search index '{self.root}' was built with model '{self.meta['model']}' (fingerprint "
                f"{self.meta['fingerprint']}); the query model's fingerprint is {fp}. Embeddings of different models "
                "are not comparable: query with the same model or rebuild the index."
            )

    def _search(
        self, index: Any, query: np.ndarray, k: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(index, "nprobe"):
            index.nprobe = nprobe or max(1, index.nlist // 16)
        return index.search(np.ascontiguousarray(query, dtype=np.float32), k)

    def search_text(
        self, scorer: Any, text: str, k: int = 10, nprobe: int | None = None
    ) -> list[tuple[float, dict]]:
        """Images for a text query, best first: [(cosine, item)]."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("search: the text query is empty")
        self.check_model(scorer)
        q = scorer.encode_texts([text.strip()]).float().numpy()
        scores, ids = self._search(self.images, q, min(k, self.images.ntotal), nprobe)
        return [(float(s), self.items[i]) for s, i in zip(scores[0], ids[0]) if i >= 0]

    def search_image(
        self, scorer: Any, image: Image.Image | str | Path, k: int = 10, nprobe: int | None = None
    ) -> list[tuple[float, dict]]:
        """Captions for an image query, best first: [(cosine, item whose caption matched)]."""
        if self.texts is None:
            raise ValueError(
                f"search index '{self.root}' has no captions to search (built from an image folder)"
            )
        self.check_model(scorer)
        if not isinstance(image, Image.Image):
            try:
                image = load_image(image)
            except (OSError, ValueError) as e:
                raise ValueError(f"search: cannot read the query image '{image}': {e}") from e
        q = scorer.encode_images([image]).float().numpy()
        scores, ids = self._search(self.texts, q, min(k, self.texts.ntotal), nprobe)
        return [(float(s), self.items[self.text_rows[i]]) for s, i in zip(scores[0], ids[0]) if i >= 0]

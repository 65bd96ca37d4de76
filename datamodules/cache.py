"""Content-addressed disk cache for expensive generators (LLM rewrites, diffusion edits, VLM captions).

Key: sha256 over (generator name, version, model id + revision, generation params, seed, input content hash)
— build it with `cache_key(...)`; any change of any part gives a new key. Entries are written to a temp file in
the same folder, fsynced, then `os.replace`d into place, so readers never see partial files and concurrent
writers of one key (several loader workers or ranks) simply race to an identical result. Each entry carries a
magic header and the sha256 of its payload: a truncated or corrupt entry is detected, counted, deleted and
regenerated — never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from datamodules.atomic import atomic_write_bytes, clean_stale_temps

log = logging.getLogger(__name__)

MAGIC = b"HNCACHE1"
_HEADER = len(MAGIC) + 32


def content_hash(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def cache_key(**parts: Any) -> str:
    """sha256 over the canonical JSON of all parts (dict order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class DiskCache:
    """Args:
    root: cache folder (shared by all ranks and workers of a run, and across runs).
    namespace: a sub-folder per generator.
    """

    def __init__(self, root: str | Path, namespace: str) -> None:
        self.dir = Path(root) / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stats: Counter = Counter()
        removed = clean_stale_temps(self.dir, recursive=True)  # temp files of writers killed mid-write
        if removed:
            log.info("cache %s: removed %d temp files of interrupted writes", self.dir, removed)

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / key

    def get(self, key: str) -> bytes | None:
        p = self.path(key)
        try:
            blob = p.read_bytes()
        except FileNotFoundError:
            self.stats["miss"] += 1
            return None
        payload = blob[_HEADER:]
        if (
            len(blob) < _HEADER
            or blob[: len(MAGIC)] != MAGIC
            or hashlib.sha256(payload).digest() != blob[len(MAGIC) : _HEADER]
        ):
            self.stats["corrupt"] += 1
            self.stats["miss"] += 1
            log.warning("cache %s: corrupt entry %s removed; it will be regenerated", self.dir.name, key)
            p.unlink(missing_ok=True)
            return None
        self.stats["hit"] += 1
        return payload

    def put(self, key: str, payload: bytes) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(p, MAGIC + hashlib.sha256(payload).digest() + payload)
        self.stats["write"] += 1

    def get_json(self, key: str) -> Any | None:
        blob = self.get(key)
        return None if blob is None else json.loads(blob.decode("utf-8"))

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, ensure_ascii=False).encode("utf-8"))

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()


def owns(key: str, rank: int, world_size: int) -> bool:
    """Whether `rank` fills the entry `key` when work is split across ranks by key hash."""
    return int(key[:8], 16) % world_size == rank


def model_fingerprint(model: str, revision: str | None = None) -> dict[str, Any]:
    """Identity of a model for cache keys: the hub id + revision, or for a local folder the sha256 over its file
    names, sizes and mtimes (so replacing the weights at the same path invalidates cached outputs)."""
    p = Path(model)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
        return {"model": str(p.resolve()), "files": h.hexdigest()[:16]}
    return {"model": model, "revision": revision}

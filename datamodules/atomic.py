"""Atomic file writes: a temp file in the target's own folder (same filesystem), flushed and fsynced, then
`os.replace`d into place and the folder fsynced. A reader (or a crash at any instant) sees the old file or the new
one, never a partial one. Temp names are `.<name>.<pid>.<random>.tmp`; `clean_stale_temps` removes the ones a
killed writer left behind.

    atomic_write_text(out / "metrics.json", json.dumps(metrics))
    with atomic_open(out / "results.csv", "w", newline="") as f: csv.writer(f).writerows(rows)
    atomic_save(lambda f: torch.save(ckpt, f), path)          # anything that writes to a binary file object
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Opens a same-folder temp file; on a clean exit it is fsynced and renamed to `path`, on an error removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_save(write: Callable[[IO[bytes]], None], path: str | Path) -> None:
    """`write(file)` into a temp file, then rename it into place (e.g. `lambda f: torch.save(obj, f)`)."""
    with atomic_open(path, "wb") as f:
        write(f)


def _writer_alive(name: str) -> bool:
    """Whether the process that named this temp file (`.<name>.<pid>.<random>.tmp`) still runs (on this host)."""
    try:
        pid = int(name[: -len(TEMP_SUFFIX)].rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return True  # not ours: leave it to the age rule
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_stale_temps(folder: str | Path, *, older_than_s: float = 3600.0, recursive: bool = False) -> int:
    """Removes temp files of killed writers: `.*.tmp` files whose writer process is gone, or older than
    `older_than_s` (a writer on another host of a shared filesystem). Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    now, removed = time.time(), 0
    for p in folder.rglob(f".*{TEMP_SUFFIX}") if recursive else folder.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if p.is_file() and (not _writer_alive(p.name) or now - p.stat().st_mtime > older_than_s):
                p.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `path` (created if missing), held for the `with` block. Processes that
    build the same output folder take it in turn; the second one then finds the first one's result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

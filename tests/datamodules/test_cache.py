import multiprocessing as mp
import random

import pytest

from datamodules.cache import DiskCache, cache_key, owns


def test_key_changes_when_any_part_changes():
    base = dict(
        generator="g",
        version="1",
        model="m",
        revision=None,
        params={"steps": 20, "cfg": 7.5},
        seed=0,
        input="abc",
    )
    k = cache_key(**base)
    assert k == cache_key(**dict(reversed(list(base.items()))))  # order-free
    for field, other in [
        ("generator", "h"),
        ("version", "2"),
        ("model", "m2"),
        ("revision", "r1"),
        ("params", {"steps": 21, "cfg": 7.5}),
        ("seed", 1),
        ("input", "abd"),
    ]:
        assert cache_key(**{**base, field: other}) != k, field


def test_roundtrip_stats_and_truncated_entry_is_regenerated(tmp_path):
    c = DiskCache(tmp_path, "t")
    k = cache_key(x=1)
    assert c.get(k) is None
    c.put_json(k, {"a": [1, 2]})
    assert c.get_json(k) == {"a": [1, 2]}
    p = c.path(k)
    p.write_bytes(p.read_bytes()[:-3])  # truncated write
    assert c.get(k) is None and not p.exists()
    assert c.stats["corrupt"] == 1 and c.stats["hit"] == 1 and c.stats["miss"] == 2
    c.put(k, b"payload")
    p.write_bytes(b"garbage")  # not even a header
    assert c.get(k) is None
    c.put(k, b"payload")
    assert c.get(k) == b"payload"
    assert not list(p.parent.glob(".*.tmp"))  # no temp files left


def _writer(root, worker, keys, q):
    c = DiskCache(root, "t")
    rng = random.Random(worker)
    for _ in range(3):
        ks = list(keys)
        rng.shuffle(ks)
        for k in ks:
            if c.get(k) is None:
                c.put(k, (k * 50).encode())
    q.put(dict(c.stats))


def test_concurrent_writers_from_several_processes(tmp_path):
    keys = [cache_key(i=i) for i in range(40)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, keys, q)) for w in range(4)]
    for p in procs:
        p.start()
    stats = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    c = DiskCache(tmp_path, "t")
    for k in keys:
        assert c.get(k) == (k * 50).encode()
    assert sum(s.get("corrupt", 0) for s in stats) == 0
    assert sum(s.get("write", 0) for s in stats) >= len(keys)


def test_rank_split_covers_every_key_once():
    keys = [cache_key(i=i) for i in range(200)]
    for ws in (1, 2, 3, 8):
        owners = [[r for r in range(ws) if owns(k, r, ws)] for k in keys]
        assert all(len(o) == 1 for o in owners)
        if ws > 1:
            assert len({o[0] for o in owners}) == ws


@pytest.mark.parametrize("bad", [b"", b"HNCACHE1"])
def test_short_entries_are_corrupt(tmp_path, bad):
    c = DiskCache(tmp_path, "t")
    k = cache_key(z=bad.decode())
    c.path(k).parent.mkdir(parents=True, exist_ok=True)
    c.path(k).write_bytes(bad)
    assert c.get(k) is None and c.stats["corrupt"] == 1

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


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"steps": 21},
        {"guidance_scale": 7.0},
        {"image_guidance_scale": 1.0},
        {"strength": 0.5},
        {"prompt": "make it {target}"},
        {"size": 256},
        {"model": "org/other-model"},
    ],
)
def test_diffusion_editor_cache_identity_covers_every_generation_parameter(change, tmp_path):
    from datamodules.negatives.editors.diffusion import DiffusersEditor

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "unet.bin").write_bytes(b"1")
    base = dict(model=str(tmp_path / "weights"), device="cpu")
    assert DiffusersEditor(**base).identity() != DiffusersEditor(**{**base, **change}).identity()
    hub = dict(model="org/editor", device="cpu")  # a hub id: its revision is part of the identity
    assert DiffusersEditor(**hub).identity() != DiffusersEditor(**hub, revision="abc").identity()


def test_model_backed_cache_keys_follow_the_weight_files(tmp_path):
    """New weights in the same folder (or another revision) must not serve stale cached outputs."""
    import os

    from datamodules.negatives.editors.diffusion import DiffusersEditor
    from datamodules.negatives.llm_rewriter import LLMRewriter

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"old")
    editor_before = DiffusersEditor(model=str(weights), device="cpu").identity()
    llm = LLMRewriter(model=str(weights), cache_dir=str(tmp_path / "c"), device="cpu")
    llm_before = llm.key("a red cube", "color")
    (weights / "model.safetensors").write_bytes(b"new weights")
    os.utime(weights / "model.safetensors", ns=(1, 1))
    assert DiffusersEditor(model=str(weights), device="cpu").identity() != editor_before
    assert llm.key("a red cube", "color") != llm_before
    hub = LLMRewriter(model="org/lm", cache_dir=str(tmp_path / "c"), device="cpu")
    other = LLMRewriter(model="org/lm", revision="v2", cache_dir=str(tmp_path / "c"), device="cpu")
    decoding = LLMRewriter(model="org/lm", temperature=0.7, cache_dir=str(tmp_path / "c"), device="cpu")
    keys = {g.key("a red cube", "color") for g in (hub, other, decoding)}
    assert len(keys) == 3


def test_temp_files_of_killed_writers_are_removed_when_the_cache_opens(tmp_path):
    cache = DiskCache(tmp_path, "ns")
    cache.put("ab" + "0" * 62, b"payload")
    stray = cache.path("ab" + "1" * 62).parent / f".{'ab' + '1' * 62}.{2**22 + 7}.deadbeef.tmp"  # dead pid
    stray.write_bytes(b"half a write")
    DiskCache(tmp_path, "ns")
    assert not stray.exists() and cache.get("ab" + "0" * 62) == b"payload"

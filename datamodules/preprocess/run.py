"""Running the preprocessing config: calibrate the gate, run the pipeline per split, and keep the clean manifests
in a folder keyed by a fingerprint of everything that determines them.

`clean_dir(cfg)` = `<preprocess.out_dir>/<fingerprint>`; the fingerprint is a sha256 over the resolved
preprocessing config (minus keys that cannot change the output: folders, batch sizes, devices) and the size +
mtime of every file or folder the config names (raw manifests, image folders, scorer weights). So a changed config,
changed raw data or retrained scorers give a new folder: the manifest is *stale* and is rebuilt; an unchanged setup
finds `DONE` and reuses it. Rebuilding is cheap when only the gate changed, since model outputs are cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.atomic import atomic_write_text, file_lock

log = logging.getLogger(__name__)

# What the writer puts in a manifest row; part of the fingerprint, so a manifest of an older writer is rebuilt.
# 2: rows of synthetic-world renders carry their scene graph ("scene").
MANIFEST_FORMAT = 2

# Keys that do not change what the manifest contains.
_NON_SEMANTIC = {"out_dir", "cache_dir", "batch_size", "stage_batch_size", "device", "wait_timeout_s"}


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in sorted(node.items()) if k not in _NON_SEMANTIC}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _file_stats(node: Any, out: dict) -> None:
    if isinstance(node, dict):
        for v in node.values():
            _file_stats(v, out)
    elif isinstance(node, list):
        for v in node:
            _file_stats(v, out)
    elif isinstance(node, str) and len(node) < 4096 and ("/" in node or "." in node):
        p = Path(node)
        try:
            if p.exists():
                st = p.stat()
                out[str(p.resolve())] = [st.st_size, st.st_mtime_ns]
        except OSError:
            pass


def fingerprint(cfg: DictConfig) -> str:
    """sha256 of the semantic config + file stats (see module docstring)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    semantic = _strip(data)
    stats: dict = {}
    _file_stats(semantic, stats)
    blob = json.dumps(
        {"config": semantic, "files": stats, "format": MANIFEST_FORMAT}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def clean_dir(cfg: DictConfig) -> Path:
    if cfg.get("raw") is None:
        raise ValueError("preprocess.raw: no raw source configured (e.g. raw=noisy_synthetic)")
    return Path(cfg.out_dir) / fingerprint(cfg)[:16]


def build_gate(cfg: DictConfig):
    g = cfg.get("gate")
    if not g or "_target_" not in g:
        return None
    return instantiate(g)


def build_stages(cfg: DictConfig) -> list:
    stages = []
    for name, node in (cfg.get("stages") or {}).items():
        if node is None:
            continue
        stage = instantiate(node)
        if getattr(stage, "name", None) != name:
            raise ValueError(
                f"preprocess.stages.{name}: the stage calls itself {getattr(stage, 'name', None)!r}"
            )
        stages.append(stage)
    return stages


def calibrate(cfg: DictConfig, raw, gate, out: Path, pre) -> dict:
    """Scores matched vs shuffled raw pairs of the calibration split. The false-accept rate is measured on shuffled
    pairs, so noise among the raw pairs does not bias the threshold; it only lowers the reported true-accept rate."""
    c = cfg.calibration
    split = c.split if raw.records(c.split) else "train"
    from collections import Counter

    items = pre.validate([r for r in raw.records(split) if r.image is not None and r.caption], Counter())
    items = items[: c.size]
    if len(items) < 16:
        raise ValueError(f"preprocess.calibration: {len(items)} valid pairs in split {split!r}; need >= 16")
    res = gate.calibrate(
        [it.image for it in items], [it.record.caption for it in items], out, target_far=c.target_far
    )
    user = (cfg.get("gate") or {}).get("threshold")
    gate.threshold = res["suggested_threshold"] if user is None else float(user)
    res["used_threshold"] = gate.threshold
    res["split"] = split
    atomic_write_text(out / "calibration.json", json.dumps(res, indent=2, default=str))
    return res


def dist_info() -> tuple[int, int, Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist.barrier
    return 0, 1, None


def build(cfg: DictConfig, *, rank: int = 0, world_size: int = 1, barrier=None):
    """(raw source, gate or None, Preprocessor) of a preprocessing config."""
    import torch

    from datamodules.preprocess.pipeline import Preprocessor

    torch.manual_seed(cfg.seed)  # models without weights (tests) are the same on every rank and every run
    raw = instantiate(cfg.raw)
    gate = build_gate(cfg)
    pre = Preprocessor(
        gate,
        build_stages(cfg),
        repair_rounds=cfg.repair_rounds,
        min_side=cfg.min_side,
        max_pixels=cfg.max_pixels,
        cache_dir=cfg.cache_dir,
        batch_size=cfg.batch_size,
        stage_batch_size=cfg.stage_batch_size,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        barrier=barrier,
        attention=instantiate(cfg.attention) if cfg.get("attention") else None,
        attention_threshold=cfg.get("attention_threshold"),
    )
    return raw, gate, pre


def run_preprocess(
    cfg: DictConfig, out: Path | None = None, *, calibrate_only: bool = False, distributed: bool = True
) -> dict:
    """Runs the whole preprocessing config into `out` (default: `clean_dir(cfg)`); returns the reports. The caller's
    torch RNG state is left untouched (a training run gets the same model init whether or not it had to build its
    manifest first). distributed=False: this process does all the work even inside a process group (Lightning's
    `prepare_data` runs on one rank only)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return _run_preprocess(cfg, out, calibrate_only=calibrate_only, distributed=distributed)


def _run_preprocess(
    cfg: DictConfig, out: Path | None, *, calibrate_only: bool, distributed: bool = True
) -> dict:
    out = out or clean_dir(cfg)
    rank, world, barrier = dist_info() if distributed else (0, 1, None)
    out.mkdir(parents=True, exist_ok=True)
    raw, gate, pre = build(cfg, rank=rank, world_size=world, barrier=barrier)
    reports: dict[str, Any] = {}
    t0 = time.perf_counter()
    if gate is not None:
        reports["calibration"] = calibrate(cfg, raw, gate, out / "calibration", pre)
    if calibrate_only:
        return reports
    for split in cfg.splits:
        records = raw.records(split)
        skipped = (getattr(raw, "skipped", None) or {}).get(split)
        # rows the reader could not turn into records go into the split's reports too
        reports[split] = pre.run(records, out, split, skipped_by_source=dict(skipped or {}))["report"]
    if rank == 0:
        fp = clean_dir(cfg).name  # the folder's name, also when building into a private folder first
        meta = {
            "fingerprint": fp,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "seconds": round(time.perf_counter() - t0, 2),
            "reports": {k: v for k, v in reports.items()},
        }
        atomic_write_text(out / "preprocess.json", json.dumps(meta, indent=2, default=str))
        atomic_write_text(out / "DONE", fp + "\n")
    if barrier is not None:
        barrier()
    return reports


def ensure_clean(cfg: DictConfig) -> Path:
    """The clean manifest folder for `cfg`: reused when up to date, rebuilt when missing or stale.

    One lock per fingerprint folder: concurrent runs (two trainings of one config, several seeds at once) take it
    in turn and the later ones reuse the first one's result. The build goes to a private folder renamed into place
    when complete, so no reader ever sees a half-written manifest or an image being rewritten. Non-zero ranks of a
    launcher that starts all ranks at once (torchrun) wait for rank 0's `DONE` marker."""
    out = clean_dir(cfg)
    if (out / "DONE").is_file():
        log.info("clean manifest up to date: %s", out)
        return out
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if rank != 0:
        deadline = time.time() + float(cfg.get("wait_timeout_s", 6 * 3600))
        while not (out / "DONE").is_file():
            if time.time() > deadline:
                raise TimeoutError(f"rank {rank}: rank 0 did not finish preprocessing into {out}")
            time.sleep(2)
        return out
    with file_lock(out.parent / f".{out.name}.lock"):
        if (out / "DONE").is_file():
            log.info("clean manifest built by a concurrent run: %s", out)
            return out
        log.info("clean manifest missing or stale: preprocessing into %s", out)
        print(f"preprocessing raw data into {out} (missing or stale) ...", flush=True)
        build = out.parent / f".{out.name}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            run_preprocess(cfg, build, distributed=False)
            if out.exists():  # an incomplete folder of a killed run (no DONE): replaced
                shutil.rmtree(out)
            os.replace(build, out)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return out

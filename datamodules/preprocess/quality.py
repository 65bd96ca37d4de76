"""Preprocessing quality on the noisy synthetic world, measured against the ground truth the world keeps
(`meta["noise"]`, the scene graph of every image): used by benchmarks/gate_quality.py and its tests."""

from __future__ import annotations

from collections.abc import Sequence

from datamodules.records import Record
from datamodules.world.claims import holds, parse_claim
from datamodules.world.scene import World


def true_pair(r: Record, world: World) -> bool:
    """Whether the record's caption is true of its image's scene."""
    claim = parse_claim(r.caption or "")
    scene = getattr(r.image, "scene", None)
    return claim is not None and scene is not None and holds(claim, scene, world.relation_margin)


def input_true_rate(records: Sequence[Record]) -> tuple[float, int]:
    """Share of clean pairs among the raw pairs (call before preprocessing, which fills lone records in)."""
    pairs = [r for r in records if r.image is not None and r.caption]
    return sum(r.meta.get("noise") == "clean" for r in pairs) / max(len(pairs), 1), len(pairs)


def quality(records: Sequence[Record], kept: Sequence[Record], world: World) -> dict:
    """Gate precision / recall for rejecting mismatched pairs on the first pass, and the share of true pairs per
    outcome (kept as is, repaired, captioned, generated) and in the whole clean manifest."""
    gated = [
        r for r in records if r.meta.get("noise") in ("clean", "mismatched") and "gate_first_pass" in r.meta
    ]
    rejected = [r for r in gated if not r.meta["gate_first_pass"]]
    mism = [r for r in gated if r.meta["noise"] == "mismatched"]
    tp = sum(r.meta["noise"] == "mismatched" for r in rejected)
    by = {
        k: [r for r in kept if r.meta.get("produced", "kept") == k]
        for k in ("kept", "repaired", "captioned", "generated")
    }

    def frac(rs):
        return round(sum(true_pair(r, world) for r in rs) / max(len(rs), 1), 4)

    return {
        "gate_reject_precision": round(tp / max(len(rejected), 1), 4),
        "gate_reject_recall": round(tp / max(len(mism), 1), 4),
        "rejected_first_pass": len(rejected),
        "mismatched": len(mism),
        **{f"{k}_count": len(v) for k, v in by.items()},
        **{f"{k}_true": frac(v) for k, v in by.items()},
        "clean_manifest_true_pair_rate": frac(kept),
        "clean_pairs": len(kept),
    }

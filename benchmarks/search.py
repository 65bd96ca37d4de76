"""Search benchmarks: index speed and compositional search quality.

    python benchmarks/search.py speed                                    # build throughput + query latency
    python benchmarks/search.py compositional runA/last.ckpt runB/last.ckpt [--pairs 300]

speed: (1) build throughput: `SearchIndex.build` on rendered synthetic images with the tiny ViT (images/s, embedding
included); (2) query latency p50/p99 of single text-embedding-sized queries (one at a time, random unit vectors,
dim 512) at 10k and 100k items, exact (`flat`) vs `ivf` (nlist 4*sqrt(n), nprobe nlist/16), with IVF recall@10
against exact on the same queries, and the index build (train + add) time.

compositional: queries are the two captions of Winoground-style pairs of the checkpoint's synthetic world (a scene
and its twin with the two objects' colours, or positions, swapped); both scenes of every pair are in the index, so
the twin is the hard distractor. Text->image R@1 / R@5 per model (a hit = the query's own scene), per swap kind, and how often the swapped twin
ranks above the query's own scene (50% = the model cannot tell them apart; the binding part of the problem).
Prints markdown tables and appends JSON lines to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.world.render import render_scene  # noqa: E402
from lightning_modules.search import load_scorer  # noqa: E402
from lightning_modules.search.index import SearchIndex, make_faiss_index  # noqa: E402


def _emit(out: Path, row: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


def build_throughput(n_images: int, out: Path) -> dict:
    import torch

    from datamodules.benchmarks.synthetic import SyntheticBenchmark
    from datamodules.world import World
    from lightning_modules.inference import ClipScorer
    from lightning_modules.model_factory import ModelSpec

    world = World(seed=0)
    bench = SyntheticBenchmark(num_items=0, num_winoground=n_images // 4, max_scenes=20 * n_images)
    _, wino = bench.items(world)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n, it in enumerate(wino):
            for s, (scene, cap) in enumerate(zip(it["scenes"], it["captions"])):
                p = Path(tmp) / f"{n}_{s}.png"
                render_scene(scene, 48).save(p)
                rows.append({"id": f"{n}_{s}", "image": str(p), "caption": cap})
        manifest = Path(tmp) / "m.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        torch.manual_seed(0)
        spec = ModelSpec(name="tiny-vit")
        scorer = ClipScorer(spec.build().eval(), spec.image_transform(), spec.tokenizer(), batch_size=256)
        t0 = time.perf_counter()
        index = SearchIndex.build(scorer, "tiny-vit:", manifest, Path(tmp) / "idx")
        wall = time.perf_counter() - t0
    row = {
        "what": "build",
        "model": "tiny-vit (48 px)",
        "images": index.meta["count"],
        "captions": len(index.text_rows),
        "seconds": round(wall, 2),
        "images_per_s": round(index.meta["count"] / wall, 1),
        "torch_threads": torch.get_num_threads(),
    }
    _emit(out, row)
    return row


def latency(n: int, kind: str, dim: int, queries: int, out: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(256, dim))
    x = centers[rng.integers(0, 256, n)] + 0.7 * rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[rng.integers(0, n, queries)] + 0.05 * rng.normal(size=(queries, dim)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    t0 = time.perf_counter()
    index = make_faiss_index(dim, kind, n)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    build = time.perf_counter() - t0
    if hasattr(index, "nprobe"):
        index.nprobe = max(1, index.nlist // 16)
    times, found = [], []
    for i in range(queries):
        t = time.perf_counter()
        _, ids = index.search(q[i : i + 1], 10)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    row = {
        "what": "query",
        "items": n,
        "kind": kind,
        "dim": dim,
        "queries": queries,
        "build_s": round(build, 3),
        "p50_ms": round(1000 * statistics.median(times), 3),
        "p99_ms": round(1000 * float(np.percentile(times, 99)), 3),
    }
    if kind != "flat":
        exact = make_faiss_index(dim, "flat", n)
        exact.add(x)
        _, e = exact.search(q, 10)
        row["recall_at_10_vs_exact"] = round(
            float(np.mean([len(set(e[i]) & set(found[i])) / 10 for i in range(queries)])), 4
        )
        row["nlist"], row["nprobe"] = index.nlist, index.nprobe
    _emit(out, row)
    return row


def compositional(ckpts: list[str], pairs: int, out: Path) -> list[dict]:
    import torch

    from datamodules.benchmarks.synthetic import SyntheticBenchmark
    from datamodules.sources.synthetic import world_from_run_config
    from lightning_modules.inference import load_checkpoint

    rows = []
    for ckpt in ckpts:
        _, _, run_cfg = load_checkpoint(ckpt)
        world, size = world_from_run_config(run_cfg)
        bench = SyntheticBenchmark(num_items=0, num_winoground=pairs // 2, max_scenes=50 * pairs)
        _, wino = bench.items(world)
        scorer = load_scorer(ckpt, "cpu")
        with tempfile.TemporaryDirectory() as tmp:
            items = []
            for n, it in enumerate(wino):
                for s, scene in enumerate(it["scenes"]):
                    p = Path(tmp) / f"{n}_{s}.png"
                    render_scene(scene, size or 48).save(p)
                    items.append({"id": f"{n}_{s}", "image": str(p), "caption": it["captions"][s]})
            manifest = Path(tmp) / "m.jsonl"
            manifest.write_text("".join(json.dumps(r) + "\n" for r in items))
            index = SearchIndex.build(scorer, ckpt, manifest, Path(tmp) / "idx")
            hits: dict[str, list[tuple[bool, bool, bool]]] = {}
            for n, it in enumerate(wino):
                for s in range(2):
                    ranked = [h["id"] for _, h in index.search_text(scorer, it["captions"][s], k=len(items))]
                    own, twin = f"{n}_{s}", f"{n}_{1 - s}"
                    above = ranked.index(twin) < ranked.index(
                        own
                    )  # the swapped twin outranks the right scene
                    for key in (it["kind"], "all"):
                        hits.setdefault(key, []).append((ranked[0] == own, own in ranked[:5], above))
        tags = run_cfg.get("tags") or ["?"]
        for key, hs in hits.items():
            row = {
                "what": "compositional",
                "model": f"{tags[0]}-seed{run_cfg.get('seed')}",
                "ckpt": ckpt,
                "kind": key,
                "queries": len(hs),
                "index_size": len(items),
                "r1": round(100 * sum(h[0] for h in hs) / len(hs), 1),
                "r5": round(100 * sum(h[1] for h in hs) / len(hs), 1),
                "twin_above_own": round(100 * sum(h[2] for h in hs) / len(hs), 1),
            }
            _emit(out, row)
            rows.append(row)
        del scorer
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["speed", "compositional"])
    ap.add_argument("ckpts", nargs="*")
    ap.add_argument(
        "--pairs", type=int, default=300, help="Winoground-style pairs (2 images, 2 queries each)"
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--build-images", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search.jsonl")
    args = ap.parse_args()
    if args.mode == "speed":
        b = build_throughput(args.build_images, args.out)
        print(
            f"build: {b['images']} images + {b['captions']} captions in {b['seconds']} s = "
            f"{b['images_per_s']} images/s ({b['model']}, {b['torch_threads']} threads)\n"
        )
        print(
            "| items | kind | build (s) | p50 (ms) | p99 (ms) | recall@10 vs exact |\n|---:|---|---:|---:|---:|---:|"
        )
        for n in args.sizes:
            for kind in ("flat", "ivf"):
                r = latency(n, kind, 512, args.queries, args.out)
                print(
                    f"| {n:,} | {kind} | {r['build_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                    f"{r.get('recall_at_10_vs_exact', 1.0)} |"
                )
    else:
        if not args.ckpts:
            raise SystemExit("compositional: give one or more train.py checkpoints")
        rows = compositional(args.ckpts, args.pairs, args.out)
        print(
            "| model | swap kind | queries | index | text->image R@1 | R@5 | twin ranked above own (%) |\n"
            "|---|---|---:|---:|---:|---:|---:|"
        )
        for r in rows:
            print(
                f"| {r['model']} | {r['kind']} | {r['queries']} | {r['index_size']} | {r['r1']} | {r['r5']} | "
                f"{r['twin_above_own']} |"
            )


if __name__ == "__main__":
    main()

"""Downstream effect of preprocessing: CLIP trained (same steps, same model, plain contrastive loss) on

    raw             the noisy raw pairs as they are (gate=none, no stages; lone images / texts unused)
    gated           the pairs that pass the gate (no repair, no captioning, no text-to-image)
    gated_repaired  the full preprocessing: gate + repair (re-caption) + captioned lone images + drawn lone texts
    gated_reflect   the same with the `reflect` stage instead of `repair`: a rejected pair's caption is checked by
                    questions answered from the image and revised (look again, Reflection-V style)
    clean_oracle    the noise-free world (upper bound; data=synthetic)
    tiny_captioner  30% lone images (112 px) captioned by the tiny Qwen2.5-VL trained here (no repair); needs
                    `python -m lightning_modules.reflection.captioner --out logs/captioner`
    tiny_captioner_reflect  the same captioner, every caption it writes looked at again (`reflect_captions`)

    make scorers
    python benchmarks/preprocess_downstream.py --seeds 0 --mismatch 0.1
    python benchmarks/preprocess_downstream.py --summarize-only

All runs evaluate on the same clean test scenes (synthetic benchmark + test retrieval). Runs are resumable
(`<out>/mismatch<rate>/<variant>/seed<s>` with a metrics.json are skipped). Writes `<out>/summary.md` / `.json`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_experiments import COLUMNS, SWAP_REPLACE, load_runs, train_run, write_summary  # noqa: E402

from datamodules.benchmarks.collect import fmt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "raw": ["experiment=noisy_synthetic", "gate=none", "stages=[]"],
    "gated": ["experiment=noisy_synthetic", "stages=[]"],
    "gated_repaired": ["experiment=noisy_synthetic"],
    "gated_reflect": ["experiment=noisy_synthetic", "stages=[caption,reflect,text_to_image]"],
    "clean_oracle": [],
    "tiny_captioner": [
        "experiment=noisy_synthetic",
        "stages=[caption_tiny,text_to_image]",
        "preprocess.raw.lone_image_rate=0.3",
        "preprocess.raw.image_size=112",
    ],
    "tiny_captioner_reflect": [
        "experiment=noisy_synthetic",
        "stages=[caption_tiny,reflect_captions,text_to_image]",
        "preprocess.raw.lone_image_rate=0.3",
        "preprocess.raw.image_size=112",
    ],
}


def run(variant: str, seed: int, mismatch: float, out: Path, extra: list[str]) -> None:
    run_dir = out / f"mismatch{mismatch}" / variant / f"seed{seed}"
    noise = [] if variant == "clean_oracle" else [f"preprocess.raw.mismatch_rate={mismatch}"]
    overrides = [*VARIANTS[variant], *noise, f"seed={seed}", f"paths.root_dir={ROOT}", *extra]
    wall = train_run(run_dir, overrides, run_dir.parent / f"seed{seed}.log")
    if wall is not None:
        print(f"done mismatch {mismatch} {variant} seed {seed} in {wall:.0f}s", flush=True)


def summarize(out: Path) -> str:
    rows, data = [], {}
    for mdir in sorted(p for p in out.iterdir() if p.is_dir() and p.name.startswith("mismatch")):
        for variant in VARIANTS:
            vdir = mdir / variant
            runs = load_runs(vdir)
            if not runs:
                continue
            col = lambda key, runs=runs: [r[key] for r in runs if key in r]  # noqa: E731
            sr = [statistics.mean(r[f"eval/synthetic/{c}/acc"] for c in SWAP_REPLACE) for r in runs]
            t_r1 = [(r["test/i2t_r1"] + r["test/t2i_r1"]) / 2 for r in runs]
            entry = {
                "seeds": len(runs),
                "swap_replace_mean": sr,
                "test_r1_mean": t_r1,
                **{c: col(f"eval/synthetic/{c}/acc") for c in COLUMNS},
                "wall_seconds": col("_wall"),
            }
            data[f"{mdir.name}/{variant}"] = entry
            rows.append(
                f"| {mdir.name.removeprefix('mismatch')} | {variant} | {len(runs)} | **{fmt(sr)}** | {fmt(t_r1)} | "
                + " | ".join(fmt(entry[c]) for c in COLUMNS)
                + f" | {fmt([w / 60 for w in entry['wall_seconds']])} |"
            )
    head = ["mismatch", "data", "seeds", "swap+replace mean", "test R@1 (i2t+t2i)/2", *COLUMNS, "min/run"]
    return write_summary(out, head, rows, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--mismatch", nargs="+", type=float, default=[0.1])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "preprocess_downstream")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        for seed in args.seeds:
            for m in args.mismatch:
                for v in args.variants:
                    run(v, seed, m, args.out, args.extra)
                    summarize(args.out)
    print(summarize(args.out))


if __name__ == "__main__":
    main()

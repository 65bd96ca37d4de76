"""Caption truth before and after look-again on the synthetic world (symbolic backends, exact truth).

    python benchmarks/look_again.py [--scenes 1000] [--captioner-error 0.3] [--rounds 2] [--traces out.jsonl]

Captions come from the scene-graph captioner with `--captioner-error` (a wrong colour in that share of captions:
the noisy captions preprocessing repairs); each is looked at again with a scene-graph responder whose answers are
wrong with probability 0, 0.1, 0.2, 0.3. Reports truth rate before/after, captions revised, true captions broken by
a wrong answer, false captions fixed. Truth: `holds()` on the scene graph.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.benchmarks.collect import append_jsonl  # noqa: E402
from datamodules.preprocess.symbolic import SceneCaptioner  # noqa: E402
from datamodules.sources.synthetic import SyntheticWorldSource  # noqa: E402
from datamodules.world import World  # noqa: E402
from lightning_modules.reflection.look_again import (  # noqa: E402
    RuleRequester,
    SceneResponder,
    look_again,
    sft_record,
    truth,
    write_traces,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--captioner-error", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--errors", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument(
        "--traces", type=Path, default=None, help="write the SFT traces of the first error rate here"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "look_again.jsonl")
    args = ap.parse_args()
    world = World(seed=0)
    records = SyntheticWorldSource(world, num_train=0, num_val=0, num_test=args.scenes).records("test")
    captioner = SceneCaptioner(world, error_rate=args.captioner_error)
    captions = [captioner.describe(r, random.Random(i)) for i, r in enumerate(records)]
    print("| responder error | truth before | truth after | revised | true → false | false → true |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k, err in enumerate(args.errors):
        responder, stats, traces = (
            SceneResponder(world, err),
            dict.fromkeys(("before", "after", "revised", "broke", "fixed"), 0),
            [],
        )
        for i, (rec, cap) in enumerate(zip(records, captions)):
            scene = rec.image.scene
            res = look_again(cap, scene, RuleRequester(), responder, rounds=args.rounds, seed=i)
            b, a = truth(cap, scene, world), truth(res.caption, scene, world)
            stats["before"] += b
            stats["after"] += a
            stats["revised"] += res.revised
            stats["broke"] += b and not a
            stats["fixed"] += a and not b
            if k == 0 and args.traces:
                traces.append(sft_record(rec.id, "Describe the image in one sentence.", res) | {"true": a})
        n = len(records)
        row = {
            "responder_error": err,
            "captioner_error": args.captioner_error,
            "scenes": n,
            "rounds": args.rounds,
            **{key: round(100 * v / n, 1) for key, v in stats.items()},
        }
        print(
            f"| {err} | {row['before']} | {row['after']} | {row['revised']} | {row['broke']} | {row['fixed']} |"
        )
        append_jsonl(args.out, row)
        if traces:
            print(f"traces: {write_traces(args.traces, traces)}")


if __name__ == "__main__":
    main()

"""Caption truth of a trained captioner (lightning_modules/reflection/captioner.py) before and after look-again,
and why its false captions are false (per mentioned object: ok / colour / size / shape error).

    python -m lightning_modules.reflection.captioner --out logs/captioner          # SFT first
    python benchmarks/captioner_look_again.py logs/captioner/sft [--scenes 300]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.world import World  # noqa: E402
from datamodules.world.claims import claim_descs, holds, parse_claim  # noqa: E402
from lightning_modules.reflection.captioner import (  # noqa: E402
    generate_captions,
    load_captioner,
    synthetic_pairs,
    truth_rate,
)
from lightning_modules.reflection.look_again import RuleRequester, SceneResponder, look_again  # noqa: E402


def error_kinds(caption: str, scene, world: World) -> tuple[str, tuple[str, ...]] | None:
    """For a false caption: its claim type and which kinds of mismatch its objects have."""
    claim = parse_claim(caption)
    if claim is None or holds(claim, scene, world.relation_margin):
        return None
    kinds = set()
    for d in claim_descs(claim):
        if any(d.matches(o) for o in scene.objects):
            kinds.add("ok")
        elif any(o.shape == d.shape and (d.size is None or o.size == d.size) for o in scene.objects):
            kinds.add("colour")
        elif any(o.shape == d.shape for o in scene.objects):
            kinds.add("size")
        else:
            kinds.add("shape")
    return type(claim).__name__, tuple(sorted(kinds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="logs/captioner/sft")
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--errors", type=float, nargs="+", default=[0.0, 0.1])
    args = ap.parse_args()
    world = World(seed=0)
    model, processor = load_captioner(args.model)
    images, _, scenes = synthetic_pairs(world, "test", args.scenes)
    captions = generate_captions(model.eval(), processor, images)
    rows = {"after_sft": truth_rate(captions, scenes, world)}
    for err in args.errors:
        fixed = [
            look_again(c, s, RuleRequester(), SceneResponder(world, err), rounds=2, seed=i).caption
            for i, (c, s) in enumerate(zip(captions, scenes))
        ]
        rows[f"look_again_responder_err_{err}"] = truth_rate(fixed, scenes, world)
    why = Counter(k for c, s in zip(captions, scenes) if (k := error_kinds(c, s, world)) is not None)
    rows["false_caption_kinds"] = {f"{t}:{'+'.join(k)}": n for (t, k), n in why.most_common(10)}
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

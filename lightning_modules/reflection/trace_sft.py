"""SFT of the captioner on look-again traces (Reflection-V's cold start), and the captioner as its own summariser.

A trace round is: the image and the caption prompt, the captioner's caption, a user turn "look again" with the
questions and the answers given *with the image*, and the revision. Trained on such rounds (labels on the revision
only), the captioner learns to turn answers into a corrected caption itself; at inference the rule requester asks,
a responder answers (scene graph here, a VLM in general) and the *captioner* revises — instead of the symbolic
summariser of `look_again`.

    python -m lightning_modules.reflection.trace_sft logs/captioner/sft --out logs/captioner_traces --steps 1000

Traces come from the captioner's own captions of training scenes (what it must learn to fix), revised by
`look_again` with a perfect responder; rounds that confirm a true caption are kept too (the model must also learn
when to leave a caption alone). Plain (image, caption) pairs are mixed in (`--pair-share`) so captioning is not
forgotten. Reports caption truth on test scenes: the captioner alone, + look-again with the symbolic summariser,
+ look-again with the captioner as summariser, each at responder error 0 and 0.1.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from datamodules.world import World
from datamodules.world.claims import NUMBERS
from lightning_modules.reflection.captioner import (
    PROMPT,
    caption_prompt,
    generate_after,
    generate_captions,
    load_captioner,
    sft_loop,
    synthetic_pairs,
    truth_rate,
)
from lightning_modules.reflection.look_again import RuleRequester, SceneResponder, look_again

log = logging.getLogger(__name__)


def _answer_words(a: str) -> str:
    """Count answers are digits; the captioner's vocabulary spells numbers ("2" -> "two", "0" -> "no")."""
    if a.isdigit():
        n = int(a)
        return "no" if n == 0 else NUMBERS.get(n, a)
    return a


def look_turn(qa: list[dict]) -> str:
    """The user turn of a look-again round in the tiny captioner's lower-case word vocabulary."""
    text = "look again " + " ".join(f"{x['q']} {_answer_words(x['a'])}" for x in qa)
    return " ".join(text.lower().replace(".", " ").replace("?", " ? ").split())


def round_prefix(processor: Any, caption: str, qa: list[dict]) -> str:
    """Chat text up to the revision: [image + prompt] -> caption -> [look again + answers] -> (revision)."""
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
        {"role": "assistant", "content": caption},
        {"role": "user", "content": look_turn(qa)},
    ]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def trace_examples(
    captions: list[str], scenes: list, world: World, seed: int = 0
) -> list[tuple[int, str, str]]:
    """(image index, caption before, questions and answers, revision) per look-again round of each caption, from
    `look_again` with a perfect responder (and the describe fallback)."""
    out = []
    responder = SceneResponder(world, 0.0)
    for i, (c, s) in enumerate(zip(captions, scenes)):
        res = look_again(c, s, RuleRequester(), responder, rounds=2, seed=seed + i, describe_fallback=True)
        for t in res.trace:
            out.append((i, t["before"], t["qa"], t["revised"]))
    return out


def load_reflect_traces(paths: list[str | Path]) -> tuple[list, list[tuple[int, str, list, str]]]:
    """Images and (image index, caption before, questions and answers, revision) rounds from the `reflect` stage's
    `reflect_sft_<split>.jsonl` files (image paths relative to the file's folder, as the manifest writes them)."""
    from PIL import Image

    images, examples = [], []
    for path in map(Path, paths):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            rec = json.loads(line)
            if "rounds" not in rec or not rec.get("messages"):
                raise ValueError(f"{path}:{n}: not a reflect_sft record (needs 'messages' and 'rounds')")
            ref = Path(rec["messages"][0]["content"][0]["image"])
            with Image.open(ref if ref.is_absolute() else path.parent / ref) as im:
                images.append(im.convert("RGB"))
            examples += [(len(images) - 1, t["before"], t["qa"], t["revised"]) for t in rec["rounds"]]
    return images, examples


def sft_batch(
    processor: Any, images: list, prefixes: list[str], targets: list[str]
) -> dict[str, torch.Tensor]:
    """Right-padded inputs with labels on each target (+ <|im_end|>) only; prefixes may differ in length."""
    processor.tokenizer.padding_side = "right"
    enc = processor(
        text=[p + t + " <|im_end|>" for p, t in zip(prefixes, targets)],
        images=images,
        return_tensors="pt",
        padding=True,
    )
    labels = enc["input_ids"].clone()
    for i, (p, im) in enumerate(zip(prefixes, images)):
        n = processor(text=[p], images=[im], return_tensors="pt")["input_ids"].shape[1]
        labels[i, :n] = -100
    labels[enc["attention_mask"] == 0] = -100
    enc["labels"] = labels
    return enc


def look_again_with_captioner(
    model: Any,
    processor: Any,
    images: list,
    captions: list[str],
    scenes: list,
    world: World,
    *,
    error_rate: float,
    rounds: int = 2,
    batch_size: int = 32,
    seed: int = 0,
) -> tuple[list[str], list[list[dict]]]:
    """Up to `rounds` rounds: the rule requester's questions (and follow-ups) answered from the scene by a responder
    wrong with probability `error_rate`, then the *captioner* writes the revision. Returns captions and traces."""
    caps, traces = list(captions), [[] for _ in captions]
    active = list(range(len(caps)))
    responder = SceneResponder(world, error_rate)
    for r in range(rounds):
        qa = {}
        for i in active:  # one symbolic round gives the questions and answers; its own revision is not used
            res = look_again(
                caps[i],
                scenes[i],
                RuleRequester(),
                responder,
                rounds=1,
                seed=seed + 1000 * r + i,
                describe_fallback=True,
            )
            qa[i] = res.trace[0]["qa"] if res.trace else []
        todo = [i for i in active if qa[i]]
        new: dict[int, str] = {}
        for s in range(0, len(todo), batch_size):
            idx = todo[s : s + batch_size]
            outs = generate_after(
                model,
                processor,
                [images[i] for i in idx],
                [round_prefix(processor, caps[i], qa[i]) for i in idx],
            )
            new.update(zip(idx, outs))
        still = []
        for i in todo:
            traces[i].append({"round": r, "qa": qa[i], "before": caps[i], "revised": new[i]})
            if new[i] and new[i] != caps[i]:
                caps[i] = new[i]
                still.append(i)
        active = still
    return caps, traces


def train(
    model: Any,
    processor: Any,
    images: list,
    examples: list[tuple[int, str, list, str]],
    pairs: list[tuple[int, str]],
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 5e-4,
    pair_share: float = 0.25,
    seed: int = 0,
) -> list[float]:
    """AdamW on mini-batches of trace rounds (revision labels) mixed with plain caption pairs."""
    plain = caption_prompt(processor)
    n_pairs = round(batch_size * pair_share)

    def batch(rng: random.Random) -> dict[str, torch.Tensor]:
        ex = rng.sample(examples, batch_size - n_pairs)
        pp = rng.sample(pairs, n_pairs)
        ims = [images[i] for i, *_ in ex] + [images[i] for i, _ in pp]
        prefixes = [round_prefix(processor, c, qa) for _, c, qa, _ in ex] + [plain] * len(pp)
        targets = [t for *_, t in ex] + [c for _, c in pp]
        return sft_batch(processor, ims, prefixes, targets)

    return sft_loop(model, batch, steps=steps, lr=lr, seed=seed, tag="trace sft")


def evaluate(model, processor, images, scenes, world, errors=(0.0, 0.1), seed: int = 0) -> dict[str, Any]:
    caps = generate_captions(model, processor, images)
    out: dict[str, Any] = {"captioner": truth_rate(caps, scenes, world)}
    for err in errors:
        sym = [
            look_again(
                c,
                s,
                RuleRequester(),
                SceneResponder(world, err),
                rounds=2,
                seed=seed + i,
                describe_fallback=True,
            ).caption
            for i, (c, s) in enumerate(zip(caps, scenes))
        ]
        out[f"look_again_symbolic_summariser_err{err}"] = truth_rate(sym, scenes, world)
        own, _ = look_again_with_captioner(
            model, processor, images, caps, scenes, world, error_rate=err, seed=seed
        )
        out[f"look_again_captioner_summariser_err{err}"] = truth_rate(own, scenes, world)
    return out


def diagnose(model: Any, processor: Any, world: World, n: int = 300, offset: int = 20000) -> dict[str, dict]:
    """How the captioner handles look-again rounds of its own captions on training-distribution scenes, by round
    kind: `confirm` (the answers agree: target = the caption), `edit` (an answer changes a word), `fallback` ("what
    is in the image?": a fresh description). Per kind: rounds, share whose revision equals the target exactly,
    share that copies the caption unchanged."""
    images, _, scenes = synthetic_pairs(world, "train", n, offset=offset)
    own = generate_captions(model, processor, images)
    ex = trace_examples(own, scenes, world)
    outs: list[str] = []
    for s in range(0, len(ex), 32):
        chunk = ex[s : s + 32]
        outs += generate_after(
            model,
            processor,
            [images[i] for i, *_ in chunk],
            [round_prefix(processor, before, qa) for _, before, qa, _ in chunk],
        )
    stats: dict[str, list[int]] = {}
    for (_, before, qa, rev), out in zip(ex, outs):
        if any(x["q"] == "What is in the image?" for x in qa):
            kind = "fallback"
        else:
            kind = "confirm" if before == rev else "edit"
        st = stats.setdefault(kind, [0, 0, 0])
        st[0] += 1
        st[1] += out == rev
        st[2] += out == before
    return {
        k: {"rounds": n_, "exact_revision": round(m / n_, 3), "copied_caption": round(c / n_, 3)}
        for k, (n_, m, c) in sorted(stats.items())
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "model", help="an SFT captioner folder (python -m lightning_modules.reflection.captioner)"
    )
    ap.add_argument("--out", type=Path, default=Path("logs/captioner_traces"))
    ap.add_argument("--train-scenes", type=int, default=4000)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--pair-share", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--diagnose", action="store_true", help="only print `diagnose()` of the model (no training)"
    )
    ap.add_argument(
        "--traces",
        nargs="+",
        type=Path,
        default=None,
        help="train on these reflect_sft_<split>.jsonl files of the preprocessing `reflect` stage instead of traces "
        "of the captioner's own captions (pairs for --pair-share: their final captions)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    world = World(seed=0)
    model, processor = load_captioner(args.model)
    model.eval()
    if args.diagnose:
        print(json.dumps(diagnose(model, processor, world), indent=2))
        return
    te_img, _, te_scenes = synthetic_pairs(world, "test", args.test)
    before = evaluate(model, processor, te_img, te_scenes, world, seed=args.seed)
    log.info("before: %s", json.dumps(before))
    t0 = time.perf_counter()
    if args.traces:
        tr_img, examples = load_reflect_traces(args.traces)
        last = {i: rev for i, _, _, rev in examples}  # an image's final revision
        pairs = sorted(last.items())
    else:
        # the captioner's own captions of training scenes (a different slice than its SFT pairs), looked at again
        tr_img, tr_cap, tr_scenes = synthetic_pairs(world, "train", args.train_scenes, offset=20000)
        own = []
        for s in range(0, len(tr_img), 64):
            own += generate_captions(model, processor, tr_img[s : s + 64])
        examples = trace_examples(own, tr_scenes, world, seed=args.seed)
        pairs = list(enumerate(tr_cap))
    gen_s = time.perf_counter() - t0
    revised = sum(e[1] != e[3] for e in examples)
    log.info(
        "%d trace rounds (%d revise the caption) from %d scenes in %.0fs",
        len(examples),
        revised,
        len(tr_img),
        gen_s,
    )
    t0 = time.perf_counter()
    losses = train(
        model,
        processor,
        tr_img,
        examples,
        pairs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        pair_share=args.pair_share,
        seed=args.seed,
    )
    train_s = time.perf_counter() - t0
    after = evaluate(model, processor, te_img, te_scenes, world, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out / "model")
    processor.save_pretrained(args.out / "model")
    res = {
        "from": str(args.model),
        "args": {k: str(v) for k, v in vars(args).items()},
        "trace_rounds": len(examples),
        "trace_rounds_revising": revised,
        "trace_generation_seconds": round(gen_s, 1),
        "train_seconds": round(train_s, 1),
        "final_loss": sum(losses[-50:]) / min(50, len(losses)),
        "before_trace_sft": before,
        "after_trace_sft": after,
        "diagnosis_after": diagnose(model, processor, world),
    }
    (args.out / "trace_sft_result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

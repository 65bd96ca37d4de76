"""`reflect` (look again, Reflection-V style): a pair that failed the gate (or the attention check) is verified
and revised by a question-answer loop instead of a blind re-caption. A *requester* asks targeted questions about
what the caption claims (colours, presence, counts, positions), a *responder* answers them looking at the image,
and a *summariser* revises the caption from the answers, for up to `rounds` rounds inside one call; the pipeline
then gates the revision again (up to `preprocess.repair_rounds` times).

    stages=[caption,reflect,text_to_image]          # synthetic world: questions answered from the scene graph
    stages=[caption_vlm,reflect_vlm] preprocess.stages.reflect.backend.model=/models/Qwen2.5-VL-3B-Instruct

Every trace is kept: in the record's provenance, in `reflect_<split>.jsonl` (one line per reflected record: the
caption before, each round's questions and answers and revision, whether the record reached the clean manifest)
and, for the records that did, in `reflect_sft_<split>.jsonl` as chat-format SFT examples (image, caption,
"Look again" turns with the answers, the revision) — the cold-start data of the paper; `python -m
lightning_modules.reflection.trace_sft <captioner> --traces <dir>/reflect_sft_train.jsonl` trains on them.

Backend contract: `identity() -> dict` and `reflect(images, records, seeds) -> [dict | None]`, each dict
`{"caption": final caption, "initial": caption before, "trace": [{"round", "qa": [{"q", "a"}], "revised"}]}`;
None (or an empty caption) counts as `reflect_failed`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.atomic import atomic_write_text
from datamodules.preprocess.stages.base import Item, Stage, StageContext, normalize_text


class JsonCodec:
    """Cache payload of a JSON-serialisable output (None too: a failure is not retried on re-runs)."""

    @staticmethod
    def encode(value: Any) -> bytes:
        return json.dumps({"value": value}, ensure_ascii=False).encode("utf-8")

    @staticmethod
    def decode(blob: bytes) -> Any:
        return json.loads(blob.decode("utf-8"))["value"]


def sft_messages(image: str, prompt: str, initial: str, trace: list[dict]) -> list[dict]:
    """One look-again trace as chat messages: the caption, then per round a user turn "Look again. Q A. ..." and
    the assistant's revision."""
    turns = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": initial},
    ]
    for t in trace:
        look = "Look again. " + " ".join(f"{x['q']} {x['a']}." for x in t["qa"])
        turns += [{"role": "user", "content": look}, {"role": "assistant", "content": t["revised"]}]
    return turns


class ReflectStage(Stage):
    """Args: backend (see the module docstring); prompt: the caption prompt written into the SFT examples;
    phase: `repair` (default: pairs the gate or the attention check rejected) or `produce` (before the gate: every
    caption a `caption` stage wrote in this run looks again — the captioner reflecting on its own output, which a
    weak gate would otherwise accept; other items pass through untouched); name: the stage's config key (two
    reflect stages, one per phase, need two names)."""

    def __init__(
        self,
        backend,
        prompt: str = "Describe this image in one short sentence.",
        phase: str = "repair",
        name: str = "reflect",
    ) -> None:
        self.name = name
        if phase not in ("repair", "produce"):
            raise ValueError(f"reflect.phase must be 'repair' or 'produce', got {phase!r}")
        self.backend = backend
        self.prompt = prompt
        self.phase = phase
        self.results: dict[
            str, dict
        ] = {}  # record id -> the record's reflection (all rounds of the pipeline)

    def begin_split(self) -> None:
        self.results = {}

    def __call__(self, items: list[Item], ctx: StageContext) -> list[Item]:
        if self.phase == "produce":
            own = [
                it
                for it in items
                if it.image is not None and any(p.get("stage") == "caption" for p in it.record.provenance)
            ]
            ids = {id(it) for it in own}
            return [it for it in items if id(it) not in ids] + self._reflect(own, ctx)
        return self._reflect(items, ctx)

    def _reflect(self, items: list[Item], ctx: StageContext) -> list[Item]:
        outs = self.backend_map(items, ctx, "reflect", JsonCodec)
        kept = []
        for it, out in zip(items, outs):
            text = normalize_text(out.get("caption")) if isinstance(out, dict) else ""
            if not text:
                ctx.drop(it, "reflect_failed")
                continue
            r = it.record
            r.meta.setdefault("original_caption", r.caption)
            trace = out.get("trace", [])
            r.provenance.append(
                {
                    "stage": self.name,
                    "round": ctx.round,
                    "model": self.backend.identity(),
                    "before": r.caption,
                    "trace": trace,
                }
            )
            entry = self.results.setdefault(r.id, {"id": r.id, "rounds": []})
            entry["rounds"].append(
                {"pipeline_round": ctx.round, "before": r.caption, "after": text, "trace": trace}
            )
            r.caption = text
            kept.append(it)
        return kept

    def write_outputs(self, out_dir: Path, split: str, rows: dict[str, dict]) -> dict[str, Any]:
        """Writes the traces of this split; `rows` maps the ids of the records in the clean manifest to their
        manifest rows (image path, final caption). Returns counts for the report."""
        lines, sft = [], []
        for rid, entry in self.results.items():
            row = rows.get(rid)
            lines.append({**entry, "kept": row is not None, "final": row["caption"] if row else None})
            if row is None:
                continue
            first = entry["rounds"][0]["before"]
            trace = [t for rnd in entry["rounds"] for t in rnd["trace"]]
            if not trace:  # the backend changed the caption without a question: nothing to learn from
                continue
            sft.append(
                {
                    "id": rid,
                    "messages": sft_messages(row["image"], self.prompt, first, trace),
                    "final": row["caption"],
                    "rounds": trace,  # the same rounds as data: [{"round", "qa": [{"q", "a"}], "before", "revised"}]
                }
            )
        atomic_write_text(out_dir / f"reflect_{split}.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
        atomic_write_text(out_dir / f"reflect_sft_{split}.jsonl", "".join(json.dumps(x) + "\n" for x in sft))
        self.results = {}
        return {
            "reflected": len(lines),
            "reflected_kept": sum(x["kept"] for x in lines),
            "sft_examples": len(sft),
        }

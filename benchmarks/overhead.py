"""Framework overhead: the Lightning training step of this project vs a bare PyTorch/open_clip loop, same tensors.

    python benchmarks/overhead.py                                   # tiny ViT, batch 64, CPU, fp32
    python benchmarks/overhead.py --model ViT-B-32 --image-size 224 --batch 256 --device cuda --precision bf16-mixed
    python benchmarks/overhead.py --count-ops 20 --hardneg 2                  # ops per step instead of time
    # host time alone: a micro CLIP whose compute is nearly nil
    python benchmarks/overhead.py --config-file benchmarks/models/micro-vit.json --model micro-vit --batch 2
    # a training recipe's real batch and losses: one batch of its loader (images normalised once), its loss terms
    python benchmarks/overhead.py --experiment hardneg

Both sides train the same architecture from the same initial weights on the same pre-made batch (already on the
device): encode all images in one call and all texts in one call, the contrastive loss (+ optional per-sample
text hard negatives), backward, AdamW with the same parameter groups, logit-scale clamp. The framework side is
`ClipModule` driven by `lightning.Trainer` (its logging, diagnostics, loops and hooks included; CSV logger every
10 steps as in real runs; no validation, no checkpoints). The two are interleaved step by step in one process: a
callback runs one bare step after each framework step, so drift and contention hit both alike. The framework's
step time is the interval between consecutive `on_train_batch_start` calls minus the bare step run in between.
Both compute the loss outside autocast (fp32 logits). Medians after warm-up; prints one JSON line and appends it to
`--out`.

`--count-ops N` counts instead of timing: the aten operations each side dispatches per step (a TorchDispatchMode,
backward and optimizer included) over N interleaved steps after warm-up. Every op is at least one kernel launch on
a GPU, so the count is a device-independent measure of the work the framework adds; on the CPU it separates that
from Python host time (which the count does not see).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.benchmarks.collect import append_jsonl  # noqa: E402
from datamodules.dataset import Batch  # noqa: E402
from lightning_modules.clip_module import ClipModule, param_groups  # noqa: E402
from lightning_modules.losses.base import LossInputs, LossSum  # noqa: E402
from lightning_modules.losses.contrastive import ContrastiveLoss  # noqa: E402
from lightning_modules.losses.hard_negative import HardNegativeText  # noqa: E402
from lightning_modules.model_factory import ModelSpec  # noqa: E402


def make_batch(b: int, k: int, size: int, ctx: int, device: str) -> Batch:
    g = torch.Generator().manual_seed(0)
    texts = torch.randint(1, 49000, (b * (1 + k), ctx), generator=g)
    texts[:, -1] = 49407  # EOT: open_clip pools at the argmax token id
    return Batch(
        images_XCHW=torch.randn(b, 3, size, size, generator=g).to(device),
        texts_YL=texts.to(device),
        img_neg_owner_M=torch.zeros(0, dtype=torch.long, device=device),
        img_neg_pair_M=torch.zeros(0, dtype=torch.long, device=device),
        txt_neg_owner_N=torch.arange(b, device=device).repeat_interleave(k),
        txt_neg_kind_N=["compositional/color"] * (b * k),
        ids_B=[str(i) for i in range(b)],
        image_keys_B=[str(i) for i in range(b)],
    )


def recipe_batch_and_loss(
    experiment: str, spec: ModelSpec, batch: int, device: str
) -> tuple[Batch, LossSum, dict]:
    """One training batch of `experiment=<name>` from its real loader (generators, trimming; one process) on
    `device` (images still uint8: the caller normalises them once with `ClipModule.normalize_images`), and the
    recipe's loss terms (`training.build_loss`). Also returns the batch's composition."""
    from hydra import compose, initialize_config_dir

    from lightning_modules.training import _fill_image_size, build_datamodule, build_loss

    overrides = [f"experiment={experiment}", f"data.batch_size={batch}", "data.num_workers=0"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    _fill_image_size(cfg, spec)
    dm = build_datamodule(cfg, spec)
    dm.prepare_data()
    dm.setup("fit")
    real = next(iter(dm.train_dataloader())).to(device)
    loss = build_loss(cfg)
    shape = {
        "images": real.images_XCHW.shape[0],
        "captions": real.texts_YL.shape[0],
        "token_columns": real.texts_YL.shape[1],
        "loss_terms": sorted(loss.terms),
    }
    return real, loss, shape


def loss_terms(k: int) -> LossSum:
    terms = {"contrastive": ContrastiveLoss()}
    if k:
        terms["hardneg_text"] = HardNegativeText(mode="per_sample")
    return LossSum(terms)


class Bare:
    """The reference loop: the same work without Lightning."""

    def __init__(
        self, model, batch: Batch, loss: LossSum, precision: str, device: str, max_logit_scale: float
    ) -> None:
        self.model, self.batch, self.loss = model, batch, loss
        self.opt = torch.optim.AdamW(param_groups(model, 0.1), lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
        self.autocast = (
            partial(torch.autocast, device_type=device, dtype=torch.bfloat16)
            if precision == "bf16-mixed"
            else contextlib.nullcontext
        )
        self.max_logit_scale = max_logit_scale
        self.times: list[float] = []

    def step(self, sync: bool = True) -> None:
        t0 = time.perf_counter()
        b = self.batch.num_pos
        with self.autocast():  # one forward (normalised features + scale), as ClipModule.encode
            img, txt, scale = self.model(self.batch.images_XCHW, self.batch.texts_YL)[:3]
        x = LossInputs(
            img_BD=img[:b],
            txt_BD=txt[:b],
            logit_scale=scale,
            img_neg_MD=img[b:],
            txt_neg_ND=txt[b:],
            img_neg_owner_M=self.batch.img_neg_owner_M,
            img_neg_pair_M=self.batch.img_neg_pair_M,
            txt_neg_owner_N=self.batch.txt_neg_owner_N,
            img_neg_kind=self.batch.img_neg_kind_M,
            txt_neg_kind=self.batch.txt_neg_kind_N,
        )
        total = sum(v for n, v in self.loss(x).items() if n.endswith("_loss"))
        total.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, self.max_logit_scale)
        if sync and self.batch.images_XCHW.is_cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - t0)

    def block(self, n: int) -> float:
        """n steps back to back, synchronised only at the end (steady-state throughput); seconds per step."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.step(sync=False)
        if self.batch.images_XCHW.is_cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n


class Interleave(L.Callback):
    """After each framework step, one bare step; records the framework's step intervals."""

    def __init__(self, bare: Bare) -> None:
        self.bare, self.starts, self.bare_in_between = bare, [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if torch.cuda.is_available() and batch.images_XCHW.is_cuda:
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # The framework's queued GPU work must finish before the bare step's clock starts, or its tail is billed
        # to the bare step (measured on an H100 before this sync: ratios of 0.76-0.82 for ViT-B/16 and L/14).
        if batch.images_XCHW.is_cuda:
            torch.cuda.synchronize()
        self.bare.step()
        self.bare_in_between.append(self.bare.times[-1])

    def framework_times(self) -> list[float]:
        return [(t1 - t0) - bare for t0, t1, bare in zip(self.starts, self.starts[1:], self.bare_in_between)]


class BlockInterleave(L.Callback):
    """Blocks of `block` framework steps back to back, then `block` bare steps, alternating; synchronised only at
    block boundaries. Per-step synchronisation (Interleave) leaves the GPU idle while the host runs the loop's
    pre-launch work of every step; real training does not synchronise per step, so this is the throughput
    comparison. Seconds per step, per block."""

    def __init__(self, bare: Bare, block: int) -> None:
        self.bare, self.block, self.i = bare, block, 0
        self.fw: list[float] = []
        self.br: list[float] = []
        self.t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.i % self.block == 0:
            if batch.images_XCHW.is_cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.i += 1
        if self.i % self.block == 0:
            if batch.images_XCHW.is_cuda:
                torch.cuda.synchronize()
            self.fw.append((time.perf_counter() - self.t0) / self.block)
            self.br.append(self.bare.block(self.block))


class OpCount(TorchDispatchMode):
    """Counts dispatched aten operations by name while `active`."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.active = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active:
            name = func.overloadpacket.__name__
            # views, detach and profiler markers launch no kernel: counted apart
            self.counts[("meta:" if func.is_view or name in METADATA_OPS else "") + name] += 1
        return func(*args, **(kwargs or {}))


METADATA_OPS = frozenset({"detach", "lift_fresh", "_record_function_enter_new", "_record_function_exit"})


class OpInterleave(L.Callback):
    """Framework steps [start, start + n) counted from one `on_train_batch_start` to the next (the loop's own work
    between steps included), each followed by one counted bare step (not billed to the framework)."""

    def __init__(self, bare: Bare, start: int, n: int) -> None:
        self.bare, self.start, self.n = bare, start, n
        self.fw_mode, self.bare_mode = OpCount(), OpCount()
        self.snaps: list[Counter[str]] = []
        self.bare_steps: list[Counter[str]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.start:
            self.fw_mode.__enter__()
        if self.start <= batch_idx <= self.start + self.n:
            self.snaps.append(Counter(self.fw_mode.counts))
        if batch_idx == self.start + self.n:
            self.fw_mode.__exit__(None, None, None)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not self.start <= batch_idx < self.start + self.n:
            self.bare.step()  # warm-up: both sides' optimizer states exist before counting
            return
        self.fw_mode.active = False
        before = Counter(self.bare_mode.counts)
        with self.bare_mode:
            self.bare.step()
        self.bare_steps.append(self.bare_mode.counts - before)
        self.fw_mode.active = True

    def framework_steps(self) -> list[Counter[str]]:
        return [b - a for a, b in zip(self.snaps, self.snaps[1:])]


def op_report(counter: OpInterleave, top: int = 8) -> dict:
    """Per step: compute ops (those that can launch a kernel) and metadata ops (views, detach, profiler marks) on
    each side; the by-op difference of a median framework step and the bare step after it."""
    fw, br = counter.framework_steps(), counter.bare_steps

    def split(c: Counter[str]) -> tuple[int, int]:
        meta = sum(v for k, v in c.items() if k.startswith("meta:"))
        return sum(c.values()) - meta, meta

    fw_split, br_split = [split(c) for c in fw], [split(c) for c in br]
    compute = [c for c, _ in fw_split]
    i = compute.index(sorted(compute)[len(compute) // 2])  # a median step, and the bare step after it
    diff = {op: fw[i][op] - br[i][op] for op in set(fw[i]) | set(br[i])}
    extra = sorted(((op, d) for op, d in diff.items() if d), key=lambda x: (-abs(x[1]), x[0]))[:top]
    med = statistics.median
    return {
        "steps_counted": len(fw),
        "framework_compute_ops_per_step": med(compute),
        "framework_compute_ops_max_step": max(compute),
        "bare_compute_ops_per_step": med(c for c, _ in br_split),
        "compute_ops_ratio": round(med(compute) / med(c for c, _ in br_split), 4),
        "extra_compute_ops_per_step": med(compute) - med(c for c, _ in br_split),
        "framework_metadata_ops_per_step": med(m for _, m in fw_split),
        "bare_metadata_ops_per_step": med(m for _, m in br_split),
        "median_step_diff_by_op": dict(extra),
    }


class Repeat(torch.utils.data.IterableDataset):
    def __init__(self, batch: Batch, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument(
        "--config-file", default=None, help="an extra open_clip JSON architecture (name = file stem)"
    )
    ap.add_argument("--image-size", type=int, default=None, help="default: the model's")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--hardneg", type=int, default=0, help="text hard negatives per sample (0 = contrastive only)"
    )
    ap.add_argument(
        "--experiment",
        default=None,
        help="a training recipe (conf/experiment): its real first batch and loss terms instead of the synthetic "
        "batch (--hardneg is then ignored)",
    )
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model on both sides (the framework via module.compile, as in training)",
    )
    ap.add_argument(
        "--block",
        type=int,
        default=0,
        help="interleave blocks of this many steps, synchronised only at block boundaries (throughput; "
        "0 = one step at a time, synchronised per step)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "overhead.jsonl")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="after the measurement, profile 4 more interleaved steps with torch.profiler (CPU + CUDA, Python "
        "stacks) and write DIR/<model>_ops.txt (ops by self CPU time), DIR/<model>_syncs.txt (every host "
        "synchronisation with its Python stack) and DIR/<model>_trace.json.gz (chrome trace)",
    )
    ap.add_argument(
        "--count-ops",
        type=int,
        default=0,
        metavar="N",
        help="count dispatched aten ops per step on both sides over N steps after --warmup instead of timing",
    )
    args = ap.parse_args()

    torch.manual_seed(0)
    spec = ModelSpec(name=args.model, config_file=args.config_file)
    size = args.image_size or spec.image_size
    if args.experiment:
        batch, loss, composition = recipe_batch_and_loss(args.experiment, spec, args.batch, args.device)
        torch.manual_seed(0)
    else:
        loss, composition = loss_terms(args.hardneg), {}
    module = ClipModule(
        spec,
        loss,
        partial(torch.optim.AdamW, lr=5e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6),
        None,
        # the framework compiles as training does (module.compile: in place when fitting starts, batch dims marked
        # dynamic); the bare loop with a plain torch.compile of its static shapes
        compile={"enabled": args.compile},
    )
    if args.experiment:  # pre-made float images for both sides, normalised as training does
        batch = replace(batch, images_XCHW=module.to(args.device).normalize_images(batch.images_XCHW))
    bare_model = copy.deepcopy(module.model).to(args.device)
    if args.compile:
        bare_model = torch.compile(bare_model)
    if not args.experiment:
        ctx = spec.config["text_cfg"].get("context_length", 77)
        batch = make_batch(args.batch, args.hardneg, size, ctx, args.device)
    bare_loss = copy.deepcopy(loss).to(args.device)
    bare = Bare(bare_model, batch, bare_loss, args.precision, args.device, module.max_logit_scale)
    if args.count_ops:
        timer = OpInterleave(bare, args.warmup, args.count_ops)
        args.steps = args.warmup + args.count_ops + 1
    elif args.block:
        timer = BlockInterleave(bare, args.block)
    else:
        timer = Interleave(bare)
    trainer = L.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.steps,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=L.pytorch.loggers.CSVLogger(save_dir="/tmp/hardneg_overhead", name="csv"),
        log_every_n_steps=10,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(Repeat(batch, args.steps + 1), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    common = {
        "model": args.model,
        "image_size": size,
        "batch": args.batch,
        "hardneg_per_sample": None if args.experiment else args.hardneg,
        **({"experiment": args.experiment, "batch_composition": composition} if args.experiment else {}),
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)",
        "precision": args.precision,
        "compile": args.compile,
    }
    if args.count_ops:
        result = {"mode": "ops", **common, **op_report(timer), "torch": torch.__version__}
        print(json.dumps(result), flush=True)
        append_jsonl(args.out, result)
        return

    if args.block:
        skip = -(-args.warmup // args.block)  # blocks that hold warm-up steps
        fw, br = timer.fw[skip:], timer.br[skip:]
    else:
        fw = timer.framework_times()[args.warmup :]
        br = timer.bare_in_between[args.warmup : args.warmup + len(fw)]
    ratios = [f / b for f, b in zip(fw, br)]
    result = {
        **common,
        "block": args.block,
        "steps_measured": len(fw) * max(args.block, 1),
        "bare_ms_median": round(1000 * statistics.median(br), 2),
        "framework_ms_median": round(1000 * statistics.median(fw), 2),
        "ratio_of_medians": round(statistics.median(fw) / statistics.median(br), 4),
        "median_of_paired_ratios": round(statistics.median(ratios), 4),
        "torch": torch.__version__,
        "lightning": L.__version__,
    }
    print(json.dumps(result), flush=True)
    append_jsonl(args.out, result)
    if args.profile:
        profile_steps(module, bare, batch, args)


class Profiled(L.Callback):
    """torch.profiler over framework steps [start, start + n) and the bare steps interleaved with them; each bare
    step is labelled `bare_step`, so whatever is not under that label is the framework's."""

    def __init__(self, bare: Bare, start: int, n: int, activities) -> None:
        self.bare, self.start, self.n, self.i = bare, start, n, 0
        self.prof = torch.profiler.profile(activities=activities, with_stack=True, record_shapes=False)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch.images_XCHW.is_cuda:
            torch.cuda.synchronize()
        if self.i == self.start:
            self.prof.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch.images_XCHW.is_cuda:
            torch.cuda.synchronize()
        with torch.profiler.record_function("bare_step"):
            self.bare.step()
        self.i += 1
        if self.i == self.start + self.n:
            self.prof.__exit__(None, None, None)


def profile_steps(module: ClipModule, bare: Bare, batch: Batch, args, n: int = 4, start: int = 5) -> None:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    cb = Profiled(bare, start, n, acts)
    trainer = L.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=start + n + 1,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[cb],
    )
    loader = torch.utils.data.DataLoader(Repeat(batch, start + n + 2), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    out = args.profile
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.model}{'_compiled' if args.compile else ''}_hn{args.hardneg}"
    ka = cb.prof.key_averages()
    (out / f"{tag}_ops.txt").write_text(
        ka.table(sort_by="self_cpu_time_total", row_limit=45, max_name_column_width=70)
    )
    # Host synchronisations (CUDA only: on a CPU every op is synchronous), each with its Python call chain.
    sync_names = ("Synchronize", "aten::_local_scalar_dense", "aten::nonzero", "cudaMemcpy ")
    syncs = [e for e in cb.prof.events() if acts[-1] != acts[0] and any(n in e.name for n in sync_names)]
    lines = [f"{len(syncs)} host synchronisations over {n} framework + {n} bare steps"]
    for e in syncs:
        chain, c = [], e.cpu_parent
        while c is not None:
            if ".py(" in c.name and "site-packages/torch/" not in c.name:
                chain.append(c.name)
            c = c.cpu_parent
        lines.append(f"{e.name}  cpu {e.cpu_time_total:.0f} us\n    " + "\n    ".join(chain[:10]))
    (out / f"{tag}_syncs.txt").write_text("\n".join(lines))
    import gzip

    trace = out / f"{tag}_trace.json"
    cb.prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as f, gzip.open(str(trace) + ".gz", "wb") as g:
        g.write(f.read())
    trace.unlink()
    print(json.dumps({"profile": str(out), "tag": tag, "sync_like_events": len(syncs)}), flush=True)


if __name__ == "__main__":
    main()

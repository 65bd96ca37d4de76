"""The CLIP LightningModule: one `encode_image` and one `encode_text` call per step (positives and negatives
together, FSDP1-safe), features handed to an injected loss that returns named `*_loss` terms.

Shape legend: B positives, M image negatives, N text negatives, D embedding dim, I/T val images/texts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from datamodules.dataset import Batch
from lightning_modules.compilation import CompileSpec
from lightning_modules.grad_surgery import GradSurgery
from lightning_modules.losses.base import LossInputs
from lightning_modules.metrics import hardneg_stats, mean_offdiag_cos, retrieval_recall
from lightning_modules.model_factory import ModelSpec, load_init_weights


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """open_clip convention: no weight decay on gains, biases, embeddings and the logit scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = (
            p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n or "embedding" in n
        )
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _add_diag(dst: dict[str, dict[str, torch.Tensor]], src: dict[str, dict[str, torch.Tensor]]) -> None:
    """Adds per-side, per-kind diagnostic sums of `src` into `dst` (kinds missing from `dst` are copied)."""
    for side, kinds in src.items():
        bucket = dst.setdefault(side, {})
        for kind, v in kinds.items():
            bucket[kind] = bucket[kind] + v if kind in bucket else v


class ClipModule(L.LightningModule):
    """Args:
    model_spec: which open_clip model to build.
    loss: a module mapping `LossInputs` to a dict of named terms.
    optimizer: partial optimizer (params -> optimizer); weight decay taken from it for param groups.
    scheduler: partial scheduler (optimizer, total_steps) -> LR scheduler stepped per step, or None.
    max_logit_scale: clamp of the learned logit scale (ln 100 in CLIP).
    run_config: the resolved run config (primitive dict) stored in the checkpoint so evaluate.py can rebuild.
    init_from: a train.py checkpoint or exported .safetensors to start from (weights only; e.g. hard-negative
        fine-tuning of a contrastively pretrained model). Resuming a run is a different thing (optimizer + step).
    compile: `CompileSpec` arguments (torch.compile of the model's forward when fitting starts; None: eager).
    """

    def __init__(
        self,
        model_spec: ModelSpec,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        *,
        max_logit_scale: float = math.log(100.0),
        run_config: dict | None = None,
        init_from: str | None = None,
        grad_surgery: Mapping[str, Any] | None = None,
        compile: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._bad_samples = 0
        # logger=False: the run config is logged once, by the training run (not again as module hparams)
        self.save_hyperparameters(
            {"run_config": run_config or {}, "max_logit_scale": max_logit_scale}, logger=False
        )
        self.model_spec = model_spec
        # Built here, not lazily: a spawned strategy (ddp_sim) trains copies of this module in child processes and
        # hands rank 0's weights back to this one, which must hold the model to receive them (and to checkpoint).
        self.model: nn.Module = model_spec.build()
        if init_from:
            load_init_weights(self.model, init_from)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.max_logit_scale = max_logit_scale
        self.init_from = init_from
        # Gradient surgery between two groups of loss terms (lightning_modules/grad_surgery.py); None: plain sum.
        self.grad_surgery = GradSurgery(**grad_surgery) if grad_surgery else None
        self.compile_spec = CompileSpec(**(compile or {}))
        # Images arrive as uint8 (4x less loader traffic) and are normalised on the device, with the model's
        # mean/std: bit-for-bit what the float transform would give (tests/lightning_modules/test_clip_module.py).
        mean, std = model_spec.normalization()
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []
        # Throughput window (host clock): first step start, steps started since, loader wait inside it.
        self._win_t0: float | None = None
        self._win_steps = 0
        self._win_wait = 0.0
        self._t_end: float | None = None
        self._gen_totals: dict[str, int] = {}  # generator counters, cumulative on this rank
        # Relational-binding diagnostics, summed per kind until logged: {metric prefix: {kind: [correct, cos, n]}}
        self._diag: dict[str, dict[str, dict[str, torch.Tensor]]] = {"train": {}, "val": {}, "test": {}}
        self._rand_cos: dict[str, list[torch.Tensor]] = {"val": [], "test": []}

    # -- model ------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """The model is built in __init__; parallel strategies (lightning_modules.parallel) wrap or shard it in
        their own setup. (ModelParallelStrategy insists that this hook exists.)"""

    def on_fit_start(self) -> None:
        """torch.compile (`module.compile`) once the strategy has wrapped or sharded the model (in place: the same
        parameters and state-dict keys)."""
        # gradient surgery: two backward passes through one compiled forward (CompileSpec.apply says what that needs)
        self.compile_spec.apply(self.model, retains_graph=self.grad_surgery is not None)

    def on_fit_end(self) -> None:
        self.compile_spec.restore()

    def encode(
        self, images: torch.Tensor, texts: torch.Tensor, *, counts_vary: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised image and text features and the exponentiated logit scale, from ONE forward call of the
        model (what FSDP hooks: parameters outside a forward are shards). `counts_vary`: the batch holds hard
        negatives, so its image/caption counts change from batch to batch (a compiled model treats them as
        dynamic)."""
        self.compile_spec.mark_inputs(images, texts, counts_vary=counts_vary)
        with self.compile_spec.eager_unless(self.training):
            out = self.model(images, texts)
        if isinstance(out, dict):
            return out["image_features"], out["text_features"], out["logit_scale"]
        return out[0], out[1], out[2]

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> the model's normalised float input (float inputs pass through unchanged)."""
        if images.dtype != torch.uint8:
            return images
        return images.float().div_(255).sub_(self.pixel_mean).div_(self.pixel_std)

    def loss_inputs(self, batch: Batch) -> LossInputs:
        b = batch.num_pos
        has_negatives = batch.images_XCHW.shape[0] > b or batch.texts_YL.shape[0] > b
        img, txt, scale = self.encode(
            self.normalize_images(batch.images_XCHW), batch.texts_YL, counts_vary=has_negatives
        )
        return LossInputs(
            img_BD=img[:b],
            txt_BD=txt[:b],
            logit_scale=scale,
            img_neg_MD=img[b:],
            txt_neg_ND=txt[b:],
            img_neg_owner_M=batch.img_neg_owner_M,
            img_neg_pair_M=batch.img_neg_pair_M,
            txt_neg_owner_N=batch.txt_neg_owner_N,
            img_neg_kind=batch.img_neg_kind_M,
            txt_neg_kind=batch.txt_neg_kind_N,
            step=self.global_step if self.training else None,
            total_steps=self._trainer.max_steps if self._trainer is not None else None,
        )

    def compute_loss(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Logits and cross-entropy in fp32 even under bf16 autocast (the features are cast by each loss).
        with torch.autocast(self.device.type, enabled=False):
            terms = self.loss(x)
        loss_terms = [v for k, v in terms.items() if k.endswith("_loss")]
        if not loss_terms:
            raise ValueError(f"loss returned no '*_loss' term (got {sorted(terms)})")
        return torch.stack(loss_terms).sum(), terms

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x = self.loss_inputs(batch)
        total, terms = self.compute_loss(x)
        b = batch.num_pos
        self._bad_samples += len(batch.bad_ids)  # cumulative on this rank: unreadable images replaced
        for k, v in batch.gen_stats.items():  # host ints
            self._gen_totals[k] = self._gen_totals.get(k, 0) + v
        logging = self._logging_step()
        if logging:  # the values are gathered only when logged (no per-step host work for them otherwise)
            log = {f"train/{k}": v.detach() for k, v in terms.items()}
            # Generator counters (cache hit/miss, generator calls, masked slots, ...): this rank's totals since the
            # process started, so every batch counts whatever the logging interval (per-window counts are the
            # differences between logged rows).
            log.update({f"train/gen/{k}": float(v) for k, v in self._gen_totals.items()})
            log["train/loss"] = total.detach()
            log["train/logit_scale"] = x.logit_scale.detach().float().reshape(())
            log["train/num_txt_neg"] = float(batch.texts_YL.shape[0] - b)
            log["train/num_img_neg"] = float(batch.images_XCHW.shape[0] - b)
            log["train/bad_samples"] = float(self._bad_samples)
            # Nothing goes to the progress bar here: Lightning converts every progress-bar value to a Python number
            # after EVERY step (the stored tensor too, between logging steps), a host synchronisation per step
            # (SyncAudit on an H100). The bar reads `train/loss` itself when it refreshes (console.StepProgressBar).
            self.log_dict(log, prog_bar=False, batch_size=b)
        self._accumulate_diag("train", x)
        if logging:
            self._log_diag("train")
        if self.grad_surgery is not None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            target, stats = self.grad_surgery.backward_target(terms, params)
            if logging and stats:
                self.log_dict({f"train/grad_{k}": v for k, v in stats.items()}, prog_bar=False, batch_size=b)
            return target
        return total

    def _logging_step(self) -> bool:
        """Whether this training step's values are logged: the steps whose values Lightning writes to the loggers
        (every `trainer.log_every_n_steps` steps, or when the trainer should stop) and the run's final step (its
        values reach `callback_metrics`, hence metrics.json). Step values are logged only then: each `self.log`
        call costs Lightning ~0.5-0.8 ms of CPU (it moves its result object's state with a recursive apply), and 10
        of them per step were most of the framework's overhead over a bare loop (BENCHMARKS.md, "Framework
        overhead"). Not the end of every epoch: Lightning would not write those values, yet the throughput and
        diagnostic windows would restart there (and a GPU step there would synchronise outside SyncAudit's logging
        steps)."""
        t = self._trainer
        if t is None:
            return True
        step = t.global_step + 1
        if step % max(t.log_every_n_steps, 1) == 0 or t.should_stop:
            return True
        if t.max_steps > 0 and step >= t.max_steps:
            return True
        last_epoch = t.max_epochs is not None and 0 < t.max_epochs <= t.current_epoch + 1
        return last_epoch and bool(t.fit_loop.epoch_loop.batch_progress.is_last_batch)

    # -- diagnostics ------------------------------------------------------------------------------------------
    def _accumulate_diag(self, split: str, x: LossInputs) -> None:
        """Per-kind hard-negative accuracy and tower sensitivity (see `metrics.hardneg_stats`)."""
        sides = (
            (
                "hardneg_acc",
                "txt_neg_cos",
                x.img_BD,
                x.txt_BD,
                x.txt_neg_ND,
                x.txt_neg_owner_N,
                x.txt_neg_kind,
            ),
            (
                "hardneg_acc_image",
                "img_neg_cos",
                x.txt_BD,
                x.img_BD,
                x.img_neg_MD,
                x.img_neg_owner_M,
                x.img_neg_kind,
            ),
        )
        for acc_name, cos_name, anchor, pos, neg, owner, kinds in sides:
            if neg is None or owner is None or not len(kinds):
                continue
            stats = hardneg_stats(anchor, pos, neg, owner.to(anchor.device), kinds)
            # Sums stay on the device until a logging step (a .cpu() here synchronised every training step).
            _add_diag(self._diag[split], {f"{acc_name}|{cos_name}": stats})

    def _log_diag(self, split: str) -> None:
        acc = {side: {k: v.cpu() for k, v in kinds.items()} for side, kinds in self._diag[split].items()}
        self._diag[split] = {}
        if self.trainer.world_size > 1:  # kinds can differ between ranks: merge dictionaries, then sum
            parts: list[dict] = [{} for _ in range(self.trainer.world_size)]
            torch.distributed.all_gather_object(parts, acc)
            acc = {}
            for part in parts:
                _add_diag(acc, part)
        out: dict[str, float] = {}
        for side, kinds in acc.items():
            acc_name, cos_name = side.split("|")
            for kind, (correct, cos_sum, n) in kinds.items():
                if n > 0:
                    out[f"{split}/{acc_name}/{kind}"] = float(correct / n)
                    if split != "train":
                        out[f"{split}/{cos_name}/{kind}"] = float(cos_sum / n)
        if split != "train" and self._rand_cos[split]:
            txt_c, img_c = zip(*self._rand_cos[split])
            out[f"{split}/txt_cos_random"] = float(torch.stack(txt_c).mean())
            out[f"{split}/img_cos_random"] = float(torch.stack(img_c).mean())
        self._rand_cos.get(split, []).clear()
        if out:  # identical on every rank after the merge above
            self.log_dict(out, batch_size=1)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """Throughput over the steps since the last logging step, not one step's interval: with an asynchronous
        device the host runs ahead of the GPU between synchronisations (a logging step synchronises), so a single
        step's host interval says little about the device's rate, while a window of steps with one
        synchronisation in it measures it. The data wait is the window's time between a step's end and the next
        step's start (fetching the batch), as a share of the window."""
        now = time.perf_counter()
        if self._win_t0 is None:
            self._win_t0, self._win_steps, self._win_wait = now, 0, 0.0
        else:
            self._win_steps += 1
            if self._t_end is not None:
                self._win_wait += max(now - self._t_end, 0.0)
            if self._logging_step():
                span = max(now - self._win_t0, 1e-9)
                global_batch = batch.num_pos * self.trainer.world_size
                self.log("train/samples_per_second", self._win_steps * global_batch / span, batch_size=1)
                self.log("train/data_wait_fraction", min(self._win_wait / span, 1.0), batch_size=1)
                self._win_t0, self._win_steps, self._win_wait = now, 0, 0.0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, self.max_logit_scale)
        self._t_end = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._win_t0 = self._t_end = None  # validation time is not training throughput

    # -- evaluation -------------------------------------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: Batch, split: str) -> None:
        x = self.loss_inputs(batch)
        total, _ = self.compute_loss(x)
        self.log(f"{split}/loss", total, sync_dist=True, batch_size=batch.num_pos)
        self._val_outputs.append((x.img_BD.float(), x.txt_BD.float(), list(batch.image_keys_B)))
        self._accumulate_diag(split, x)
        self._rand_cos[split].append(
            torch.stack([mean_offdiag_cos(x.txt_BD), mean_offdiag_cos(x.img_BD)]).cpu()
        )

    def on_validation_epoch_end(self) -> None:
        self._retrieval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._retrieval_epoch_end("test")

    def _retrieval_epoch_end(self, split: str) -> None:
        self._log_diag(split)
        if not self._val_outputs:
            return
        img = torch.cat([o[0] for o in self._val_outputs])
        txt = torch.cat([o[1] for o in self._val_outputs])
        keys = [k for o in self._val_outputs for k in o[2]]
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            # Every rank holds the same number of items (the distributed sampler pads by repeating samples).
            img = self.all_gather(img).flatten(0, 1)
            txt = self.all_gather(txt).flatten(0, 1)
            all_keys: list[list[str]] = [[] for _ in range(self.trainer.world_size)]
            torch.distributed.all_gather_object(all_keys, keys)
            keys = [k for ks in all_keys for k in ks]
        index: dict[str, int] = {}
        txt_img = torch.tensor([index.setdefault(k, len(index)) for k in keys], device=img.device)
        first = torch.tensor([keys.index(k) for k in index], device=img.device)
        metrics = retrieval_recall(img[first], txt, txt_img)
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, sync_dist=False)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints from before the 1-element logit scale: their optimizer moments of the 0-d scale are
        reshaped (the weights themselves are reshaped by the model's load_state_dict hook)."""
        for opt in checkpoint.get("optimizer_states", []):
            for state in opt.get("state", {}).values():
                for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
                    if isinstance(state.get(k), torch.Tensor) and state[k].ndim == 0:
                        state[k] = state[k].reshape(1)

    # -- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        probe = self.optimizer_factory(params=[nn.Parameter(torch.zeros(1))])
        wd = probe.defaults.get("weight_decay", 0.0)
        opt = self.optimizer_factory(params=param_groups(self.model, wd))
        if self.grad_surgery is not None:
            from lightning_modules.optim import SplitAdamW

            if self.trainer.world_size > 1:
                raise ValueError(
                    "module.grad_surgery runs on one device only (its per-group gradients are taken outside the "
                    "strategy's backward; not tested under DDP/FSDP)"
                )
            if self.grad_surgery.mode == "split" and not isinstance(opt, SplitAdamW):
                raise ValueError(
                    f"module.grad_surgery.mode=split needs optimizer=split_adamw (got {type(opt).__name__})"
                )
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(
            optimizer=opt, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

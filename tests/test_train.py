"""End-to-end: fast_dev_run, train -> evaluate parity, multirun, config errors."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, TINY
from tests.helpers import evaluate_like_the_run, train_rows
from train import train


def test_fast_dev_run_writes_run_outputs(cfg_factory, tmp_path):
    metrics = train(cfg_factory("debug=fdr"))
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert "train/contrastive_loss" in saved and "val/i2t_r1" in saved and "test/t2i_r1" in saved
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "synthetic/swap_objects/acc" in results and "synthetic/winoground/group" in results
    assert all(k.count("/") == 2 for k in results)
    assert (tmp_path / "eval" / "results.csv").is_file() and "chance" in (
        tmp_path / "eval" / "results.md"
    ).read_text()
    # The resolved config has no interpolations left.
    assert "${" not in (tmp_path / ".hydra" / "config.yaml").read_text()


def test_train_evaluate_parity(cfg_factory, tmp_path):
    # logger=none with the default callbacks (the LR monitor needs a logger and is dropped).
    cfg = cfg_factory("trainer.max_steps=6", "trainer.val_check_interval=3", "logger=none")
    metrics = train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    # Loads with the safe unpickler (primitive hyperparameters only).
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert (
        state["global_step"] == 6 and state["hyper_parameters"]["run_config"]["model"]["name"] == "tiny-vit"
    )
    results, trained = evaluate_like_the_run(cfg_factory, ckpt, metrics, tmp_path / "evaluation")
    assert trained and set(trained) == set(results)
    for k, v in results.items():
        assert v == pytest.approx(trained[k], abs=1e-9), k
    assert json.loads((tmp_path / "evaluation" / "results.json").read_text()) == pytest.approx(results)


def test_training_learns_on_synthetic_world(cfg_factory):
    """A short CPU run must beat chance on retrieval by a wide margin (a run that learns nothing is a bug)."""
    cfg = cfg_factory(
        "trainer.max_steps=60",
        "trainer.val_check_interval=60",
        "data.source.num_train=2000",
        "data.source.num_val=128",
        "data.batch_size=32",
        "optimizer.lr=1e-3",
        "scheduler.warmup_steps=5",
        "callbacks=none",
        "logger=none",
        "evaluate_after=false",
    )
    metrics = train(cfg)
    chance_r1 = 100.0 / 128
    assert metrics["val/t2i_r1"] > 4 * chance_r1 and metrics["val/i2t_r1"] > 4 * chance_r1, metrics
    assert metrics["train/contrastive_loss"] < 3.2  # ln(32) = 3.47 at init


def _run(args, cwd, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return p, time.perf_counter() - t0


def test_multirun_one_run_dir_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    p, _ = _run(
        [
            str(ROOT / "train.py"),
            "-m",
            "seed=0,1",
            "debug=fdr",
            *TINY,
            f"hydra.sweep.dir={sweep}",
            "evaluate_after=false",
        ],
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d.name for d in sweep.iterdir() if d.is_dir() and d.name.isdigit())
    assert runs == ["0", "1"]
    seeds = [json.loads((sweep / r / "metrics.json").read_text()) for r in runs]
    assert seeds[0] != seeds[1]
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data.batchsize=3"], "Key 'batchsize' is not in struct"),
        (["model=vit_nope"], "Could not find 'model/vit_nope'"),
        (["data=pairs"], "full_key: data.source.train_path"),
        (
            ["data=pairs", "data.source.train_path=/no/such/train.jsonl"],
            "train_path: manifest not found: '/no/such/train.jsonl'",
        ),
    ],
)
def test_bad_config_fails_fast_and_names_the_key(tmp_path, args, expected):
    p, _ = _run([str(ROOT / "train.py"), *args, f"paths.log_dir={tmp_path}"], cwd=tmp_path, timeout=120)
    assert p.returncode != 0
    assert expected in p.stderr + p.stdout, (p.stderr + p.stdout)[-2000:]
    if "model/vit_nope" in expected:
        assert "tiny_vit" in p.stderr  # the valid choices are listed


STRATEGY_RUN = [
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "callbacks=none",
    "logger=none",
    "benchmark.synthetic.num_items=24",
    "benchmark.synthetic.num_winoground=12",
]


def test_fused_adamw_trains_like_the_default_adamw(cfg_factory, tmp_path):
    """optimizer.fused=true (one fused AdamW kernel; what issue #13's bare GPU loop used): the same weights after 6
    steps as torch's default (foreach) AdamW on the same data."""
    states = {}
    for fused in ("null", "true"):
        cfg = cfg_factory(*STRATEGY_RUN, f"optimizer.fused={fused}", "run_test=false", "evaluate_after=false")
        cfg.paths.output_dir = str(tmp_path / fused)
        train(cfg)
        ckpt = torch.load(
            tmp_path / fused / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        states[fused] = ckpt
    opt = states["true"]["optimizer_states"][0]
    assert (
        opt["param_groups"][0]["fused"] is True
        and states["null"]["optimizer_states"][0]["param_groups"][0]["fused"] is None
    )
    a, b = states["true"]["state_dict"], states["null"]["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.slow
def test_ddp_sim_trains_checkpoints_and_the_checkpoint_evaluates(cfg_factory, tmp_path):
    """strategy=ddp_sim (2 CPU processes, spawn): last.ckpt holds the trained weights (it held none before the model
    was built in ClipModule.__init__: the spawning process had no model to receive them) and evaluates to the
    scores the run printed."""
    metrics = train(cfg_factory("strategy=ddp_sim", *STRATEGY_RUN))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # Weights only: the spawning process gets rank 0's weights back, not its step or optimizer state (Lightning's
    # spawn launcher), so resume a spawned run from the periodic checkpoints its ranks write (README "Scale").
    assert "model.visual.conv1.weight" in state["state_dict"]
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    results, trained = evaluate_like_the_run(cfg_factory, ckpt, metrics, tmp_path / "evaluation")
    assert trained and results == pytest.approx(trained, abs=1e-9)


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_like_ddp(tmp_path):
    """strategy=fsdp (FSDP2 over gloo, the script relaunched per rank as under torchrun) and strategy=ddp_sim on the
    same data: the same weights after 6 steps (measured max |diff| 1.4e-7), a full state dict in last.ckpt. Also
    FSDP2 with torch.compile (scope auto = each sharded block compiled by inductor) and fused AdamW, and DDP with
    the whole forward compiled: the same weights (DDP compiled vs eager measured 3.3e-7; eager vs eager 0.0)."""
    ckpts = {}
    runs = {
        "fsdp": ["strategy=fsdp", "trainer.devices=2"],
        "fsdp_compiled_fused": [
            "strategy=fsdp",
            "trainer.devices=2",
            "module.compile.enabled=true",
            "optimizer.fused=true",  # fused AdamW over FSDP2's DTensor shards
        ],
        "ddp": ["strategy=ddp_sim"],
        "ddp_compiled": [
            "strategy=ddp_sim",
            "module.compile.enabled=true",
        ],  # whole forward compiled under DDP
    }
    for name, extra in runs.items():
        out = tmp_path / name
        p, _ = _run(
            [
                str(ROOT / "train.py"),
                *TINY,
                *STRATEGY_RUN,
                *extra,
                "evaluate_after=false",
                f"hydra.run.dir={out}",
            ],
            cwd=tmp_path,
        )
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        # both ranks compiled the 6 residual blocks of tiny-vit, not the whole model
        if name == "fsdp_compiled_fused":
            assert (p.stdout + p.stderr).count("torch.compile: 6 module(s) (scope=blocks") == 2
        ckpts[name] = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = ckpts["ddp"]["state_dict"]
    for name in ("fsdp", "fsdp_compiled_fused", "ddp_compiled"):
        a = ckpts[name]["state_dict"]
        assert a.keys() == b.keys() and a["model.logit_scale"].shape == (1,)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=f"{name}: {k}")


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_runs_fast_dev_run(cfg_factory, experiment, tmp_path):
    extra, tiny = [], True
    if experiment.startswith("noisy_"):  # small raw world, random-init scorers, manifests in tmp
        from tests.datamodules.preprocess.test_preprocess_run import SMALL

        tiny = False
        extra = [
            *SMALL,
            # random-init scorers at the calibrated threshold let too few relation-dense pairs through for a batch
            "preprocess.gate.threshold=-10",
            f"preprocess.out_dir={tmp_path / 'clean'}",
            f"preprocess.cache_dir={tmp_path / 'cache'}",
            "data.batch_size=16",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "benchmark.synthetic.num_items=8",
            "benchmark.synthetic.num_winoground=4",
        ]
    cfg = cfg_factory(f"experiment={experiment}", "debug=fdr", *extra, tiny=tiny)
    metrics = train(cfg)
    assert "train/loss" in metrics
    # Every configured term saw its inputs (a dropped generator or a kind filter matching nothing shows as 0) ...
    counts = {k: v for k, v in metrics.items() if k.startswith("train/") and k.endswith("_count")}
    assert all(v > 0 for v in counts.values()), counts
    # ... and a run with generators trained with negatives.
    if cfg.get("negatives"):
        assert metrics["train/num_txt_neg"] + metrics["train/num_img_neg"] > 0, metrics


@pytest.mark.slow
def test_experiment_on_real_jsonl_source(cfg_factory, pairs_manifest):
    metrics = train(
        cfg_factory(
            "experiment=compositional_text", *_pairs_overrides(pairs_manifest), "run_test=false", tiny=False
        )
    )
    assert metrics["train/hardneg_text_count"] > 0


def test_two_epochs_second_makes_no_generator_calls(cfg_factory, tiny_llm_dir, tmp_path):
    """End to end: the LLM rewriter fills its cache online in epoch 1; epoch 2 only reads it. Logged every 3 steps
    (2 batches per epoch): the counters are totals, so a batch between logged rows is not lost."""
    cfg = cfg_factory(
        "negatives=[llm_rewriter]",
        f"negatives.llm_rewriter.model={tiny_llm_dir}",
        "negatives.llm_rewriter.fill=online",
        "negatives.llm_rewriter.max_new_tokens=4",
        f"negatives.llm_rewriter.cache_dir={tmp_path / 'cache'}",
        "data.source.num_train=64",
        "data.batch_size=32",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=3",
        "callbacks=none",
        "evaluate_after=false",
        "run_test=false",
    )
    train(cfg)
    rows = train_rows(tmp_path)
    # the one written row: step 3 = both batches of epoch 1 (64 generated) + the first of epoch 2 (32 cache hits)
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(2, 1)], rows
    row = rows[0]
    assert float(row["train/gen/llm_rewriter/calls"]) == 64
    assert float(row["train/gen/llm_rewriter/cache_hit"]) == 32
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # the final step: run totals
    assert metrics["train/gen/llm_rewriter/calls"] == 64 and metrics["train/gen/llm_rewriter/cache_hit"] == 64


def test_relational_diagnostics_are_logged_and_init_from_loads_weights(cfg_factory, tmp_path):
    """Per-kind hard-negative accuracy (train + val), tower sensitivity at validation, and module.init_from."""
    import csv

    cfg = cfg_factory(
        "experiment=hardneg",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=2",
        "data.source.num_val=48",
        "evaluate_after=false",
        "run_test=false",
    )
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    logged = {k for r in rows for k, v in r.items() if v}
    for key in (
        "train/hardneg_acc/compositional/position",
        "val/hardneg_acc/compositional/swap_objects",
        "val/hardneg_acc_image/compositional/position",
        "val/txt_neg_cos/compositional/swap_objects",
        "val/img_neg_cos/compositional/position",
        "val/txt_cos_random",
        "val/img_cos_random",
    ):
        assert key in logged, key
    for r in rows:
        for k, v in r.items():
            if v and "hardneg_acc" in k:
                assert 0.0 <= float(v) <= 1.0
            if v and "_cos" in k:
                assert -1.0 <= float(v) <= 1.0 + 1e-6
    # Start a second run from the first one's weights: its model equals the checkpoint before any step.
    from lightning_modules.clip_module import ClipModule
    from lightning_modules.model_factory import ModelSpec

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    module = ClipModule(ModelSpec(name="tiny-vit"), torch.nn.Identity(), None, init_from=str(ckpt))
    module.configure_model()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for k, v in module.model.state_dict().items():
        torch.testing.assert_close(v, saved[f"model.{k}"])
    with pytest.raises(FileNotFoundError, match="init_from"):
        ClipModule(
            ModelSpec(name="tiny-vit"), torch.nn.Identity(), None, init_from="nope.ckpt"
        ).configure_model()
    with pytest.raises(ValueError, match="does not match"):
        ClipModule(
            ModelSpec(name="tiny-rn"), torch.nn.Identity(), None, init_from=str(ckpt)
        ).configure_model()


def _pairs_overrides(manifest) -> list[str]:
    """A tiny data=pairs run (the conftest manifest), one batch."""
    return [
        "data=pairs",
        f"data.source.train_path={manifest}",
        "data.source.val_fraction=0.3",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "debug=fdr",
        "benchmark=[]",
    ]


def test_a_source_without_test_split_skips_test_and_still_writes_metrics(
    cfg_factory, pairs_manifest, tmp_path
):
    metrics = train(cfg_factory(*_pairs_overrides(pairs_manifest), tiny=False))
    assert not any(k.startswith("test/") for k in metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)


def test_wandb_run_is_named_grouped_and_holds_the_config_once(cfg_factory, tmp_path, monkeypatch):
    from tests.helpers import read_wandb_offline

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = cfg_factory(
        "logger=wandb",
        "experiment=clip_baseline",
        "seed=3",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1",
    )
    train(cfg)
    runs = list(tmp_path.glob("wandb/offline-run-*"))
    assert len(runs) == 1
    run = read_wandb_offline(runs[0])
    assert run["name"] == "clip_baseline-seed3" and run["group"] == "clip_baseline"
    assert run["config"]["model"]["name"] == "tiny-vit" and "run_config" not in run["config"]
    logged = {k for row in run["history"] for k in row}
    assert {"train/loss", "val/r_mean", "eval/synthetic/mean/acc"} <= logged


def test_wandb_run_holds_the_negatives_table_and_the_eval_media(cfg_factory, tmp_path, monkeypatch):
    """experiment=hardneg with logger=wandb (offline): a table of training items with their hard negatives at the
    start and after each validation, their images, and the evaluation as a table, a bar chart and failure cases."""
    from tests.helpers import read_wandb_offline

    monkeypatch.setenv("WANDB_MODE", "offline")
    train(
        cfg_factory(
            "logger=wandb", "experiment=hardneg", "trainer.max_steps=4", "trainer.val_check_interval=2"
        )
    )
    run_dir = next(tmp_path.glob("wandb/offline-run-*"))
    history = read_wandb_offline(run_dir)["history"]
    tables = [row for row in history if row.get("train/negatives/_type") == "table-file"]
    assert len(tables) == 3  # fit start + two validations
    table = json.loads((run_dir / "files" / tables[0]["train/negatives/path"]).read_text())
    assert table["columns"][:5] == ["id", "image", "caption", "kind", "modality"]
    kinds = {row[3] for row in table["data"]}
    assert "relation/position" in kinds or "compositional/position" in kinds, kinds
    edited = [row for row in table["data"] if row[4] == "image"]
    assert edited and all(row[7] for row in edited)  # each edited image names the caption it matches
    images = [row for row in history if "train/negatives_images/_type" in row]
    assert images and images[0]["train/negatives_images/count"] > len(edited) // 3
    assert list((run_dir / "files" / "media" / "images").glob("train/negatives_images_*.png"))
    logged = {k: v for row in history for k, v in row.items()}
    for key in ("eval/table", "eval/failures", "eval/bar_table"):
        assert logged[f"{key}/_type"] == "table-file", key
    assert logged["eval/table/nrows"] == len([k for k in logged if k.startswith("eval/synthetic/")])

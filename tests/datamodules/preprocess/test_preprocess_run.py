"""The preprocessing config end to end: `python -m datamodules.preprocess`, fingerprinted manifest folders (reuse
when up to date, rebuild when stale), and train.py training on the clean manifest (data=preprocessed)."""

import json
import subprocess
import sys

import pytest
import torch

from datamodules.preprocess.run import clean_dir, ensure_clean, fingerprint
from tests.conftest import ROOT

# Random-init scorers (the trained ones come from `make scorers`, which the default test run does not need).
GATE = [
    "preprocess.calibration.size=48",
    "~preprocess.gate.scorers.0.model.pretrained",
    "~preprocess.gate.scorers.1.model.pretrained",
]
SMALL = ["preprocess.raw.num_train=96", "preprocess.raw.num_val=48", "preprocess.raw.num_test=48", *GATE]


def pcfg(cfg_factory, tmp_path, *extra):
    synthetic = not any(x.startswith("raw=") for x in extra)
    cfg = cfg_factory(
        *(SMALL if synthetic else GATE),
        f"preprocess.out_dir={tmp_path / 'clean'}",
        f"preprocess.cache_dir={tmp_path / 'cache'}",
        *extra,
        config_name="preprocess",
    )
    return cfg


def test_entry_point_writes_manifests_reports_and_reuses_cache(cfg_factory, tmp_path):
    from datamodules.preprocess.__main__ import main_cfg

    cfg = pcfg(cfg_factory, tmp_path)
    torch.manual_seed(0)
    reports = main_cfg(cfg)
    out = clean_dir(cfg.preprocess)
    assert out.parent == tmp_path / "clean" and (out / "DONE").is_file()
    assert reports["train"]["accounted"] == 96 and reports["val"]["accounted"] == 48
    for f in (
        "train.jsonl",
        "val.jsonl",
        "report_train.md",
        "preprocess.json",
        "calibration/gate_histogram.png",
    ):
        assert (out / f).is_file(), f
    cal = json.loads((out / "calibration" / "calibration.json").read_text())
    assert {"suggested_threshold", "far_at_threshold", "tar_at_threshold", "used_threshold"} <= set(cal)
    calls = reports["train"]["model_calls"]
    assert calls.get("caption", 0) > 0
    # Same config again, forced to rebuild into another folder: every model output comes from the cache.
    torch.manual_seed(0)
    from datamodules.preprocess.run import run_preprocess

    again = run_preprocess(cfg.preprocess, tmp_path / "again")
    assert again["train"]["counts"] == reports["train"]["counts"]
    assert not again["train"]["model_calls"].get("caption") and not again["train"]["model_calls"].get(
        "repair"
    )


def test_fingerprint_tracks_config_and_input_files(cfg_factory, tmp_path, pairs_manifest):
    base = pcfg(cfg_factory, tmp_path, "raw=pairs", f"preprocess.raw.train_path={pairs_manifest}")
    fp = fingerprint(base.preprocess)
    assert fp == fingerprint(
        pcfg(cfg_factory, tmp_path, "raw=pairs", f"preprocess.raw.train_path={pairs_manifest}").preprocess
    )
    # Not semantic: batch sizes and folders.
    other = pcfg(
        cfg_factory,
        tmp_path,
        "raw=pairs",
        f"preprocess.raw.train_path={pairs_manifest}",
        "preprocess.batch_size=7",
        f"preprocess.cache_dir={tmp_path / 'elsewhere'}",
    )
    assert fingerprint(other.preprocess) == fp
    # Semantic: gate threshold, stages, and the content (size / mtime) of the raw manifest.
    assert (
        fingerprint(
            pcfg(
                cfg_factory,
                tmp_path,
                "raw=pairs",
                f"preprocess.raw.train_path={pairs_manifest}",
                "preprocess.gate.threshold=1.5",
            ).preprocess
        )
        != fp
    )
    assert (
        fingerprint(
            pcfg(
                cfg_factory,
                tmp_path,
                "raw=pairs",
                f"preprocess.raw.train_path={pairs_manifest}",
                "stages=[caption]",
            ).preprocess
        )
        != fp
    )
    with pairs_manifest.open("a") as f:
        f.write(json.dumps({"id": "new", "image": "imgs/1.png", "caption": "one more"}) + "\n")
    assert fingerprint(base.preprocess) != fp


def test_ensure_clean_reuses_up_to_date_and_rebuilds_stale(cfg_factory, tmp_path):
    cfg = pcfg(cfg_factory, tmp_path).preprocess
    torch.manual_seed(0)
    first = ensure_clean(cfg)
    stamp = (first / "train.jsonl").stat().st_mtime_ns
    assert ensure_clean(cfg) == first and (first / "train.jsonl").stat().st_mtime_ns == stamp
    cfg2 = pcfg(cfg_factory, tmp_path, "preprocess.raw.mismatch_rate=0.3").preprocess
    torch.manual_seed(0)
    second = ensure_clean(cfg2)
    assert second != first and (second / "DONE").is_file()


def test_train_on_preprocessed_noisy_world(cfg_factory, tmp_path):
    from train import train

    cfg = cfg_factory(
        "experiment=noisy_synthetic",
        *SMALL,
        f"preprocess.out_dir={tmp_path / 'clean'}",
        f"preprocess.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=16",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "benchmark.synthetic.num_items=8",
        "benchmark.synthetic.num_winoground=4",
        "trainer.enable_progress_bar=false",
        tiny=False,
    )
    metrics = train(cfg)
    out = clean_dir(cfg.preprocess)
    n_train = len((out / "train.jsonl").read_text().splitlines())
    report = json.loads((out / "report_train.json").read_text())
    # random-init scorers accept few pairs; every record is still accounted for
    assert (out / "DONE").is_file() and n_train == report["output"] > 0 and report["accounted"] == 96
    assert "eval/synthetic/mean/acc" in metrics  # the benchmark found the raw source's world
    assert "test/i2t_r1" in metrics
    # the test split is the raw source's clean test scenes: every caption true of its scene, none preprocessed
    from datamodules.preprocess.quality import true_pair
    from lightning_modules.model_factory import ModelSpec
    from lightning_modules.training import build_datamodule

    source = build_datamodule(cfg, ModelSpec(name="tiny-vit")).source
    test = source.records("test")
    assert test and all(true_pair(r, source.world) for r in test)


def test_config_mistakes_fail_fast(cfg_factory, tmp_path):
    from lightning_modules.model_factory import ModelSpec
    from lightning_modules.training import build_datamodule

    spec = ModelSpec(name="tiny-vit")
    with pytest.raises(ValueError, match="data=preprocessed needs a raw source"):
        build_datamodule(cfg_factory("data=preprocessed", tiny=False), spec)
    with pytest.raises(ValueError, match="add data=preprocessed"):
        build_datamodule(cfg_factory("raw=noisy_synthetic", tiny=False), spec)


def test_cli_missing_raw_path_names_the_key(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "datamodules.preprocess", "raw=pairs", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "train_path" in r.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_split_model_calls(tmp_path):
    """`torchrun --nproc_per_node 2 -m datamodules.preprocess`: the ranks share the captioner / repair calls (gloo
    barrier, shared cache) and rank 0's manifest equals a single-process run's."""
    common = [
        *SMALL,
        f"preprocess.cache_dir={tmp_path / 'cache_dist'}",
        f"preprocess.out_dir={tmp_path / 'dist'}",
        f"hydra.run.dir={tmp_path / 'run_dist'}",
    ]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "datamodules.preprocess",
            *common,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    single = [s.replace("dist", "single") for s in common]
    r1 = subprocess.run(
        [sys.executable, "-m", "datamodules.preprocess", *single],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r1.returncode == 0, r1.stderr[-3000:]
    (d,) = (tmp_path / "dist").iterdir()
    (s,) = (tmp_path / "single").iterdir()
    assert d.name == s.name  # same fingerprint: the folder names are not part of it
    meta_d = json.loads((d / "preprocess.json").read_text())["reports"]["train"]
    meta_s = json.loads((s / "preprocess.json").read_text())["reports"]["train"]
    assert meta_d["world_size"] == 2 and meta_d["counts"] == meta_s["counts"]
    assert (
        0 < meta_d["model_calls"]["caption"] < meta_s["model_calls"]["caption"]
    )  # rank 0 made only its share
    norm = lambda p: [json.loads(x)["caption"] for x in (p / "train.jsonl").read_text().splitlines()]  # noqa: E731
    assert norm(d) == norm(s)


def test_preprocessing_leaves_the_callers_rng_alone(cfg_factory, tmp_path):
    """train.py seeds, then maybe builds the manifest, then builds the model: the model init must not depend on
    whether the manifest had to be built (or on the preprocessing seed)."""
    cfg = pcfg(cfg_factory, tmp_path).preprocess
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    ensure_clean(cfg)
    assert torch.equal(before, torch.random.get_rng_state())


def test_preprocessed_synthetic_manifest_keeps_scene_graphs_for_image_negatives(cfg_factory, tmp_path):
    """Rows of synthetic-world renders carry their scene graph; the preprocessed source gives them back as
    `SceneFile` images whose file is exactly that scene rendered, so the renderer editor can make I'_C."""
    import random

    from datamodules.negatives.editors.renderer import RendererEditor
    from datamodules.records import load_image
    from datamodules.sources.preprocessed import PreprocessedSource
    from datamodules.sources.synthetic import SceneFile
    from datamodules.world.claims import Relation, holds, parse_claim
    from datamodules.world.render import render_scene
    from datamodules.world.scene import OPPOSITE, Scene

    cfg = pcfg(cfg_factory, tmp_path).preprocess
    torch.manual_seed(0)
    out = ensure_clean(cfg)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert rows and all("scene" in r for r in rows)  # every clean pair of the synthetic world is a render
    source = PreprocessedSource(cfg)
    records = source.records("train")
    assert len(records) == len(rows) and all(isinstance(r.image, SceneFile) for r in records)
    assert all("scene" not in r.meta for r in records)
    for r in records[:8]:
        pixels = load_image(r.image)
        assert list(pixels.getdata()) == list(render_scene(r.image.scene, pixels.size[0]).getdata())
        assert r.image_key == r.image.path  # same identity as a plain file record
    # a relation caption's position rewrite, rendered from the manifest's scene graph
    # (random-init scorers also let mismatched pairs through: take a true one)
    rel = next(
        r
        for r in records
        if isinstance(parse_claim(r.caption), Relation)
        and holds(parse_claim(r.caption), r.image.scene, source.world.relation_margin)
    )
    word = next(w for w in OPPOSITE if f" {w} " in rel.caption)
    target = rel.caption.replace(f" {word} ", f" {OPPOSITE[word]} ")
    edited = RendererEditor(source.world).edit(
        load_image(rel.image), rel, rel.caption, target, random.Random(0)
    )
    assert edited is not None and list(edited.getdata()) != list(load_image(rel.image).getdata())

    # a malformed scene in a manifest row is an error naming the file, the record and the object
    bad = out / "train.jsonl"
    rows[0]["scene"] = [["circle", "mauve", "small", 0.5, 0.5]]
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=rf"train\.jsonl: record '{rows[0]['id']}': scene: object 0"):
        PreprocessedSource(cfg).records("train")
    assert Scene.from_json(records[0].image.scene.to_json()) == records[0].image.scene


def test_make_train_recipe_gets_relational_image_negatives_from_preprocessed_data(cfg_factory, tmp_path):
    """`experiment=noisy_hardneg` (make train): the relational terms see re-rendered images on preprocessed data."""
    from train import train

    cfg = cfg_factory(
        "experiment=noisy_hardneg",
        "gate=none",  # random-init scorers would let too few pairs through for one batch
        *SMALL[:3],
        f"preprocess.out_dir={tmp_path / 'clean'}",
        f"preprocess.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=16",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "evaluate_after=false",
        "run_test=false",
        "trainer.enable_progress_bar=false",
        tiny=False,
    )
    metrics = train(cfg)
    assert metrics["train/rel_image_count"] > 0 and metrics["train/rel_text_count"] > 0
    assert "val/img_neg_cos/compositional/position" in metrics

"""evaluate.py end to end: open_clip models by file, several checkpoints side by side, reports, export parity."""

import json

import open_clip
import pytest
import torch

from datamodules.benchmarks.synthetic import SyntheticBenchmark
from datamodules.sources.synthetic import SyntheticWorldSource, world_from_run_config
from evaluate import evaluate
from lightning_modules.export import export_checkpoint
from lightning_modules.inference import ClipScorer, load_checkpoint
from tests.conftest import TINY, make_cfg
from tests.helpers import read_wandb_offline
from train import train


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    paths = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"run{seed}")
        train(make_cfg(out, [*TINY, "debug=fdr", f"seed={seed}", "evaluate_after=false", "run_test=false"]))
        paths.append(out / "checkpoints" / "last.ckpt")
    return paths


SMALL = ["benchmark.synthetic.num_items=16", "benchmark.synthetic.num_winoground=8"]


def test_compare_checkpoints_side_by_side(two_checkpoints, cfg_factory, tmp_path):
    a, b = two_checkpoints
    res = evaluate(cfg_factory(f"ckpt_path=[{a},{b}]", *SMALL, config_name="evaluate"))
    assert len(res) == 2 and all("synthetic/mean/acc" in r for r in res.values())
    table = (tmp_path / "comparison.md").read_text()
    assert all(label in table for label in res) and "chance" in table
    assert (tmp_path / "plot_synthetic.png").is_file()
    for label in res:
        assert (tmp_path / label / "results.json").is_file()
        html = (tmp_path / label / "failures.html").read_text()
        assert '<img src="data:image/png;base64,' in html


def test_export_loads_in_open_clip_and_scores_identically(two_checkpoints, tmp_path):
    ckpt = two_checkpoints[0]
    out = export_checkpoint(ckpt, tmp_path / "model.safetensors")
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["name"] == "tiny-vit"
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-vit", pretrained=str(out))
    exported = ClipScorer(model.eval(), preprocess, open_clip.get_tokenizer("tiny-vit"))
    ours_model, spec, run_cfg = load_checkpoint(ckpt)
    ours = ClipScorer(ours_model, spec.image_transform(), spec.tokenizer())
    bench = SyntheticBenchmark(num_items=16, num_winoground=8)
    world, size = world_from_run_config(run_cfg)
    ctx = {"world": world, "image_size": size}
    assert bench.run(exported, context=ctx).metrics == bench.run(ours, context=ctx).metrics
    for k, v in ours_model.state_dict().items():  # exported in open_clip's layout: a 0-d logit scale
        theirs = model.state_dict()[k]
        assert theirs.shape == v.shape or (k == "logit_scale" and theirs.ndim == 0)
        torch.testing.assert_close(theirs, v.reshape(theirs.shape))


def test_compact_export_loads_through_modelspec_with_the_checkpoints_text_features(two_checkpoints, tmp_path):
    from lightning_modules.compact import is_compact, token_rows
    from lightning_modules.model_factory import ModelSpec

    ckpt = two_checkpoints[0]
    out = export_checkpoint(ckpt, tmp_path / "c.safetensors", compact=True)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert is_compact(out) and meta["format"] == "hardneg-compact-1" and meta["trained_token_rows"] > 0
    full = tmp_path / "f.safetensors"
    export_checkpoint(ckpt, full)
    assert out.stat().st_size < full.stat().st_size / 5  # the token embedding is most of a tiny CLIP
    ours_model, spec, run_cfg = load_checkpoint(ckpt)
    loaded = ModelSpec(name="tiny-vit", pretrained=str(out)).build().eval()
    world, _ = world_from_run_config(run_cfg)
    caps = [
        r.caption
        for r in SyntheticWorldSource(world=world, num_train=32, num_val=0, num_test=0).records("train")
    ]
    tokens = spec.tokenizer()(caps)
    assert set(tokens.flatten().tolist()) - {0} <= token_rows(out)  # the debug run saw these words
    with torch.no_grad():
        a = ours_model.encode_text(tokens, normalize=True)
        b = loaded.encode_text(tokens, normalize=True)
        x = torch.randn(4, 3, spec.image_size, spec.image_size)
        ia, ib = ours_model.encode_image(x, normalize=True), loaded.encode_image(x, normalize=True)
    torch.testing.assert_close(b, a, atol=2e-3, rtol=0)  # fp16 storage
    torch.testing.assert_close(ib, ia, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="not a folder"):
        export_checkpoint(ckpt, tmp_path / "folder", compact=True)


def test_open_clip_model_by_local_file(two_checkpoints, cfg_factory, tmp_path):
    out = export_checkpoint(two_checkpoints[1], tmp_path / "w" / "m.safetensors")
    res = evaluate(
        cfg_factory("open_clip.name=tiny-vit", f"open_clip.pretrained={out}", *SMALL, config_name="evaluate")
    )
    assert "synthetic/swap_objects/acc" in res


def test_nothing_to_evaluate_is_a_clear_error(cfg_factory):
    with pytest.raises(ValueError, match="set ckpt_path"):
        evaluate(cfg_factory(config_name="evaluate"))


def test_wandb_offline_logging(two_checkpoints, cfg_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    res = evaluate(
        cfg_factory(
            f"ckpt_path={two_checkpoints[0]}",
            "log_wandb=true",
            "wandb.mode=offline",
            *SMALL,
            config_name="evaluate",
        )
    )
    assert res
    runs = list(tmp_path.glob("wandb/offline-run-*"))
    assert len(runs) == 1, "one offline W&B run per evaluated model"
    run = read_wandb_offline(runs[0])
    assert run["job_type"] == "evaluate" and run["name"] == "eval-debug-seed0"  # experiment tag + seed
    assert run["config"]["training"]["model"]["name"] == "tiny-vit"  # the checkpoint's training config
    logged = {k: v for row in run["history"] for k, v in row.items()}
    # stable keys: eval/<benchmark>/<subset>/<metric>, no run-folder name or timestamp in them
    assert logged["eval/synthetic/swap_objects/acc"] == res["synthetic/swap_objects/acc"]
    assert logged["eval/table/_type"] == "table-file" and logged["eval/table/nrows"] == len(res)
    assert logged["eval/failures/_type"] == "table-file" and logged["eval/failures/nrows"] > 0
    assert logged["eval/failure_images/count"] > 0 and logged["eval/bar_table/nrows"] > 0


LOAD_LOCAL_DIR = """
import json, sys, open_clip, torch
from PIL import Image
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + sys.argv[1])
tokenizer = open_clip.get_tokenizer("local-dir:" + sys.argv[1])
with torch.no_grad():
    img = model.eval().encode_image(preprocess(Image.new("RGB", (48, 48), (200, 30, 30)))[None])
    txt = model.encode_text(tokenizer(["a red circle left of a blue square"]))
print(json.dumps({"img": img[0].tolist(), "txt": txt[0].tolist()}))
"""


def test_exported_folder_loads_in_plain_open_clip_with_no_code(two_checkpoints, tmp_path):
    """A fresh interpreter that never registered tiny-vit loads the folder through open_clip's `local-dir:`."""
    import subprocess
    import sys

    from PIL import Image

    out = export_checkpoint(two_checkpoints[0], tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    p = subprocess.run(
        [sys.executable, "-c", LOAD_LOCAL_DIR, str(out)], capture_output=True, text=True, cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr[-2000:]
    theirs = json.loads(p.stdout.strip().splitlines()[-1])
    model, spec, _ = load_checkpoint(two_checkpoints[0])
    with torch.no_grad():
        img = model.encode_image(spec.image_transform()(Image.new("RGB", (48, 48), (200, 30, 30)))[None])
        txt = model.encode_text(spec.tokenizer()(["a red circle left of a blue square"]))
    torch.testing.assert_close(torch.tensor(theirs["img"]), img[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(theirs["txt"]), txt[0], atol=1e-5, rtol=1e-4)


def _sugarcrepe_fixture(root) -> None:
    """A SugarCrepe-format swap_obj subset (clip_benchmark's layout: <root>/swap_obj.json + <root>/val2017/) of
    rendered two-object scenes; the negative swaps the two colours (never equal to the caption: no ties)."""
    import random

    from datamodules.world import World
    from datamodules.world.render import render_scene

    (root / "val2017").mkdir(parents=True)
    world, ann, i = World(seed=0, min_objects=2, max_objects=2), {}, 0
    while len(ann) < 12:
        scene = world.sample_scene(random.Random(i), heldout_ok=False)
        i += 1
        a, b = scene.objects[:2]
        if a.color == b.color:
            continue
        render_scene(scene, 48).save(root / "val2017" / f"{i:012d}.jpg")
        ann[str(3 * i)] = {  # non-contiguous ids, as in the official files
            "filename": f"{i:012d}.jpg",
            "caption": f"a {a.color} {a.shape} and a {b.color} {b.shape}",
            "negative_caption": f"a {b.color} {a.shape} and a {a.color} {b.shape}",
        }
    (root / "swap_obj.json").write_text(json.dumps(ann))


def test_clip_benchmark_scores_the_exported_folder_as_evaluate_does(two_checkpoints, cfg_factory, tmp_path):
    """The exported open_clip folder loads in clip_benchmark with no code (`--model local-dir:<folder>`); its
    sugar_crepe score equals evaluate.py's on the same data, and evaluate.py's clip_benchmark-format JSON merges with
    clip_benchmark's own output under `clip_benchmark build`."""
    import csv
    import subprocess
    import sys

    pytest.importorskip("clip_benchmark")
    data = tmp_path / "sugarcrepe"
    _sugarcrepe_fixture(data)
    folder = export_checkpoint(two_checkpoints[0], tmp_path / "exported")
    theirs = tmp_path / "cb" / "theirs.json"
    theirs.parent.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "clip_benchmark.cli",
        "eval",
        "--dataset",
        "sugar_crepe/swap_obj",
        "--dataset_root",
        str(data),
        "--model",
        f"local-dir:{folder}",
        "--pretrained",
        "",
        "--task",
        "image_caption_selection",
        "--output",
        str(theirs),
        "--batch_size",
        "4",
        "--num_workers",
        "0",
        "--no_amp",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
    res = evaluate(
        cfg_factory(
            f"ckpt_path={two_checkpoints[0]}",
            "benchmark=sugarcrepe",
            f"benchmark.sugarcrepe.root={data}",
            f"benchmark.sugarcrepe.image_dir={data}/val2017",
            "benchmark.sugarcrepe.subsets=[swap_obj]",
            config_name="evaluate",
        )
    )
    cb = json.loads(theirs.read_text())
    assert 100 * cb["metrics"]["text_acc"] == pytest.approx(res["sugarcrepe/swap_obj/acc"], abs=1e-4)
    ours = json.loads((tmp_path / "clip_benchmark" / "sugar_crepe_swap_obj.json").read_text())
    assert ours["dataset"] == cb["dataset"] == "sugar_crepe/swap_obj" and ours["task"] == cb["task"]
    assert ours["metrics"]["acc"] == pytest.approx(cb["metrics"]["acc"], abs=1e-6)
    merged = tmp_path / "benchmark.csv"
    (tmp_path / "cb" / "ours.json").write_text(json.dumps(ours))
    p = subprocess.run(
        [sys.executable, "-m", "clip_benchmark.cli", "build", str(tmp_path / "cb"), "--output", str(merged)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader(merged.open()))
    assert len(rows) == 2 and len({round(float(r["acc"]), 6) for r in rows}) == 1

"""`python -m lightning_modules.reflection.caption`: captions for new images (folder, manifest, synthetic world),
with and without look-again reflection; bad input is counted or named."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from lightning_modules.reflection.caption import load_config, main, run


def test_world_input_with_symbolic_captioner_and_reflection(tmp_path):
    out = tmp_path / "caps.jsonl"
    plain = main(["world:test:120", "captioner=symbolic", "captioner.error_rate=0.5", f"output={out}"])
    assert plain["captioned"] == 120 and "revised" not in plain
    # half the captions have one wrong colour: the truth rate is measured, not assumed
    assert 30 < plain["truth_rate"] < 80
    refl = main(
        [
            "world:test:120",
            "captioner=symbolic",
            "captioner.error_rate=0.5",
            "reflect=true",
            "reflector.error_rate=0.0",
            f"output={tmp_path / 'refl.jsonl'}",
        ]
    )
    # the same initial captions (same seeds), then looked at again with a perfect responder
    assert refl["initial_truth_rate"] == plain["truth_rate"]
    assert refl["truth_rate"] > plain["truth_rate"] + 15 and refl["revised"] > 0
    lines = [json.loads(x) for x in (tmp_path / "refl.jsonl").read_text().splitlines()]
    revised = [x for x in lines if x["caption"] != x["initial"]]
    assert revised and all(x["trace"] and x["trace"][0]["qa"] for x in revised)
    assert all(set(x) >= {"id", "caption", "initial", "trace", "truth", "initial_truth"} for x in lines)
    summary = json.loads((tmp_path / "refl.jsonl.summary.json").read_text())
    assert summary["truth_rate"] == refl["truth_rate"]


def test_folder_and_manifest_inputs_with_a_tiny_trained_captioner_folder(tmp_path):
    from lightning_modules.reflection.captioner import build_tiny_captioner

    model = build_tiny_captioner(tmp_path / "cap", seed=0)
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, c in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (64, 64), c).save(photos / ("sub" if i == 2 else ".") / f"im{i}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "o.jsonl"
    s = main([str(photos), f"captioner.path={model}", "captioner.max_new_tokens=4", f"output={out}"])
    assert s["images"] == 4 and s["skipped"] == {"image_unreadable": 1}
    assert s["captioned"] + sum(s["failed"].values()) == 3
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["id"] for x in lines} <= {"im0.png", "im1.png", "sub/im2.png"}
    # a manifest: paths relative to it; a bad line is named
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"image": "photos/im0.png", "id": "a"}) + "\n" + json.dumps({"id": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"m.jsonl:2: each line needs an 'image'"):
        main([str(man), f"captioner.path={model}", f"output={out}"])
    man.write_text(
        json.dumps({"image": "photos/im0.png", "id": "a"}) + "\n" + json.dumps({"image": "gone.png"}) + "\n"
    )
    s2 = main([str(man), f"captioner.path={model}", "captioner.max_new_tokens=4", f"output={out}"])
    assert s2["skipped"] == {"image_missing": 1} and s2["images"] == 2


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="world:<train|val|test>:<n>"):
        run(load_config(["world:dev:10", f"output={tmp_path / 'x.jsonl'}"]))
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        run(load_config([str(tmp_path / "nowhere"), f"output={tmp_path / 'x.jsonl'}"]))
    with pytest.raises(ValueError, match="no input"):
        load_config([])
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        main(["world:test:2", f"output={tmp_path / 'x.jsonl'}", f"captioner.path={tmp_path}"])


def test_command_line(tmp_path):
    out = tmp_path / "c.jsonl"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_modules.reflection.caption",
            "world:val:5",
            "captioner=symbolic",
            f"output={out}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        json.loads(r.stdout.strip().splitlines()[-1])["captioned"] == 5
        and len(out.read_text().splitlines()) == 5
    )

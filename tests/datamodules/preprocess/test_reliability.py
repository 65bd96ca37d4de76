"""Preprocessing outputs are safe to share: image files never collide, concurrent builds of one fingerprint folder
both succeed, and readers never see a half-written manifest."""

from __future__ import annotations

import io
import json
import multiprocessing as mp

from PIL import Image

from datamodules.preprocess.pipeline import Preprocessor, image_file_name
from datamodules.records import Record


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_ids_that_flatten_alike_get_their_own_image_files(tmp_path):
    """Webdataset keys `a/b`, `a_b`, `a b` used to share `..._a_b.png`: three captions on one (wrong) image."""
    ids, colours = ["shard.tar_a/b", "shard.tar_a_b", "shard.tar_a b"], ["red", "green", "blue"]
    assert len({image_file_name(i) for i in ids}) == 3
    recs = [Record(i, _png(c), f"a {c} square") for i, c in zip(ids, colours)]
    Preprocessor(None, []).run(recs, tmp_path, "train")
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len({r["image"] for r in rows}) == 3
    for r, colour in zip(sorted(rows, key=lambda r: ids.index(r["id"])), colours):
        pixel = Image.open(tmp_path / r["image"]).convert("RGB").getpixel((5, 5))
        assert pixel == Image.new("RGB", (1, 1), colour).getpixel((0, 0)), (r["id"], colour)
    assert not list(tmp_path.rglob("*.tmp"))


def _ensure(overrides, queue):
    from hydra import compose, initialize_config_dir

    from datamodules.preprocess.run import ensure_clean
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="preprocess", overrides=overrides)
    try:
        queue.put(str(ensure_clean(cfg.preprocess)))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        queue.put(f"error: {type(e).__name__}: {e}")


def test_two_concurrent_runs_on_one_fingerprint_folder_both_succeed(tmp_path):
    from tests.datamodules.preprocess.test_preprocess_run import SMALL

    overrides = [
        *SMALL,
        f"preprocess.out_dir={tmp_path / 'clean'}",
        f"preprocess.cache_dir={tmp_path / 'cache'}",
    ]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(overrides, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(not r.startswith("error") for r in results), results
    assert results[0] == results[1]
    out = tmp_path / "clean"
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "DONE").is_file()  # no build folder left behind
    assert len((folders[0] / "train.jsonl").read_text().splitlines()) > 0


def test_rows_the_raw_source_skipped_appear_in_the_split_reports(tmp_path):
    recs = [Record("a", _png("red"), "a red square")]
    Preprocessor(None, []).run(
        recs, tmp_path, "train", skipped_by_source={"bad_json_line": 3, "not_an_object": 1}
    )
    report = json.loads((tmp_path / "report_train.json").read_text())
    assert report["skipped_by_source"] == {"bad_json_line": 3, "not_an_object": 1}
    assert "| skipped by the raw source: bad_json_line | 3 |" in (tmp_path / "report_train.md").read_text()

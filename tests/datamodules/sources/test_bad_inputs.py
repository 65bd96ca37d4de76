"""Bad input gets an error naming the file/line/key, or a counted skip — never a bare exception deep inside."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from types import SimpleNamespace

import pytest
from PIL import Image

from datamodules.datamodule import ClipDataModule
from datamodules.dataset import Batch, ClipDataset
from datamodules.records import Record, load_image
from datamodules.sources.coco_captions import CocoCaptionsSource
from datamodules.sources.pairs import PairsSource
from lightning_modules.model_factory import ModelSpec


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size (no pixel data): enough for PIL to read the header and refuse it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_jsonl_line_that_is_not_an_object_is_a_counted_skip_with_its_line(tmp_path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "caption": "a black square"})
    (tmp_path / "m.jsonl").write_text(f"{good}\n42\n[1, 2]\n")
    src = PairsSource(train_path=str(tmp_path / "m.jsonl"), val_fraction=0.0)
    with caplog.at_level(logging.WARNING):
        assert len(src.records("train")) == 1
    assert src.skipped["train"]["not_an_object"] == 2
    assert "'not_an_object': [2, 3]" in caplog.text


def test_csv_without_the_columns_names_them_and_a_bom_is_ignored(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "bad.csv").write_text("file,text\na.png,a square\n")
    with pytest.raises(ValueError, match=r"bad\.csv: CSV header has columns \['file', 'text'\]"):
        PairsSource(train_path=str(tmp_path / "bad.csv"), val_fraction=0.0).records("train")
    (tmp_path / "bom.csv").write_bytes("\ufeffimage,caption\na.png,a square\n".encode())
    assert len(PairsSource(train_path=str(tmp_path / "bom.csv"), val_fraction=0.0).records("train")) == 1


def test_a_manifest_with_no_usable_row_fails_with_the_reasons(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"img": "a.png", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"none of its 1 rows is usable: \{'empty_caption': 1\}"):
        PairsSource(train_path=str(tmp_path / "m.jsonl"), val_fraction=0.0).records("train")


def test_coco_entry_with_a_list_id_is_a_counted_skip(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "1.png")
    data = {
        "images": [{"id": [3], "file_name": "3.png"}, {"id": 1, "file_name": "1.png"}],
        "annotations": [{"image_id": [3], "caption": "x"}, {"image_id": 1, "caption": "a black square"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(data))
    src = CocoCaptionsSource(str(tmp_path / "c.json"), str(tmp_path / "imgs"))
    recs = src.records("train")
    assert [r.caption for r in recs] == ["a black square"]
    assert src.skipped["train"]["bad_image_entry"] == 1 and src.skipped["train"]["bad_annotation"] == 1


@pytest.mark.parametrize("value", ["abc", 0, 2.5])
def test_batch_size_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=r"data\.batch_size must be a positive integer"):
        ClipDataModule(SimpleNamespace(), batch_size=value)


def test_images_over_the_limit_are_refused_before_decoding(tmp_path):
    (tmp_path / "big.png").write_bytes(_png_header(12000, 12000))  # under PIL's bomb limit, over ours
    with pytest.raises(
        ValueError, match=r"big\.png: 12000x12000 = 144000000 pixels exceeds the limit 50000000"
    ):
        load_image(tmp_path / "big.png", max_pixels=50_000_000)
    (tmp_path / "bomb.png").write_bytes(_png_header(20000, 20000))
    with pytest.raises(ValueError, match=r"bomb\.png: refused as a decompression bomb"):
        load_image(tmp_path / "bomb.png", max_pixels=50_000_000)  # PIL's own check, now with the file named


def test_unreadable_and_oversize_images_are_skipped_counted_and_replaced(tmp_path):
    spec = ModelSpec(name="tiny-vit")
    Image.new("RGB", (48, 48), "red").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "huge.png").write_bytes(_png_header(20000, 20000))
    recs = [Record(n, str(tmp_path / f"{n}.png"), f"caption {n}") for n in ("broken", "huge", "ok")]
    ds = ClipDataset(recs, spec.image_transform(), spec.tokenizer(), max_pixels=1_000_000)
    sample = ds[0]
    assert sample["id"] == "ok" and sample["bad_ids"] == ["broken", "huge"]
    all_bad = ClipDataset(recs[:2], spec.image_transform(), spec.tokenizer())
    with pytest.raises(RuntimeError, match="2 unreadable images in a row"):
        all_bad[0]


def test_training_stops_above_the_bad_fraction_naming_records():
    dm = ClipDataModule(SimpleNamespace(), batch_size=4, max_bad_fraction=0.05)
    dm.trainer = SimpleNamespace(training=True, validating=False)

    def batch(bad):
        return Batch(None, None, None, None, None, ids_B=[f"r{i}" for i in range(100)], bad_ids=bad)

    dm.on_after_batch_transfer(batch([]), 0)
    dm.on_after_batch_transfer(batch(["x1"] * 5), 0)  # 5 / 200 = 2.5%
    with pytest.raises(RuntimeError, match=r"16 of 300 training samples .* last: \['x8', 'x9', 'x10'\]"):
        dm.on_after_batch_transfer(batch([f"x{i}" for i in range(11)]), 0)


def test_tsv_and_custom_separators(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "m.tsv").write_text("image\tcaption\na.png\ta black square, seen from above\n")
    recs = PairsSource(train_path=str(tmp_path / "m.tsv"), val_fraction=0.0).records("train")
    assert [r.caption for r in recs] == ["a black square, seen from above"]
    (tmp_path / "m.csv").write_text("image;caption\na.png;a black square\n")
    with pytest.raises(
        ValueError, match=r"separator ','"
    ):  # the default reads one column named 'image;caption'
        PairsSource(train_path=str(tmp_path / "m.csv"), val_fraction=0.0).records("train")
    recs = PairsSource(train_path=str(tmp_path / "m.csv"), val_fraction=0.0, separator=";").records("train")
    assert [r.caption for r in recs] == ["a black square"]

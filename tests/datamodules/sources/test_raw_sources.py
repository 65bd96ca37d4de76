"""Raw sources (image folder, text file, COCO captions JSON, webdataset shards, JSONL/CSV with lone rows, mixed)
on a fixture of broken files: every unusable entry is skipped and counted by the source or by preprocessing, and
the two counts together account for every input."""

import io
import json
import tarfile

import pytest
from PIL import Image

from datamodules.preprocess.pipeline import Preprocessor
from datamodules.sources.coco_captions import CocoCaptionsSource
from datamodules.sources.image_folder import ImageFolderSource
from datamodules.sources.mixed import MixedSource
from datamodules.sources.pairs import PairsSource
from datamodules.sources.text_file import TextFileSource
from datamodules.sources.webdataset import WebDatasetSource, expand_shards


def png(color="red", size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def broken_folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    (d / "a.png").write_bytes(png("red"))
    (d / "a.txt").write_text("a red picture\n")
    (d / "b.png").write_bytes(png("blue"))  # lone image
    (d / "sub" / "c.jpg").write_bytes(b"\xff\xd8\xff garbage")  # corrupt
    (d / "sub" / "c.txt").write_text("a corrupt one")
    (d / "d.png").write_bytes(b"")  # zero bytes
    (d / "e.png").write_bytes(png("green", (3, 3)))  # too small
    (d / "f.png").write_bytes(png("white"))
    (d / "f.txt").write_bytes(b"caf\xe9 latin-1 caption")  # invalid UTF-8 sidecar -> lone image
    (d / "notes.md").write_text("not an image")
    return d


def test_image_folder(broken_folder):
    src = ImageFolderSource(str(broken_folder))
    recs = {r.id: r for r in src.records("train")}
    assert set(recs) == {"a.png", "b.png", "sub/c.jpg", "d.png", "e.png", "f.png"}
    assert recs["a.png"].caption == "a red picture" and recs["a.png"].source == "pair"
    assert recs["b.png"].source == "lone_image" and recs["f.png"].source == "lone_image"
    assert src.skipped["train"]["caption_invalid_utf8"] == 1 and src.records("val") == []
    out = Preprocessor(None, [], min_side=8).run(src.records("train"), broken_folder.parent / "out")
    d = out["report"]["dropped"]
    assert d["image_unreadable"] == 2 and d["image_too_small"] == 1 and d["lone_image_not_captioned"] == 2
    assert out["report"]["output"] == 1 and out["report"]["accounted"] == 6
    with pytest.raises(FileNotFoundError, match="raw.root"):
        ImageFolderSource(str(broken_folder / "nope"))


def test_text_file(tmp_path):
    p = tmp_path / "caps.txt"
    p.write_bytes(b"a red circle\n\n   \ntwo blue squares\nbad \xff\xfe bytes\nlast line no newline")
    src = TextFileSource(str(p))
    recs = src.records("train")
    assert [r.caption for r in recs] == ["a red circle", "two blue squares", "last line no newline"]
    assert all(r.source == "lone_text" and r.image is None for r in recs)
    assert dict(src.skipped["train"]) == {"empty_line": 2, "invalid_utf8": 1}


def test_coco_captions(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.png").write_bytes(png("red"))
    (tmp_path / "img" / "2.png").write_bytes(png("blue"))
    ann = {
        "images": [
            {"id": 1, "file_name": "1.png"},
            {"id": 2, "file_name": "2.png"},
            {"id": 3, "file_name": "3.png"},
            {"nofile": 1},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a red square"},
            {"id": 11, "image_id": 1, "caption": "red"},
            {"id": 12, "image_id": 99, "caption": "unknown image"},
            {"id": 13, "image_id": 3, "caption": "missing file"},
            {"id": 14, "image_id": 1, "caption": "  "},
        ],
    }
    (tmp_path / "cap.json").write_text(json.dumps(ann))
    src = CocoCaptionsSource(str(tmp_path / "cap.json"), str(tmp_path / "img"))
    recs = src.records("train")
    assert sorted(r.id for r in recs) == ["coco-10", "coco-11", "coco-13", "coco-14", "coco-image-2"]
    assert dict(src.skipped["train"]) == {"annotation_of_unknown_image": 1, "bad_image_entry": 1}
    out = Preprocessor(None, []).run(recs, tmp_path / "out")
    d = out["report"]["dropped"]
    assert (
        d["image_missing"] == 1 and d["lone_image_not_captioned"] == 2
    )  # the whitespace caption -> lone image
    assert out["report"]["output"] == 2
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid COCO JSON"):
        CocoCaptionsSource(str(tmp_path / "bad.json"), str(tmp_path / "img")).records("train")


def _shard(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path):
    _shard(
        tmp_path / "shard-000000.tar",
        [
            ("s0/000.jpg", png("red")),
            ("s0/000.txt", b"a red square"),
            ("s0/001.png", png("blue")),  # lone image
            ("s0/002.txt", b"two green stars"),  # lone text
            ("s0/003.json", json.dumps({"caption": "from json"}).encode()),
            ("s0/003.png", png("white")),
            ("s0/004.txt", b"\xff\xfe bad"),  # unreadable caption, no image
            ("s0/005.jpg", b"corrupt"),
            ("s0/005.txt", b"a corrupt image"),
        ],
    )
    _shard(tmp_path / "shard-000001.tar", [("x.png", png("yellow")), ("x.txt", b"a yellow one")])
    (tmp_path / "shard-000002.tar").write_bytes(b"not a tar at all")
    assert expand_shards(str(tmp_path / "shard-{000000..000002}.tar"))[-1].endswith("shard-000002.tar")
    src = WebDatasetSource(str(tmp_path / "shard-{000000..000002}.tar"))
    recs = {r.id.split("/", 1)[1]: r for r in src.records("train")}
    assert set(recs) == {"s0/000", "s0/001", "s0/002", "s0/003", "s0/005", "x"}
    assert recs["s0/001"].source == "lone_image" and recs["s0/002"].source == "lone_text"
    assert recs["s0/003"].caption == "from json" and isinstance(recs["s0/000"].image, bytes)
    assert dict(src.skipped["train"]) == {
        "shard_unreadable": 1,
        "caption_unreadable": 1,
        "sample_without_image_or_caption": 1,
    }
    out = Preprocessor(None, []).run(list(recs.values()), tmp_path / "out")
    assert out["report"]["dropped"]["image_unreadable"] == 1 and out["report"]["output"] == 3
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert all(
        (tmp_path / "out" / json.loads(x)["image"]).is_file() for x in lines
    )  # shard images written out
    with pytest.raises(FileNotFoundError, match="no shard"):
        WebDatasetSource(str(tmp_path / "none-*.tar"))


def test_pairs_raw_mode_and_invalid_utf8_csv(tmp_path):
    (tmp_path / "i.png").write_bytes(png())
    p = tmp_path / "raw.csv"
    p.write_bytes(
        b"id,image,caption\n"
        b"1,i.png,a red square\n"
        b"2,i.png,\n"  # lone image
        b"3,,a lone text\n"
        b"4,i.png,caf\xe9 broken\n"  # invalid UTF-8: only this row is skipped
        b"5,,\n"
        b"6,i.png,after the bad row\n"
    )
    src = PairsSource(str(p), val_fraction=0.0, check_images=False, allow_lone=True)
    recs = {r.id: r for r in src.records("train")}
    assert set(recs) == {"1", "2", "3", "6"} and recs["2"].source == "lone_image" and recs["3"].image is None
    assert dict(src.skipped["train"]) == {"invalid_utf8": 1, "empty_caption": 1}
    strict = PairsSource(str(p), val_fraction=0.0)
    assert {r.id for r in strict.records("train")} == {"1", "6"}
    j = tmp_path / "raw.jsonl"
    j.write_bytes(b'{"id": "a", "image": "i.png", "caption": "ok"}\n{"id": "b", "caption": "caf\xe9"}\n')
    js = PairsSource(str(j), val_fraction=0.0, allow_lone=True)
    assert len(js.records("train")) == 1 and dict(js.skipped["train"]) == {"invalid_utf8": 1}


def test_mixed_source_prefixes_ids_and_merges_skips(tmp_path, broken_folder):
    caps = tmp_path / "caps.txt"
    caps.write_bytes(b"a red circle\n\n")
    mixed = MixedSource({"folder": ImageFolderSource(str(broken_folder)), "texts": TextFileSource(str(caps))})
    ids = [r.id for r in mixed.records("train")]
    assert "folder:a.png" in ids and "texts:caps-0" in ids and len(ids) == len(set(ids)) == 7
    assert [r.id for r in mixed.records("train")] == ids  # stable across calls
    assert mixed.skipped["train"] == {"folder:caption_invalid_utf8": 1, "texts:empty_line": 1}

"""Public benchmarks on small fixtures in each official file format (generated images), scored by a transparent
colour scorer whose right answers are known, then wiring checks with a real tiny open_clip model."""

import csv
import json

import pytest
import torch
from PIL import Image

from datamodules.benchmarks.aro import AroVG
from datamodules.benchmarks.aro_order import AroOrder, pre_caption
from datamodules.benchmarks.base import MissingData
from datamodules.benchmarks.crepe import Crepe
from datamodules.benchmarks.retrieval import Retrieval
from datamodules.benchmarks.runner import run_benchmarks
from datamodules.benchmarks.sugarcrepe import SUBSETS, SugarCrepe
from datamodules.benchmarks.winoground import Winoground
from datamodules.benchmarks.zeroshot import ZeroShot
from lightning_modules.inference import ClipScorer
from lightning_modules.model_factory import ModelSpec

RGB = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230), "yellow": (240, 230, 30)}
NAMES = list(RGB)


class ColourScorer(ClipScorer):
    """Image feature: one-hot of its nearest colour (mean pixel). Text feature: one-hot of its first colour word."""

    def __init__(self):
        self.batch_size = 7

    def encode_images(self, images):
        out = []
        for im in images:
            r, g, b = [sum(c) / len(c) for c in zip(*im.convert("RGB").getdata())]
            k = min(range(4), key=lambda i: sum((x - y) ** 2 for x, y in zip((r, g, b), RGB[NAMES[i]])))
            out.append(torch.nn.functional.one_hot(torch.tensor(k), 4).float())
        return torch.stack(out)

    def encode_texts(self, texts):
        out = []
        for t in texts:
            words = t.lower().replace(",", " ").replace(".", " ").split()
            k = next((NAMES.index(w) for w in words if w in NAMES), None)
            out.append(
                torch.zeros(4) if k is None else torch.nn.functional.one_hot(torch.tensor(k), 4).float()
            )
        return torch.stack(out)


def solid(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, RGB[colour]).save(path)
    return path.name


def test_sugarcrepe_official_format(tmp_path):
    img_dir = tmp_path / "val2017"
    for c in NAMES:
        solid(img_dir / f"0000{c}.jpg", c)
    root = tmp_path / "sc"
    root.mkdir()
    for s, subset in enumerate(SUBSETS):
        # ids are strings and not contiguous, as in the release; subset s gets s wrong items out of 4.
        items = {}
        for i, c in enumerate(NAMES):
            other = NAMES[(i + 1) % 4]
            pos, neg = (
                (f"a {c} thing", f"a {other} thing") if i >= s % 4 else (f"a {other} thing", f"a {c} thing")
            )
            items[str(10 * i + 3)] = {"filename": f"0000{c}.jpg", "caption": pos, "negative_caption": neg}
        (root / f"{subset}.json").write_text(json.dumps(items))
    res = SugarCrepe(str(root), str(img_dir)).run(ColourScorer())
    expected = {subset: 100 * (4 - s % 4) / 4 for s, subset in enumerate(SUBSETS)}
    for subset, acc in expected.items():
        assert res.metrics[f"{subset}/acc"] == acc
    assert res.metrics["mean/acc"] == pytest.approx(sum(expected.values()) / 7)
    assert res.metrics["replace/acc"] == pytest.approx(
        (expected["replace_att"] + expected["replace_obj"] + expected["replace_rel"]) / 3
    )
    assert res.counts["add"] == 8 and res.chance["swap/acc"] == 50.0
    assert res.failures and all(f["score_pos"] <= f["score_neg"] for f in res.failures)


def test_sugarcrepe_ties_are_wrong(tmp_path):
    solid(tmp_path / "img" / "a.jpg", "red")
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "add_att.json").write_text(
        json.dumps({"5": {"filename": "a.jpg", "caption": "a dog", "negative_caption": "a cat"}})
    )
    res = SugarCrepe(str(tmp_path / "sc"), str(tmp_path / "img"), subsets=["add_att"]).run(ColourScorer())
    assert res.metrics["add_att/acc"] == 0.0  # strict pos > neg


def aro_image(path):
    """Blue image with a red box at (10, 5, 20, 12): only the cropped region is red."""
    im = Image.new("RGB", (60, 40), RGB["blue"])
    im.paste(Image.new("RGB", (20, 12), RGB["red"]), (10, 5))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def test_aro_vg_relation_crop_and_symmetric_filter(tmp_path):
    aro_image(tmp_path / "images" / "1.jpg")
    box = {"image_path": "1.jpg", "bbox_x": 10, "bbox_y": 5, "bbox_w": 20, "bbox_h": 12}
    items = (
        [
            {
                **box,
                "relation_name": "on",
                "true_caption": "the red cup is on the table",
                "false_caption": "the blue table is on the cup",
            }
        ]
        * 3
        + [{**box, "relation_name": "under", "true_caption": "the blue x", "false_caption": "the red y"}] * 2
        + [{**box, "relation_name": "next to", "true_caption": "the blue a", "false_caption": "the red b"}]
        * 5
    )
    (tmp_path / "visual_genome_relation.json").write_text(json.dumps(items))
    res = AroVG(str(tmp_path), "relation").run(ColourScorer())
    # Crop makes the image red: "on" right (3/3), "under" wrong (0/2), "next to" wrong but excluded (symmetric).
    assert res.metrics["macro/acc"] == pytest.approx(50.0)
    assert res.metrics["micro/acc"] == pytest.approx(30.0)
    assert res.counts["macro"] == 2


def test_aro_vg_attribution_min_count(tmp_path):
    aro_image(tmp_path / "images" / "1.jpg")
    box = {"image_path": "1.jpg", "bbox_x": 10, "bbox_y": 5, "bbox_w": 20, "bbox_h": 12}
    items = [
        {
            **box,
            "attributes": ["red", "wooden"],
            "true_caption": "the red chair",
            "false_caption": "the blue chair",
        }
    ] * 25 + [
        {**box, "attributes": ["blue", "big"], "true_caption": "the blue dog", "false_caption": "the red dog"}
    ] * 24
    (tmp_path / "visual_genome_attribution.json").write_text(json.dumps(items))
    res = AroVG(str(tmp_path), "attribution").run(ColourScorer())
    assert res.metrics["macro/acc"] == 100.0  # the 24-item pair is below the 25 threshold and excluded
    assert res.metrics["micro/acc"] == pytest.approx(100 * 25 / 49)


def test_aro_order_format_and_perturbations(tmp_path):
    solid(tmp_path / "val2014" / "a.jpg", "red")
    solid(tmp_path / "val2014" / "b.jpg", "green")
    ann = [
        {"image": "val2014/a.jpg", "caption": ["A red bus parked next to a small green car.", "red bus"]},
        {"image": "val2014/b.jpg", "caption": ["A big green tree in front of a white house."]},
    ]
    (tmp_path / "test.json").write_text(json.dumps(ann))
    bench = AroOrder(str(tmp_path / "test.json"), str(tmp_path), seed=1)
    res = bench.run(ColourScorer())
    assert res.counts["all"] == 3 and res.chance["all/precision_at_1"] == 20.0
    # The scorer only reads a caption's first colour word, so no perturbation outscores the positive, and ties go
    # to the true caption (option 0; argmax picks the first), as in the official protocol.
    assert res.metrics["all/precision_at_1"] == 100.0
    assert res.notes["pos_tagger"] in ("spacy", "wordlist")
    assert pre_caption("A Dog; running!  fast.") == "a dog running fast"
    again = AroOrder(str(tmp_path / "test.json"), str(tmp_path), seed=1).run(ColourScorer())
    assert again.metrics == res.metrics  # fixed seed


def test_winoground_jsonl_format(tmp_path):
    for name, c in [
        ("ex_0_img_0", "red"),
        ("ex_0_img_1", "blue"),
        ("ex_1_img_0", "green"),
        ("ex_1_img_1", "yellow"),
    ]:
        Image.new("RGB", (20, 20), RGB[c]).save(
            (tmp_path / "images").mkdir(exist_ok=True) or tmp_path / "images" / f"{name}.png"
        )
    rows = [
        {
            "id": 0,
            "image_0": "ex_0_img_0",
            "image_1": "ex_0_img_1",
            "caption_0": "red over blue",
            "caption_1": "blue over red",
            "tag": "Object",
        },
        {
            "id": 1,
            "image_0": "ex_1_img_0",
            "image_1": "ex_1_img_1",
            "caption_0": "a yellow thing",
            "caption_1": "a green thing",
            "tag": "Relation",
        },
    ]
    (tmp_path / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = Winoground(str(tmp_path)).run(ColourScorer())
    # item 0 all right; item 1 captions swapped: text and image scores both fail.
    assert (
        res.metrics["all/text"] == 50.0
        and res.metrics["all/image"] == 50.0
        and res.metrics["all/group"] == 50.0
    )
    assert res.metrics["Object/group"] == 100.0 and res.metrics["Relation/group"] == 0.0
    assert res.chance["all/group"] == pytest.approx(100 / 6)


def test_crepe_csv_format(tmp_path):
    aro_image(tmp_path / "vg" / "7.jpg")
    syst = tmp_path / "crepe" / "syst_hard_negatives"
    syst.mkdir(parents=True)
    head = [
        "image_id",
        "x",
        "y",
        "width",
        "height",
        "caption",
        "valid_hard_negs_atom",
        "valid_hard_negs_comp",
    ]
    for comp, good in (("seen", True), ("unseen", False)):
        with (syst / f"syst_vg_hard_negs_{comp}_compounds_in_laion.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(head)
            cap = "a red box" if good else "a blue box"
            w.writerow(
                [
                    7,
                    10,
                    5,
                    20,
                    12,
                    cap,
                    str(["a blue box", "a green box"] if good else ["a red box", "a green box"]),
                    str(["a yellow box"]),
                ]
            )
    res = Crepe(str(tmp_path / "crepe"), [str(tmp_path / "vg")], prod_types=[]).run(ColourScorer())
    assert res.metrics["syst_seen_atom/r1"] == 100.0 and res.metrics["syst_unseen_atom/r1"] == 0.0
    assert res.chance["syst_seen_atom/r1"] == pytest.approx(100 / 3)
    assert res.chance["syst_seen_comp/r1"] == pytest.approx(50.0)


@pytest.mark.parametrize("fmt", ["blip", "karpathy"])
def test_retrieval_formats(tmp_path, fmt):
    for c in NAMES:
        solid(tmp_path / "imgs" / f"{c}.jpg", c)
    if fmt == "blip":
        ann = [{"image": f"imgs/{c}.jpg", "caption": [f"a {c} photo", f"something {c}"]} for c in NAMES]
    else:
        ann = {
            "images": [
                {
                    "filepath": "imgs",
                    "filename": f"{c}.jpg",
                    "split": "test",
                    "sentences": [{"raw": f"a {c} photo"}, {"raw": f"something {c}"}],
                }
                for c in NAMES
            ]
            + [{"filepath": "imgs", "filename": "red.jpg", "split": "train", "sentences": [{"raw": "x"}]}]
        }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    res = Retrieval(str(tmp_path / "ann.json"), str(tmp_path)).run(ColourScorer())
    assert res.counts == {"i2t": 4, "t2i": 8}
    assert res.metrics["i2t/r1"] == 100.0 and res.metrics["t2i/r1"] == 100.0
    assert res.chance["t2i/r1"] == 25.0


def test_zeroshot_image_folder(tmp_path):
    for c in NAMES:
        for i in range(2):
            solid(tmp_path / c / f"{i}.png", c)
    res = ZeroShot(str(tmp_path), templates=["a photo of a {}."]).run(ColourScorer())
    assert res.metrics["all/top1"] == 100.0 and res.chance["all/top1"] == 25.0 and res.counts["all"] == 8
    with pytest.raises(ValueError, match="needs a"):
        ZeroShot(str(tmp_path), templates=["no placeholder"])


def test_missing_data_is_reported_and_others_still_run(tmp_path):
    for c in NAMES:
        for i in range(2):
            solid(tmp_path / "zs" / c / f"{i}.png", c)
    benches = {
        "sugarcrepe": SugarCrepe(str(tmp_path / "nope"), str(tmp_path / "nope_imgs")),
        "zeroshot": ZeroShot(str(tmp_path / "zs")),
    }
    report = run_benchmarks(ColourScorer(), benches, tmp_path / "out")
    assert "zeroshot/all/top1" in report["results"]
    msg = report["errors"]["sugarcrepe"]
    assert "nope" in msg and "Expected layout" in msg and "How to obtain" in msg
    assert "Skipped benchmarks" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "plot_zeroshot.png").is_file() and (
        tmp_path / "out" / "failures.html"
    ).is_file()
    with pytest.raises(MissingData):
        Winoground(str(tmp_path / "nope")).run(ColourScorer())


def test_real_tiny_model_runs_every_fixture_benchmark(tmp_path):
    spec = ModelSpec(name="tiny-vit")
    scorer = ClipScorer(spec.build().eval(), spec.image_transform(), spec.tokenizer(), batch_size=3)
    for c in NAMES:
        solid(tmp_path / "zs" / c / "0.png", c)
    res = ZeroShot(str(tmp_path / "zs")).run(scorer)
    assert res.counts["all"] == len(NAMES)
    assert res.metrics["all/top1"] in {
        100.0 * k / len(NAMES) for k in range(len(NAMES) + 1)
    }  # one vote per image


def test_zeroshot_uses_open_clips_standard_prompts_and_imagenet_names():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    bench = ZeroShot("unused")
    assert len(bench.templates) == 80 and bench.templates[0] == "a bad photo of a {}."
    assert len(ZeroShot("unused", templates="simple").templates) < 80
    wnids = [f"n{i:08d}" for i in range(1000)]
    assert bench.class_names(wnids) == list(IMAGENET_CLASSNAMES)
    assert bench.class_names(["golden_retriever", "tabby"]) == ["golden retriever", "tabby"]
    with pytest.raises(ValueError, match="unknown set 'fancy'"):
        ZeroShot("unused", templates="fancy")

import csv
import json

import pytest
import torch

from datamodules.datamodule import ClipDataModule
from datamodules.dataset import ClipDataset, collate
from datamodules.negatives.base import NegativeGenerator
from datamodules.records import Negative, Record
from datamodules.sources.pairs import PairsSource
from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world import World
from lightning_modules.model_factory import ModelSpec


@pytest.fixture(scope="module")
def spec():
    return ModelSpec(name="tiny-vit")


def test_synthetic_batches_follow_the_contract(spec):
    dm = ClipDataModule(
        SyntheticWorldSource(World(), num_train=64, num_val=16, num_test=16),
        batch_size=16,
        num_workers=0,
        image_transform=spec.image_transform(),
        tokenizer=spec.tokenizer(),
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.images_XCHW.shape == (16, 3, 48, 48)
    assert batch.texts_YL.shape == (16, 32) and batch.texts_YL.dtype == torch.long
    assert batch.num_pos == 16 and batch.img_neg_owner_M.numel() == 0 and batch.txt_neg_owner_N.numel() == 0
    assert len(dm.train_dataloader()) == 4  # drop_last
    val = list(dm.val_dataloader())
    assert sum(b.num_pos for b in val) == 16


class FakeTrainer:
    world_size = 4


def test_per_device_batch_is_global_over_world_size(spec):
    dm = ClipDataModule(
        SyntheticWorldSource(World(), num_train=64, num_val=16, num_test=0),
        batch_size=32,
        num_workers=0,
        image_transform=spec.image_transform(),
        tokenizer=spec.tokenizer(),
    )
    dm.trainer = FakeTrainer()
    assert dm.train_dataloader().batch_size == 8
    dm.batch_size = 30
    with pytest.raises(ValueError, match="data.batch_size=30 is not divisible by the world size 4"):
        dm.train_dataloader()


def test_collate_places_negatives_after_positives():
    def sample(i, n_txt, n_img):
        return {
            "id": str(i),
            "image_key": str(i),
            "image": torch.full((3, 4, 4), float(i)),
            "text": torch.full((5,), i),
            "neg_texts": [(torch.full((5,), 100 + i), "compositional/color")] * n_txt,
            "neg_images": [(torch.full((3, 4, 4), 100.0 + i), "structure/patch_shuffle", 0 if n_txt else -1)]
            * n_img,
        }

    b = collate([sample(0, 2, 0), sample(1, 0, 1), sample(2, 1, 1)])
    assert b.num_pos == 3
    assert b.texts_YL.shape == (6, 5) and b.images_XCHW.shape == (5, 3, 4, 4)
    assert b.txt_neg_owner_N.tolist() == [0, 0, 2] and b.img_neg_owner_M.tolist() == [1, 2]
    assert b.texts_YL[3:, 0].tolist() == [100, 100, 102] and b.images_XCHW[3:, 0, 0, 0].tolist() == [
        101.0,
        102.0,
    ]
    assert b.txt_neg_kind_N == ["compositional/color"] * 3
    # sample 2's image negative pairs with its own first text negative, which is text negative #2 of the batch
    assert b.img_neg_pair_M.tolist() == [-1, 2]


def test_dataset_applies_negative_generators(spec):
    class Upper(NegativeGenerator):
        name = "upper"

        def generate(self, record, image, rng):
            self.stats["calls"] += 1
            return [
                Negative("text", "test/upper", record.caption.upper() + f" {rng.randint(0, 9)}", "upper", "1")
            ]

    recs = SyntheticWorldSource(World(), num_train=4, num_val=0, num_test=0).records("train")
    ds = ClipDataset(recs, spec.image_transform(), spec.tokenizer(), negatives=[Upper()], seed=1)
    s1, s2 = ds[0], ds[0]
    assert len(s1["neg_texts"]) == 1 and torch.equal(s1["neg_texts"][0][0], s2["neg_texts"][0][0])
    assert s1["gen_stats"] == {"upper/calls": 1}


def test_dataset_rejects_records_without_caption(spec):
    with pytest.raises(ValueError, match="lack an image or a caption"):
        ClipDataset([Record("x", "a.png", None)], spec.image_transform(), spec.tokenizer())


def test_pairs_source_jsonl(pairs_manifest, spec):
    src = PairsSource(str(pairs_manifest), val_fraction=0.25)
    train, val = src.records("train"), src.records("val")
    assert len(train) + len(val) == 25 and val and train
    assert not {r.image_key for r in train} & {r.image_key for r in val}  # an image's captions stay together
    assert src.records("test") == []
    dm = ClipDataModule(
        src, batch_size=4, num_workers=0, image_transform=spec.image_transform(), tokenizer=spec.tokenizer()
    )
    dm.setup("fit")
    assert next(iter(dm.train_dataloader())).images_XCHW.shape == (4, 3, 48, 48)


def test_pairs_source_counts_bad_rows(tmp_path, pairs_manifest):
    bad = tmp_path / "bad.jsonl"
    lines = pairs_manifest.read_text().splitlines()[:3]
    lines += [
        "{not json",
        json.dumps({"id": "e", "image": "imgs/1.png", "caption": "   "}),
        json.dumps({"id": "m", "image": "imgs/missing.png", "caption": "gone"}),
        json.dumps({"id": "r0", "image": "imgs/2.png", "caption": "duplicate id"}),
    ]
    bad.write_text("\n".join(lines) + "\n")
    src = PairsSource(str(bad), val_fraction=0.0)
    assert len(src.records("train")) == 3
    assert dict(src.skipped["train"]) == {
        "bad_json_line": 1,
        "empty_caption": 1,
        "image_not_found": 1,
        "duplicate_id": 1,
    }


def test_pairs_source_csv(tmp_path, pairs_manifest):
    rows = [json.loads(x) for x in pairs_manifest.read_text().splitlines()]
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "caption"])
        w.writeheader()
        w.writerows(rows)
    src = PairsSource(str(path), val_path=str(path))
    assert len(src.records("train")) == 25 and len(src.records("val")) == 25


def test_pairs_source_missing_path_fails_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_path: manifest not found: '.*nope.jsonl'"):
        PairsSource(str(tmp_path / "nope.jsonl"))


def test_val_negatives_default_to_training_generators_and_can_differ(spec):
    from datamodules.negatives.text_rules import TextRules

    src = SyntheticWorldSource(World(), num_train=32, num_val=32, num_test=8)
    kw = dict(
        batch_size=16, num_workers=0, image_transform=spec.image_transform(), tokenizer=spec.tokenizer()
    )
    train_gen, diag = TextRules(kinds=["color"]), TextRules(kinds=["position", "swap_objects"])

    def val_kinds(dm):
        dm.setup("fit")
        return {k for b in dm.val_dataloader() for k in b.txt_neg_kind_N}

    same = ClipDataModule(src, negatives={"t": train_gen}, **kw)
    assert val_kinds(same) == {"compositional/color"}
    other = ClipDataModule(src, negatives={"t": train_gen}, val_negatives={"d": diag}, **kw)
    assert val_kinds(other) == {"compositional/position", "compositional/swap_objects"}
    assert (
        diag.vocabulary is not None and diag.leak_filter is not None
    )  # source hints reach val generators too
    assert val_kinds(ClipDataModule(src, negatives={"t": train_gen}, val_negatives={}, **kw)) == set()
    assert all(k == "compositional/color" for b in other.train_dataloader() for k in b.txt_neg_kind_N)


def test_batch_to_moves_tensors_and_shares_the_rest():
    import torch

    from datamodules.dataset import Batch

    b = Batch(
        images_XCHW=torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
        texts_YL=torch.ones(3, 5, dtype=torch.long),
        img_neg_owner_M=torch.zeros(0, dtype=torch.long),
        img_neg_pair_M=torch.zeros(0, dtype=torch.long),
        txt_neg_owner_N=torch.tensor([0]),
        txt_neg_kind_N=["k"],
        ids_B=["a", "b"],
        image_keys_B=["a", "b"],
    )
    moved = b.to("meta")
    assert moved.images_XCHW.device.type == "meta" and moved.texts_YL.device.type == "meta"
    assert moved.ids_B is b.ids_B and moved.txt_neg_kind_N is b.txt_neg_kind_N and moved.num_pos == 2
    assert b.images_XCHW.device.type == "cpu"  # the original is untouched

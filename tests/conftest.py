"""Shared fixtures: configs composed with compose(), tiny data, offline environment."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small sizes that keep a whole train -> test -> evaluate run in seconds.
TINY = [
    "data.source.num_train=256",
    "data.source.num_val=64",
    "data.source.num_test=64",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "benchmark.synthetic.num_items=24",
    "benchmark.synthetic.num_winoground=12",
    "trainer.enable_progress_bar=false",
]


def make_cfg(tmp_path: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path / "logs")
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    def factory(*overrides: str, config_name: str = "train", tiny: bool = True) -> DictConfig:
        ov = (TINY if tiny and config_name == "train" else []) + list(overrides)
        return make_cfg(tmp_path, ov, config_name)

    return factory


@pytest.fixture
def pairs_manifest(tmp_path) -> Path:
    """A small JSONL manifest of generated images, two captions for one of the images."""
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rows = []
    colors = ["red", "green", "blue", "yellow", "white", "purple", "orange", "cyan"]
    for i, c in enumerate(colors * 3):
        Image.new("RGB", (40, 30), c).save(img_dir / f"{i}.png")
        rows.append({"id": f"r{i}", "image": f"imgs/{i}.png", "caption": f"a plain {c} picture number {i}"})
    rows.append({"id": "extra", "image": "imgs/0.png", "caption": "another caption of the first picture"})
    path = tmp_path / "pairs.jsonl"
    import json

    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def cuda_available() -> bool:
    return torch.cuda.is_available()

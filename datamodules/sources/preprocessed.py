"""The clean manifests written by preprocessing, as a training source (`data=preprocessed`).

`prepare()` (called by the DataModule's `prepare_data`) builds or refreshes the manifests
(`datamodules.preprocess.run.ensure_clean`); this source then reads
`<clean_dir>/<split>.jsonl` for the preprocessed splits and takes the remaining splits (e.g. the synthetic world's
clean test split) from the raw source itself. Vocabulary and held-out-leak hints of the raw source are passed on.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache, cached_property

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.records import Record
from datamodules.sources.base import SPLITS, Source
from datamodules.sources.pairs import PairsSource


class PreprocessedSource(Source):
    """The raw source is built from `preprocess.raw` on first use (for the splits preprocessing leaves alone and
    for its vocabulary / held-out hints).

    Args:
    preprocess: the preprocessing config (`${preprocess}`; not instantiated by Hydra — `_recursive_: false`).
    val_fraction: when `val` is not a preprocessed split, the share of clean train images held out as val.
    """

    def __init__(self, preprocess: DictConfig | dict, val_fraction: float = 0.05) -> None:
        if not isinstance(preprocess, DictConfig):
            preprocess = OmegaConf.create(preprocess)
        if preprocess.get("raw") is None:
            raise ValueError(
                "data.source.preprocess.raw: data=preprocessed needs a raw source (e.g. raw=noisy_synthetic)"
            )
        from datamodules.preprocess.run import clean_dir

        self.cfg = preprocess
        self.dir = clean_dir(preprocess)
        self.splits = list(preprocess.splits)
        self.val_fraction = val_fraction

    reads_preprocessed = True

    def prepare(self) -> None:
        from datamodules.preprocess.run import ensure_clean

        ensure_clean(self.cfg)

    @cached_property
    def raw(self) -> Source:
        return instantiate(self.cfg.raw)

    @cached_property
    def pairs(self) -> PairsSource:
        if not (self.dir / "DONE").is_file():
            raise FileNotFoundError(
                f"data.source: clean manifest not found or incomplete at '{self.dir}' — train.py builds it (prepare); "
                "or run `python -m datamodules.preprocess` with the same raw/gate/stages overrides"
            )
        path = {s: str(self.dir / f"{s}.jsonl") if s in self.splits else None for s in SPLITS}
        return PairsSource(
            train_path=path["train"],
            val_path=path["val"],
            test_path=path["test"],
            val_fraction=self.val_fraction if path["val"] is None else 0.0,
            check_images=True,
            meta_keys=("scene",),
        )

    def records(self, split: str) -> list[Record]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
        if split in self.splits or (split == "val" and "train" in self.splits):
            return self._with_scenes(split)
        return self.raw.records(split)

    @cache  # noqa: B019 - one source object per run; records are immutable once made
    def _with_scenes(self, split: str) -> list[Record]:
        """The manifest's records; a row that carries the scene graph of its (rendered) image gets a `SceneFile`
        image, so the renderer editor can make image negatives I'_C of preprocessed synthetic data."""
        from datamodules.sources.synthetic import SceneFile
        from datamodules.world.scene import Scene

        out = []
        for r in self.pairs.records(split):
            scene = r.meta.get("scene")
            if scene is not None and isinstance(r.image, str):
                where = f"{self.pairs.paths[split] or self.pairs.paths['train']}: record {r.id!r}: scene"
                meta = {k: v for k, v in r.meta.items() if k != "scene"}
                r = replace(r, image=SceneFile(r.image, Scene.from_json(scene, where)), meta=meta)
            out.append(r)
        return out

    @property
    def world(self):
        """The raw source's synthetic world (None for real data): benchmarks of the run use it."""
        return getattr(self.raw, "world", None)

    @property
    def image_size(self):
        return getattr(self.raw, "image_size", None)

    @property
    def vocabulary(self):
        return getattr(self.raw, "vocabulary", None)

    def leaks(self, text: str) -> bool:
        fn = getattr(self.raw, "leaks", None)
        return bool(fn(text)) if fn is not None else False

    def describe(self) -> dict:
        return {"type": "preprocessed", "dir": str(self.dir), "raw": self.raw.describe()}

"""CREPE (Ma et al., 2023): image-to-text retrieval of the true caption among hard negatives, for systematicity
(seen vs unseen compounds; atom or compound negatives) and productivity (atom / negate / swap negatives at caption
complexity 4–12). The Visual Genome image is cropped to the region (x, y, width, height). Reports R@1 (and R@3)
per split; the chance R@1 is the mean of 1 / (1 + number of negatives).

Layout (the released CSVs): `<root>/syst_hard_negatives/syst_vg_hard_negs_{seen,unseen}_compounds_in_<train>.csv`
(columns image_id, x, y, width, height, caption, valid_hard_negs_atom, valid_hard_negs_comp) and
`<root>/prod_hard_negatives/{atom,negate,swap}/prod_vg_hard_negs_<type>_complexity_<n>.csv` (hard_negs); the
negatives are Python list literals. Images `<image_dir>/<image_id>.jpg` (VG_100K and VG_100K_2 merged or listed).
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path
from typing import Any

from PIL import Image

from datamodules.benchmarks.base import (
    Benchmark,
    BenchmarkResult,
    MissingData,
    option_scores,
    require,
    thumbnail,
)
from lightning_modules.inference import ClipScorer

HOW = "CSVs from github.com/RAIVNLab/CREPE (data/), Visual Genome images (VG_100K, VG_100K_2)"


class Crepe(Benchmark):
    """Args: root: CREPE data folder; image_dirs: Visual Genome image folders; train_dataset: the systematicity
    split's pretraining set (cc12m | laion | yfcc); prod_types / complexities: productivity splits to run;
    max_items: per split cap."""

    name = "crepe"

    def __init__(
        self,
        root: str,
        image_dirs: list[str],
        *,
        train_dataset: str = "laion",
        syst_types: list[str] = ("atom", "comp"),
        prod_types: list[str] = ("atom", "negate", "swap"),
        complexities: list[int] = tuple(range(4, 13)),
        max_items: int | None = None,
        max_failures: int = 30,
    ) -> None:
        self.root, self.image_dirs, self.train_dataset = root, list(image_dirs), train_dataset
        self.syst_types, self.prod_types, self.complexities = (
            list(syst_types),
            list(prod_types),
            list(complexities),
        )
        self.max_items, self.max_failures = max_items, max_failures

    def splits(self, root: Path) -> list[tuple[str, Path, str]]:
        out = []
        for comp in ("seen", "unseen"):
            path = (
                root
                / "syst_hard_negatives"
                / f"syst_vg_hard_negs_{comp}_compounds_in_{self.train_dataset}.csv"
            )
            out += [(f"syst_{comp}_{t}", path, f"valid_hard_negs_{t}") for t in self.syst_types]
        for t in self.prod_types:
            for n in self.complexities:
                out.append(
                    (
                        f"prod_{t}_c{n}",
                        root / "prod_hard_negatives" / t / f"prod_vg_hard_negs_{t}_complexity_{n}.csv",
                        "hard_negs",
                    )
                )
        return out

    def _image(self, image_id: str) -> Path:
        for d in self.image_dirs:
            p = Path(d) / f"{image_id}.jpg"
            if p.is_file():
                return p
        raise MissingData(
            self.name, Path(self.image_dirs[0]) / f"{image_id}.jpg", "<image_dir>/<image_id>.jpg", HOW
        )

    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        root = require(self.name, self.root, "syst_hard_negatives/ and prod_hard_negatives/ CSV folders", HOW)
        metrics, chance, counts, failures = {}, {}, {}, []
        found = 0
        for split, path, key in self.splits(root):
            if not path.is_file():
                continue
            found += 1
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))[: self.max_items]
            refs = [
                (
                    str(self._image(r["image_id"])),
                    float(r["x"]),
                    float(r["y"]),
                    float(r["width"]),
                    float(r["height"]),
                )
                for r in rows
            ]
            options = [[r["caption"], *ast.literal_eval(r[key])] for r in rows]

            def load(ref):
                p, x, y, w, h = ref
                with Image.open(p) as im:
                    return im.convert("RGB").crop((x, y, x + w, y + h))

            scores = option_scores(scorer, refs, load, options)
            ranks = [int((s[1:] > s[0]).sum()) for s in scores]  # rank of the true caption (0 = first)
            for k in (1, 3):
                metrics[f"{split}/r{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
                chance[f"{split}/r{k}"] = 100.0 * sum(min(k, len(o)) / len(o) for o in options) / len(options)
            counts[split] = len(rows)
            for ref, o, s, r in zip(refs, options, scores, ranks):
                if r > 0 and len(failures) < self.max_failures:
                    j = int(s[1:].argmax()) + 1
                    failures.append(
                        {
                            "subset": split,
                            "positive": o[0],
                            "negative": o[j],
                            "score_pos": float(s[0]),
                            "score_neg": float(s[j]),
                            "image": thumbnail(load(ref)),
                        }
                    )
        if not found:
            raise MissingData(self.name, root / "syst_hard_negatives", "the released CSV folders", HOW)
        return BenchmarkResult(metrics, chance, counts, failures)

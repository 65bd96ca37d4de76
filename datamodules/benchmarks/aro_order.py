"""ARO COCO-Order / Flickr30k-Order: each test caption against 4 order perturbations of itself (shuffle nouns and
adjectives, shuffle all but nouns and adjectives, shuffle within trigrams, shuffle trigrams); Precision@1 of 5
(chance 20%), captions cleaned and cut to 30 words as in the official code, fixed seed. Ties go to the original
caption (argmax picks the first), as in the official code.

Layout: `<root>/<annotation>` — the Karpathy test split as a JSON list of {"image": "<relative path>",
"caption": [captions]} (coco_karpathy_test.json / flickr30k_test.json) — images under `<image_root>`.
Part-of-speech tags come from spaCy's en_core_web_sm when it is installed (the official protocol); otherwise a
word-list tagger is used and the result is flagged (`pos_tagger`) — install spaCy + the model for official numbers.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.benchmarks.base import Benchmark, BenchmarkResult, option_scores, require, thumbnail
from datamodules.lexicon import COLORS, NOUNS_PLUR, NOUNS_SING, SIZES
from datamodules.records import load_image
from lightning_modules.inference import ClipScorer

log = logging.getLogger(__name__)
HOW = (
    "coco_karpathy_test.json / flickr30k_test.json (the BLIP Karpathy-split files used by "
    "github.com/mertyg/vision-language-models-are-bows) and the COCO 2014 / Flickr30k images"
)
_ADJ_SUFFIXES = ("ful", "ous", "ive", "able", "ible", "ish", "less", "ic", "y")
_FUNCTION = set(
    "a an the of on in at to with and or is are was be by for from near next up down over under "
    "it its his her their this that these those there some two three four five".split()
)


def pre_caption(caption: str, max_words: int = 30) -> str:
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


class Tagger:
    """Noun/adjective tags: spaCy en_core_web_sm if available, else word lists + suffix rules."""

    def __init__(self) -> None:
        try:
            import spacy

            self.nlp = spacy.load("en_core_web_sm")
            self.name = "spacy"
        except (ImportError, OSError):
            self.nlp = None
            self.name = "wordlist"
            log.warning(
                "aro order: spaCy en_core_web_sm not installed; using a word-list POS tagger (not official)"
            )

    def tag(self, text: str) -> tuple[list[str], list[str]]:
        """(tokens, coarse tags in {N, J, O})."""
        if self.nlp is not None:
            doc = self.nlp(text)
            tags = [
                "N"
                if t.tag_ in ("NN", "NNS", "NNP", "NNPS")
                else "J"
                if t.tag_ in ("JJ", "JJR", "JJS")
                else "O"
                for t in doc
            ]
            return [t.text for t in doc], tags
        tokens = re.findall(r"\w+|[^\w\s]", text)
        tags = []
        for w in tokens:
            lw = w.lower()
            if lw in NOUNS_SING or lw in NOUNS_PLUR:
                tags.append("N")
            elif (
                lw in COLORS
                or lw in SIZES
                or (lw not in _FUNCTION and lw.endswith(_ADJ_SUFFIXES) and len(lw) > 4)
            ):
                tags.append("J")
            else:
                tags.append("O")
        return tokens, tags


def _trigrams(tokens: list[str]) -> list[list[str]]:
    return [tokens[i : i + 3] for i in range(0, len(tokens), 3)]


def perturbations(
    caption: str, tagger: Tagger, rng: random.Random, nprng: np.random.RandomState
) -> list[str]:
    tokens, tags = tagger.tag(caption)
    text = np.array(tokens, dtype=object)
    nouns = [i for i, t in enumerate(tags) if t == "N"]
    adjs = [i for i, t in enumerate(tags) if t == "J"]
    a = text.copy()
    a[nouns] = nprng.permutation(a[nouns])
    a[adjs] = nprng.permutation(a[adjs])
    b = text.copy()
    other = np.array([t == "O" for t in tags], dtype=bool)
    b[other] = nprng.permutation(b[other])
    words = re.findall(r"\w+|[^\w\s]", caption)  # stands in for nltk.word_tokenize
    within = _trigrams(words)
    for tri in within:
        rng.shuffle(tri)
    across = _trigrams(words)
    rng.shuffle(across)
    return [
        " ".join(a),
        " ".join(b),
        " ".join(w for t in within for w in t),
        " ".join(w for t in across for w in t),
    ]


class AroOrder(Benchmark):
    """Args: annotation: the Karpathy test JSON; image_root: folder image paths are relative to; name:
    aro_coco_order | aro_flickr_order; seed: perturbation seed; max_images: cap (None = all)."""

    def __init__(
        self,
        annotation: str,
        image_root: str,
        *,
        name: str = "aro_coco_order",
        seed: int = 1,
        max_words: int = 30,
        max_images: int | None = None,
        max_failures: int = 30,
    ) -> None:
        self.annotation, self.image_root, self.name = annotation, image_root, name
        self.seed, self.max_words, self.max_images, self.max_failures = (
            seed,
            max_words,
            max_images,
            max_failures,
        )

    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        layout = "a JSON list of {image, caption: [..]} and <image_root>/<image>"
        ann = json.loads(require(self.name, self.annotation, layout, HOW).read_text())[: self.max_images]
        root = require(self.name, self.image_root, layout, HOW)
        tagger = Tagger()
        rng, nprng = random.Random(self.seed), np.random.RandomState(self.seed)
        refs, options = [], []
        for a in ann:
            for cap in a["caption"]:
                refs.append(str(Path(root) / a["image"]))
                options.append(
                    [pre_caption(c, self.max_words) for c in [cap, *perturbations(cap, tagger, rng, nprng)]]
                )
        scores = option_scores(scorer, refs, load_image, options)
        correct = [bool(s[0] >= s[1:].max()) for s in scores]
        failures = [
            {
                "subset": "order",
                "positive": o[0],
                "negative": o[int(s[1:].argmax()) + 1],
                "score_pos": float(s[0]),
                "score_neg": float(s[1:].max()),
                "image": thumbnail(load_image(r)),
            }
            for r, o, s, ok in zip(refs, options, scores, correct)
            if not ok
        ][: self.max_failures]
        metrics = {"all/precision_at_1": 100.0 * sum(correct) / max(len(correct), 1)}
        return BenchmarkResult(
            metrics,
            {"all/precision_at_1": 20.0},
            {"all": len(correct)},
            failures,
            notes={"pos_tagger": tagger.name},
        )

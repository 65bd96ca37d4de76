"""T'_C by rules: compositional text negatives for real English captions (COCO style) and the synthetic grammar.

Kinds (the source paper's five, plus NegCLIP-style swaps and SugarCrepe-style replacements):
  color, quantity, position, verb, negation, swap_attributes, swap_objects, size, object.
Word lists + a small noun-phrase chunker (determiner … head noun from a noun list); no downloads. A kind that does
not apply to a caption yields nothing (the slot is masked) — a rule never returns the positive.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from PIL import Image

from datamodules.lexicon import (
    COLORS,
    DETERMINERS,
    NOUN_GROUPS,
    NOUNS_PLUR,
    NOUNS_SING,
    NUMBERS,
    POSITION_PAIRS,
    SINGULAR_OF,
    SIZES,
    VERB_GROUPS,
    pluralize,
)
from datamodules.negatives.base import NegativeGenerator
from datamodules.records import Negative, Record


def _words(text: str) -> list[str]:
    return text.split()


def _bare(w: str) -> str:
    return re.sub(r"[^\w-]", "", w.lower())


def _swap_word(word: str, new: str) -> str:
    """Replaces the word keeping its capitalisation and trailing punctuation."""
    m = re.match(r"^(\W*)([\w-]+)(\W*)$", word)
    if not m:
        return new
    pre, core, post = m.groups()
    if core[:1].isupper():
        new = new[:1].upper() + new[1:]
    return pre + new + post


def _article_fix(words: list[str]) -> list[str]:
    """a/an agreement after a replacement."""
    out = list(words)
    for i in range(len(out) - 1):
        b = _bare(out[i])
        if b in ("a", "an"):
            want = "an" if _bare(out[i + 1])[:1] in "aeiou" else "a"
            if want != b:
                out[i] = _swap_word(out[i], want)
    return out


def noun_phrases(words: list[str]) -> list[tuple[int, int]]:
    """Spans [start, end) determiner … head noun, the head from the noun lists (at most 4 words after it)."""
    spans = []
    i = 0
    while i < len(words):
        if _bare(words[i]) in DETERMINERS:
            for j in range(i + 1, min(i + 6, len(words))):
                b = _bare(words[j])
                if b in NOUNS_SING or b in NOUNS_PLUR:
                    spans.append((i, j + 1))
                    i = j
                    break
                if b in DETERMINERS:
                    break
        i += 1
    return spans


# -- one function per kind: caption -> candidate negatives -----------------------------------------------------------
def _replace_from(words: list[str], vocab: Callable[[str], list[str]]) -> list[str]:
    out = []
    for i, w in enumerate(words):
        for new in vocab(_bare(w)):
            cand = list(words)
            cand[i] = _swap_word(w, new)
            out.append(" ".join(_article_fix(cand)))
    return out


def color(words: list[str], vocab: dict | None = None) -> list[str]:
    palette = (vocab or {}).get("colors") or [c for c in COLORS if c != "grey"]
    return _replace_from(words, lambda b: [c for c in palette if c != b] if b in COLORS else [])


def size(words: list[str], vocab: dict | None = None) -> list[str]:
    sizes = (vocab or {}).get("sizes")
    if sizes:
        return _replace_from(words, lambda b: [s for s in sizes if s != b] if b in sizes else [])
    return _replace_from(words, lambda b: [SIZES[b]] if b in SIZES else [])


def obj(words: list[str], vocabulary: dict | None = None) -> list[str]:
    closed = (vocabulary or {}).get("objects")

    def replacements(b: str) -> list[str]:
        sing = SINGULAR_OF.get(b, b)
        group = (
            closed
            if closed and sing in closed
            else next((g for g in NOUN_GROUPS.values() if sing in g), None)
        )
        if group is None:
            return []
        others = [n for n in group if n != sing]
        return others if b in NOUNS_SING else [pluralize(n) for n in others]

    return _replace_from(words, replacements)


def quantity(words: list[str], vocab: dict | None = None) -> list[str]:
    out = []
    for i, w in enumerate(words):
        b = _bare(w)
        if b in NUMBERS and b != "one":
            out += [" ".join(words[:i] + [_swap_word(w, n)] + words[i + 1 :]) for n in NUMBERS[1:] if n != b]
        elif b in ("a", "an", "one"):
            # "a red circle" -> "two red circles": pluralise the head noun of the phrase.
            for j in range(i + 1, min(i + 5, len(words))):
                h = _bare(words[j])
                if h in NOUNS_SING:
                    for n in ("two", "three"):
                        cand = list(words)
                        cand[i] = _swap_word(w, n)
                        cand[j] = _swap_word(words[j], pluralize(h))
                        out.append(" ".join(cand))
                    break
                if h in DETERMINERS:
                    break
    return out


def position(words: list[str], vocab: dict | None = None) -> list[str]:
    text = " ".join(words)
    low = text.lower()
    out = []
    for a, b in POSITION_PAIRS:
        for src, dst in ((a, b), (b, a)):
            for m in re.finditer(rf"\b{re.escape(src)}\b", low):
                out.append(text[: m.start()] + dst + text[m.end() :])
        if out:  # POSITION_PAIRS lists longer phrases first: "to the left of" wins over its word "left"
            return out
    return out


def verb(words: list[str], vocab: dict | None = None) -> list[str]:
    def replacements(b: str) -> list[str]:
        return next(([v for v in g if v != b] for g in VERB_GROUPS if b in g), [])

    return _replace_from(words, replacements)


def negation(words: list[str], vocab: dict | None = None) -> list[str]:
    """Affirmative <-> negative: drop an existing negation, else negate the first noun phrase / copula / 'with'."""
    low = [_bare(w) for w in words]
    if "no" in low:
        i = low.index("no")
        nxt = low[i + 1] if i + 1 < len(low) else ""
        head_plural = any(_bare(w) in NOUNS_PLUR for w in words[i + 1 : i + 5])
        art = "some" if head_plural else ("an" if nxt[:1] in "aeiou" else "a")
        return [" ".join(words[:i] + [_swap_word(words[i], art)] + words[i + 1 :])]
    if "not" in low:
        i = low.index("not")
        return [" ".join(words[:i] + words[i + 1 :])]
    if "without" in low:
        i = low.index("without")
        return [" ".join(words[:i] + [_swap_word(words[i], "with")] + words[i + 1 :])]
    for cop in ("is", "are"):
        if cop in low:
            i = low.index(cop)
            return [" ".join(words[: i + 1] + ["not"] + words[i + 1 :])]
    if "with" in low:
        i = low.index("with")
        return [" ".join(words[:i] + [_swap_word(words[i], "without")] + words[i + 1 :])]
    spans = noun_phrases(words)
    if spans and low[spans[0][0]] in ("a", "an", "the", "one", "some"):
        i = spans[0][0]
        return [" ".join(words[:i] + [_swap_word(words[i], "no")] + words[i + 1 :])]
    return []


def _phrase(words: list[str], span: tuple[int, int]) -> list[str]:
    """The bare words of a noun phrase span (case and punctuation dropped), for comparing phrases."""
    return [_bare(w) for w in words[span[0] : span[1]]]


LIST_CONNECTORS = frozenset({"and", "or", ""})  # "" = a bare comma


def _list_items(spans: list[tuple[int, int]], words: list[str], x: int, y: int) -> bool:
    """True when noun phrases x < y are items of one list: between them stand only other noun phrases and list
    connectors ("and", "or", commas). Swapping two items of a list keeps its meaning (a false negative)."""
    inside = {i for s, e in spans[x + 1 : y] for i in range(s, e)}
    between = [words[i] for i in range(spans[x][1], spans[y][0]) if i not in inside]
    return all(_bare(w) in LIST_CONNECTORS for w in between)


def swap_attributes(words: list[str], vocab: dict | None = None) -> list[str]:
    """Exchange two colour (or two size) words that modify different noun phrases."""
    spans = noun_phrases(words)
    out = []
    for vocab in (set(COLORS), set(SIZES)):
        hits = [(k, i) for k, (s, e) in enumerate(spans) for i in range(s, e) if _bare(words[i]) in vocab]
        for x in range(len(hits)):
            for y in range(x + 1, len(hits)):
                (ka, ia), (kb, ib) = hits[x], hits[y]
                if ka != kb and _bare(words[ia]) != _bare(words[ib]):
                    cand = list(words)
                    cand[ia], cand[ib] = (
                        _swap_word(words[ia], _bare(words[ib])),
                        _swap_word(words[ib], _bare(words[ia])),
                    )
                    cand = _article_fix(cand)
                    if _list_items(spans, words, min(ka, kb), max(ka, kb)) and _phrase(
                        cand, spans[ka]
                    ) == _phrase(words, spans[kb]):
                        continue  # "a large green star, a small green star": the swap only reorders the list
                    out.append(" ".join(cand))
    return out


def _strip_tail(span: list[str]) -> tuple[list[str], str]:
    """Separates trailing punctuation of a phrase (it stays where it was when phrases swap)."""
    m = re.match(r"^(.*?)(\W*)$", span[-1])
    return [*span[:-1], m.group(1)], m.group(2)


def swap_objects(words: list[str], vocab: dict | None = None) -> list[str]:
    """Exchange two noun phrases (with their attributes): 'a red cube left of a blue ball' -> 'a blue ball left of
    a red cube'."""
    spans = noun_phrases(words)
    out = []
    for x in range(len(spans)):
        for y in range(x + 1, len(spans)):
            (s1, e1), (s2, e2) = spans[x], spans[y]
            if _phrase(words, spans[x]) == _phrase(words, spans[y]):
                continue
            if _list_items(spans, words, x, y):
                continue  # "a cat, a cow and a dog" -> "a dog, a cow and a cat" says the same thing: not a negative
            a, b = words[s1:e1], words[s2:e2]
            (a, pa), (b, pb) = _strip_tail(a), _strip_tail(b)
            a = [a[0].lower(), *a[1:-1], a[-1] + pb] if len(a) > 1 else [a[0].lower() + pb]
            b = [b[0].lower(), *b[1:-1], b[-1] + pa] if len(b) > 1 else [b[0].lower() + pa]
            cand = words[:s1] + b + words[e1:s2] + a + words[e2:]
            if words[0][:1].isupper():
                cand[0] = cand[0][:1].upper() + cand[0][1:]
            out.append(" ".join(cand))
    return out


KINDS: dict[str, Callable[..., list[str]]] = {
    "color": color,
    "quantity": quantity,
    "position": position,
    "verb": verb,
    "negation": negation,
    "swap_attributes": swap_attributes,
    "swap_objects": swap_objects,
    "size": size,
    "object": obj,
}


def rule_negatives(caption: str, kind: str, vocabulary: dict[str, list[str]] | None = None) -> list[str]:
    """All candidate negatives of one kind, each different from the caption (case/space-insensitively)."""
    if kind not in KINDS:
        raise ValueError(f"unknown text rule kind {kind!r}; valid: {sorted(KINDS)}")
    words = _words(caption)
    norm = " ".join(w.lower() for w in words)
    seen, out = set(), []
    for cand in KINDS[kind](words, vocabulary):
        key = " ".join(cand.lower().split())
        if key != norm and key not in seen:
            seen.add(key)
            out.append(cand)
    return out


class TextRules(NegativeGenerator):
    """Args:
    kinds: which rules may fire (default: all); each negative is labelled `compositional/<kind>`.
    num_per_caption: negatives per caption, each from a different kind (picked at random among those that apply).
    priority: kinds tried first (in random order among themselves) before the others, e.g. [position,
        swap_objects] so that every relation caption gets a relational negative instead of one in three.
    """

    name = "text_rules"
    version = "2"  # 2: list-item swaps (same meaning) are no longer emitted

    def __init__(
        self, kinds: list[str] | None = None, num_per_caption: int = 1, priority: list[str] | None = None
    ) -> None:
        super().__init__()
        self.kinds = list(kinds) if kinds else list(KINDS)
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"text_rules.kinds: unknown {sorted(unknown)}; valid: {sorted(KINDS)}")
        self.priority = list(priority or [])
        if set(self.priority) - set(self.kinds):
            raise ValueError(
                f"text_rules.priority: {sorted(set(self.priority) - set(self.kinds))} not in kinds {self.kinds}"
            )
        if num_per_caption < 1:
            raise ValueError(f"text_rules.num_per_caption must be >= 1, got {num_per_caption}")
        self.num_per_caption = num_per_caption

    def generate(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]:
        kinds = list(self.kinds)
        rng.shuffle(kinds)
        if self.priority:  # stable sort: priority kinds first, each group keeps its shuffled order
            kinds.sort(key=lambda k: k not in self.priority)
        out: list[Negative] = []
        for kind in kinds:
            if len(out) == self.num_per_caption:
                break
            cands = [c for c in rule_negatives(record.caption, kind, self.vocabulary) if not self.leaks(c)]
            if cands:
                out.append(self.text(f"compositional/{kind}", rng.choice(cands)))
        if len(out) < self.num_per_caption:
            self.stats["masked"] += self.num_per_caption - len(out)
        return out

"""The English word lists shared by a training generator (`negatives.text_rules`) and an evaluation protocol (the
ARO order benchmark's fallback part-of-speech tagger). Both import them from here, so a list edited for one is
visibly edited for the other: change a list only with both in mind (a benchmark's protocol must not drift with a
negative's vocabulary).
"""

from __future__ import annotations

COLORS = (
    "red orange yellow green blue purple pink brown black white gray grey silver gold cyan beige violet maroon "
    "navy teal tan"
).split()
SIZES = {
    "small": "large",
    "large": "small",
    "big": "small",
    "little": "big",
    "tiny": "huge",
    "huge": "tiny",
    "tall": "short",
    "short": "tall",
    "long": "short",
    "wide": "narrow",
    "narrow": "wide",
}
NUMBERS = "one two three four five six seven eight nine ten".split()
POSITION_PAIRS = [
    ("to the left of", "to the right of"),
    ("on the left", "on the right"),
    ("in front of", "behind"),
    ("on top of", "underneath"),
    ("above", "below"),
    ("inside", "outside"),
    ("over", "under"),
    ("near", "far from"),
    ("left", "right"),
    ("top", "bottom"),
]
# Verbs are replaced within their group so the sentence keeps its argument structure.
VERB_GROUPS = [
    "riding holding throwing catching eating drinking carrying pulling pushing watching driving reading cutting "
    "cooking".split(),
    "sitting standing lying walking running jumping sleeping swimming flying skiing surfing skating climbing "
    "talking playing".split(),
]
# Objects are replaced within their category (a person by a person, a shape by a shape).
NOUN_GROUPS = {
    "people": "man woman boy girl baby".split(),
    "animals": "dog cat horse cow sheep bird elephant bear zebra giraffe".split(),
    "vehicles": "car bus truck train bicycle motorcycle airplane boat".split(),
    "furniture": "table chair couch bed bench desk".split(),
    "food": "pizza sandwich cake banana apple broccoli carrot donut".split(),
    "things": "tv laptop phone book clock vase bowl cup plate bottle glass knife fork spoon umbrella bag suitcase "
    "kite frisbee skateboard surfboard ball racket bat hat shirt computer keyboard mouse flower plant pot box".split(),
    "places": "street road field beach water grass tree building house room kitchen bathroom window door wall sign "
    "light toilet sink refrigerator oven microwave fence sky snow wave ocean".split(),
    "shapes": "circle square triangle star cross diamond cube sphere cylinder block".split(),
}
# Nouns recognised as phrase heads but never used as replacements (hypernyms and synonyms of group members:
# "a man" -> "a person" would be a true caption, not a negative).
_EXTRA_NOUNS = "person player guy lady kid child bike plane sofa".split()
_NOUNS_SING = [n for group in NOUN_GROUPS.values() for n in group] + _EXTRA_NOUNS
_IRREGULAR = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "person": "people",
    "mouse": "mice",
    "knife": "knives",
    "sheep": "sheep",
    "baby": "babies",
    "lady": "ladies",
    "sky": "skies",
}


def pluralize(noun: str) -> str:
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    if noun.endswith(("s", "x", "sh", "ch")):
        return noun + "es"
    return noun + "s"


NOUNS_SING = set(_NOUNS_SING)
NOUNS_PLUR = {pluralize(n) for n in _NOUNS_SING}
SINGULAR_OF = {pluralize(n): n for n in _NOUNS_SING}
DETERMINERS = {
    "a",
    "an",
    "the",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "some",
    "his",
    "her",
    "their",
    "its",
    "this",
    "that",
    "these",
    "those",
    "several",
    "many",
}

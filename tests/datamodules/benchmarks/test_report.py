"""Report layout: plot panels (held-out beside its base, aggregates and Winoground apart) and the failures page
(per-subset totals, cases sorted by margin, held-out flagged, Winoground as 2x2 cards)."""

from __future__ import annotations

import re

from PIL import Image

from datamodules.benchmarks.report import bar_plots, failures_html, plot_panels

KEYS = [
    "synthetic/replace_color/acc",
    "synthetic/swap_objects/acc",
    "synthetic/replace_color-heldout/acc",
    "synthetic/swap_objects-heldout/acc",
    "synthetic/mean/acc",
    "synthetic/heldout_mean/acc",
    "synthetic/winoground/text",
    "synthetic/winoground/group",
]


def test_plot_panels_put_heldout_beside_base_and_split_aggregates_and_winoground():
    panels = dict(plot_panels(KEYS))
    assert panels["categories"] == [
        "synthetic/replace_color/acc",
        "synthetic/replace_color-heldout/acc",
        "synthetic/swap_objects/acc",
        "synthetic/swap_objects-heldout/acc",
    ]
    assert panels["aggregates"] == ["synthetic/mean/acc", "synthetic/heldout_mean/acc"]
    assert panels["Winoground (text / image / group)"] == [
        "synthetic/winoground/text",
        "synthetic/winoground/group",
    ]
    # SugarCrepe's add/replace/swap micro means are aggregates of their subsets
    sugar = dict(plot_panels(["sugarcrepe/add_att/acc", "sugarcrepe/add_obj/acc", "sugarcrepe/add/acc"]))
    assert sugar["aggregates"] == ["sugarcrepe/add/acc"]


def test_bar_plots_write_one_png_per_benchmark_with_model_labels(tmp_path):
    res = {k: 50.0 for k in KEYS}
    paths = bar_plots(tmp_path, {"clip_baseline-seed0": res, "hardneg-seed0": res}, {k: 50.0 for k in KEYS})
    assert [p.name for p in paths] == ["plot_synthetic.png"] and Image.open(paths[0]).size[1] > 400


def test_failures_page_totals_margin_order_heldout_flag_and_winoground_cards(tmp_path):
    img = Image.new("RGB", (32, 32), "red")
    cases = [
        {
            "subset": "swap_objects",
            "heldout": False,
            "positive": "p1",
            "negative": "n1",
            "score_pos": 0.2,
            "score_neg": 0.25,
            "margin": 0.05,
            "image": img,
        },
        {
            "subset": "swap_objects",
            "heldout": True,
            "positive": "p2",
            "negative": "n2",
            "score_pos": 0.1,
            "score_neg": 0.4,
            "margin": 0.3,
            "image": img,
        },
        {
            "subset": "winoground-swap_objects",
            "captions": ["a red x", "a blue x"],
            "images": [img, img],
            "scores": [[0.1, 0.3], [0.2, 0.0]],
            "margin": 0.2,
            "image": img,
        },
    ]
    results = {"synthetic/swap_objects/acc": 75.0, "synthetic/swap_objects-heldout/acc": 50.0}
    counts = {"synthetic/swap_objects": 8, "synthetic/swap_objects-heldout": 4}
    page = failures_html(tmp_path, {"synthetic": cases}, results, counts).read_text()
    assert re.search(r"swap_objects</td><td>8</td><td>75.0%</td><td>2</td><td>2</td>", page)
    assert (
        "swap_objects-heldout <span class='held'>held-out</span></td><td>4</td><td>50.0%</td><td>2</td><td>1</td>"
        in page
    )
    assert page.index("p2") < page.index("p1")  # most confidently wrong first
    assert page.count("class='held'>held-out") == 2  # the held-out total row + the held-out case
    card = page[page.index("class='card'") :]
    assert card.count("<img") == 2 and "a blue x" in card and "caption 1: 0.0000" in card

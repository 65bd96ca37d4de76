"""Architecture rules that keep the library importable without the entry scripts, and the negatives selection
explicit."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = {"train", "evaluate"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):  # function-level imports too
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", ["datamodules", "lightning_modules"])
def test_library_packages_never_import_the_entry_scripts(package):
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imported_modules(p) & ENTRY_SCRIPTS)
        for p in sorted((ROOT / package).rglob("*.py"))
        if _imported_modules(p) & ENTRY_SCRIPTS
    }
    assert offenders == {}


def test_the_rule_detects_an_entry_script_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from evaluate import load_checkpoint\n")
    assert _imported_modules(bad) & ENTRY_SCRIPTS == {"evaluate"}


def test_a_negatives_yaml_packaged_under_data_fails_loudly(tmp_path):
    """A generator YAML written the old way (`# @package data.negatives`) must not train silently without it."""
    from lightning_modules.model_factory import ModelSpec
    from lightning_modules.training import build_datamodule

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "negatives" / "misplaced.yaml").write_text(
        "# @package data.negatives\nmisplaced:\n  _target_: datamodules.negatives.trigram_shuffle.TrigramShuffle\n"
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["negatives=[misplaced]"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(ValueError, match="top-level `negatives` group"):
        build_datamodule(cfg, ModelSpec(name="tiny-vit"))


def test_selected_generators_reach_the_datamodule_under_their_names(cfg_factory):
    from lightning_modules.model_factory import ModelSpec
    from lightning_modules.training import build_datamodule

    cfg = cfg_factory("negatives=[text_rules,swap_rules]")
    dm = build_datamodule(cfg, ModelSpec(name="tiny-vit"))
    assert [g.run_name for g in dm.negatives] == ["text_rules", "swap_rules"]
    assert all(g.leak_filter is not None and g.vocabulary is not None for g in dm.negatives)


def test_training_negatives_and_the_aro_order_protocol_share_one_lexicon():
    """Word lists live in datamodules.lexicon only: a generator and a benchmark cannot drift apart silently."""
    from datamodules import lexicon
    from datamodules.benchmarks import aro_order
    from datamodules.negatives import llm_rewriter, text_rules

    for module in (text_rules, aro_order, llm_rewriter):
        for name in ("COLORS", "SIZES", "NOUNS_SING", "NOUNS_PLUR"):
            if hasattr(module, name):
                assert getattr(module, name) is getattr(lexicon, name), (module.__name__, name)
    lists = {n for n in dir(lexicon) if n.isupper()}
    # (the synthetic world's grammar, datamodules/world, defines its own closed vocabulary on purpose)
    for path in [
        *(ROOT / "datamodules" / "negatives").rglob("*.py"),
        *(ROOT / "datamodules" / "benchmarks").rglob("*.py"),
    ]:
        assigned = {
            t.id
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        assert not assigned & lists, f"{path} redefines lexicon lists {sorted(assigned & lists)}"


@pytest.mark.parametrize("trim", [True, False])
def test_training_batches_carry_trimmed_tokens_when_the_model_takes_them(cfg_factory, trim):
    """With `model.trim_text` (default) the loader drops the padding columns in its workers, so a device gets the
    shorter tensor; every caption keeps all its tokens (the end token, the argmax-pooled one, included)."""
    from lightning_modules.model_factory import ModelSpec
    from lightning_modules.training import build_datamodule

    cfg = cfg_factory("negatives=[text_rules]", "data.num_workers=0")
    spec = ModelSpec(name="tiny-vit", trim_text=trim)
    dm = build_datamodule(cfg, spec)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    texts = batch.texts_YL
    assert texts.shape[0] > batch.num_pos  # negatives included
    full = spec.tokenizer()(["x"]).shape[1]
    if trim:
        assert texts.shape[1] < full and texts.shape[1] % 4 == 0
        eot = spec.tokenizer()(["x"])[0].max()
        assert bool((texts == eot).any(1).all()), "a caption lost its end token"
    else:
        assert texts.shape[1] == full

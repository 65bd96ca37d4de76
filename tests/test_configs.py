"""Every option of every config group composes and instantiates (catches `_target_` rot)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF, cuda_available


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in (
        "data",
        "model",
        "loss",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "hydra",
        "experiment",
        "debug",
        "benchmark",
        "raw",
        "gate",
        "stages",
        "preprocessing",
    ):
        assert options(group), group


@pytest.mark.parametrize("option", options("model"))
def test_model_options(cfg_factory, option):
    overrides = [f"model={option}"] + (["model.name=RN50"] if option == "open_clip" else [])
    spec = instantiate(cfg_factory(*overrides).model)
    if spec.name.startswith("tiny"):
        assert spec.build() is not None
    assert spec.image_size > 0 and spec.tokenizer() is not None


@pytest.mark.parametrize("option", options("data"))
def test_data_options(cfg_factory, option, pairs_manifest):
    overrides = [f"data={option}"]
    if option == "pairs":
        overrides = [f"data={option}", f"data.source.train_path={pairs_manifest}"]
    if option == "preprocessed":
        overrides += ["raw=noisy_synthetic", f"preprocess.out_dir={pairs_manifest.parent / 'clean'}"]
    cfg = cfg_factory(*overrides, tiny=option == "synthetic")
    dm = instantiate(cfg.data, image_transform=lambda x: x, tokenizer=lambda x: x)
    if option == "preprocessed":  # train.py builds the manifest; without it the source says so
        with pytest.raises(FileNotFoundError, match="clean manifest not found"):
            dm.source.records("train")
        assert len(dm.source.records("test")) == 1000  # the raw source's clean test split
        return
    assert dm.source.records("train")


@pytest.mark.parametrize("option", options("raw"))
def test_raw_options(cfg_factory, option, pairs_manifest, tmp_path):
    import tarfile

    from PIL import Image

    img_dir = pairs_manifest.parent / "imgs"
    caps = tmp_path / "caps.txt"
    caps.write_text("a red circle\n")
    (tmp_path / "coco.json").write_text('{"images": [{"id": 1, "file_name": "0.png"}], "annotations": []}')
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        tar.add(tmp_path / "x.png", "x.png")
    files = {
        "pairs": [f"preprocess.raw.train_path={pairs_manifest}"],
        "image_folder": [f"preprocess.raw.root={img_dir}"],
        "text_file": [f"preprocess.raw.path={caps}"],
        "coco_captions": [
            f"preprocess.raw.annotations={tmp_path / 'coco.json'}",
            f"preprocess.raw.image_root={img_dir}",
        ],
        "webdataset": [f"preprocess.raw.shards={tmp_path / 's.tar'}"],
        "mixed": [
            "+preprocess.raw.sources.texts._target_=datamodules.sources.text_file.TextFileSource",
            f"+preprocess.raw.sources.texts.path={caps}",
        ],
        "noisy_synthetic": [
            "preprocess.raw.num_train=16",
            "preprocess.raw.num_val=4",
            "preprocess.raw.num_test=4",
        ],
    }
    cfg = cfg_factory(f"raw={option}", *files[option], config_name="preprocess")
    assert instantiate(cfg.preprocess.raw).records("train")


@pytest.mark.parametrize("option", options("gate"))
def test_gate_options(cfg_factory, option):
    from datamodules.preprocess.run import build_gate

    extra = (
        ["~preprocess.gate.scorers.0.model.pretrained", "~preprocess.gate.scorers.1.model.pretrained"]
        if option == "synthetic"
        else []
    )
    cfg = cfg_factory(f"gate={option}", *extra, config_name="preprocess")
    if option == "none":
        assert build_gate(cfg.preprocess) is None
    elif option == "synthetic":
        assert len(build_gate(cfg.preprocess).scorers) == 2
    else:  # real weights need a download: compose + resolve only
        g = OmegaConf.to_container(cfg.preprocess.gate, resolve=True)
        assert {s["tower"] for s in g["scorers"]} == {"vit", "cnn"}


@pytest.mark.parametrize("option", options("stages"))
def test_stage_options(cfg_factory, option):
    from datamodules.preprocess.run import build_stages

    cfg = cfg_factory(f"stages=[{option}]", config_name="preprocess")
    (stage,) = build_stages(cfg.preprocess)
    assert stage.phase in ("produce", "repair") and stage.identity()["stage"] == stage.name


@pytest.mark.parametrize("option", options("loss"))
def test_loss_options(cfg_factory, option):
    """Every loss YAML instantiates and gives finite terms with finite gradients; hinge terms may be 0 (a correct
    hinge is 0 when satisfied), so only the sum must be positive on these random features."""
    from lightning_modules.losses.base import LossInputs, LossSum

    extra = []
    if option == "intra_modal":  # a hinge at margin 0.5 is 0 on random features: make the selected pairs cost
        extra = ["loss.intra_text.margin=-1.0", "loss.intra_image.margin=-1.0"]
    cfg = cfg_factory(f"loss=[{option}]", *extra)
    loss = LossSum({k: instantiate(v) for k, v in cfg.loss.items()})
    g = torch.Generator().manual_seed(0)
    leaves = {
        k: torch.randn(n, 8, generator=g, requires_grad=True)
        for k, n in (("i", 4), ("t", 4), ("in", 2), ("tn", 3))
    }
    f = lambda k: torch.nn.functional.normalize(leaves[k], dim=-1)  # noqa: E731
    x = LossInputs(
        img_BD=f("i"),
        txt_BD=f("t"),
        logit_scale=torch.tensor(10.0),
        img_neg_MD=f("in"),
        txt_neg_ND=f("tn"),
        img_neg_owner_M=torch.tensor([0, 2]),
        txt_neg_owner_N=torch.tensor([0, 1, 2]),
        img_neg_pair_M=torch.tensor([2, -1]),
        img_neg_kind=["compositional/position", "structure/patch_shuffle"],
        txt_neg_kind=["compositional/color", "structure/trigram_shuffle", "compositional/position"],
    )
    if option == "list_order":  # it selects only meaning-preserving rewrites
        x.txt_neg_kind[1] = "paraphrase/list_order"
    if option == "lexical_image":  # it selects only shape/size edits
        x.img_neg_kind[0] = "compositional/object"
    out = loss(x)
    terms = [k for k in out if k.endswith("_loss")]
    assert terms and all(torch.isfinite(out[k]) for k in terms), out
    total = sum(out[k] for k in terms)
    assert total > 0, out
    total.backward()
    grads = [v.grad for v in leaves.values() if v.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("option", options("negatives"))
def test_negatives_options(cfg_factory, option, tiny_llm_dir):
    extra = [f"negatives.llm_rewriter.model={tiny_llm_dir}"] if option == "llm_rewriter" else []
    cfg = cfg_factory(f"negatives=[{option}]", *extra)
    gens = [instantiate(v) for v in cfg.negatives.values()]
    assert gens and all(callable(g) and g.name for g in gens)


@pytest.mark.parametrize("group", ["optimizer", "scheduler"])
def test_optimizer_scheduler_options(cfg_factory, group):
    for option in options(group):
        node = instantiate(cfg_factory(f"{group}={option}")[group])
        if group == "optimizer":
            opt = node(params=[torch.nn.Parameter(torch.zeros(2))])
            assert isinstance(opt, torch.optim.Optimizer)
        else:
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
            sched = node(optimizer=opt, total_steps=100)
            assert sched.get_last_lr()


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(cfg_factory, option):
    cfg = cfg_factory(f"trainer={option}")
    if cfg.trainer.accelerator == "gpu" and not cuda_available():
        pytest.skip("GPU trainer needs CUDA (run with -m gpu on a GPU machine)")
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(cfg_factory, option, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = cfg_factory(f"logger={option}")
    loggers = [instantiate(v) for v in (cfg.logger or {}).values()]
    for lg in loggers:
        lg.log_hyperparams({"x": 1})
    assert (option == "none") == (not loggers)
    if option == "wandb":
        assert cfg.logger.wandb.mode == "disabled"  # taken from the environment
        import wandb

        wandb.finish()


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options(cfg_factory, option):
    cbs = [instantiate(v) for v in (cfg_factory(f"callbacks={option}").callbacks or {}).values()]
    assert (option == "none") == (not cbs)


@pytest.mark.parametrize("option", options("benchmark"))
def test_benchmark_options(cfg_factory, option):
    cfg = cfg_factory(f"benchmark=[{option}]", tiny=False)
    benches = {k: instantiate(v) for k, v in cfg.benchmark.items()}
    assert benches and all(hasattr(b, "run") for b in benches.values())


@pytest.mark.parametrize("option", options("experiment") + options("debug"))
def test_experiment_and_debug_options_compose(cfg_factory, option):
    group = "experiment" if option in options("experiment") else "debug"
    cfg = cfg_factory(f"{group}={option}", tiny=not option.startswith("noisy_"))
    assert OmegaConf.to_container(cfg, resolve=True)


def test_hydra_and_paths_run_dirs_unique_to_microsecond():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    run = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert run.endswith("${now:%Y-%m-%d_%H-%M-%S-%f}") and "%f" in sweep["dir"]
    assert sweep["subdir"] == "${hydra.job.num}"
    assert OmegaConf.to_container(cfg.paths)["output_dir"] == "${hydra:runtime.output_dir}"


def test_evaluate_config_composes(cfg_factory):
    cfg = cfg_factory("ckpt_path=x.ckpt", config_name="evaluate")
    assert cfg.ckpt_path == "x.ckpt" and "synthetic" in cfg.benchmark


def test_struct_mode_rejects_typos(cfg_factory):
    from omegaconf.errors import ConfigAttributeError

    cfg = cfg_factory()
    with pytest.raises(ConfigAttributeError):
        _ = cfg.data.batchsize
    assert Path(CONF / "train.yaml").is_file()


def test_wandb_tags_from_overrides_drop_paths_and_logging_and_fit_wandbs_limit():
    from lightning_modules.training import override_tags

    tags = override_tags(
        [
            "experiment=hardneg",
            "seed=1",
            "paths.log_dir=/x",
            "logger=wandb",
            "hydra.run.dir=/y",
            "+trainer.limit_val_batches=0",
            "data.source.caption_mix=" + "x" * 99,
        ]
    )
    assert tags[:3] == ["experiment=hardneg", "seed=1", "trainer.limit_val_batches=0"]
    assert len(tags) == 4 and len(tags[3]) == 64

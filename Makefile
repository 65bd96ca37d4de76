# Two commands a user needs: `make train` and `make test`. Both create .venv and install the project on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.installed-base
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip install -q --disable-pip-version-check
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install train test test-slow test-gpu lint evaluate clean scorers

# `make train` needs only the runtime dependencies; everything else (tests, sweeps, search) adds the extras. pip is
# upgraded first: a venv's bundled pip took 109 s for the runtime install, an upgraded one 5 s + 74 s (2-core machine).
$(BASE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(PIP) -e '.[dev,sweep,search]'
	touch $(STAMP)

install: $(STAMP)

## Train the default run and print its evaluation table: the noisy synthetic world (10% mismatched captions, 5% lone
## images, 5% lone texts) is preprocessed (gate of the shipped tiny ViT + ResNet scorers, look-again repair,
## captioning, text-to-image) into a clean manifest, then a tiny ViT CLIP trains on it with the default hard-negative
## recipe (relational rewrites with re-rendered images + lexical rewrites; CPU).
## Other setups: make train EXPERIMENT=all ARGS="trainer.max_steps=200 seed=1"
EXPERIMENT ?= noisy_hardneg
SCORERS := assets/scorers/tiny-vit.safetensors assets/scorers/tiny-rn.safetensors
train: $(BASE_STAMP) $(SCORERS)
	$(PY) train.py experiment=$(EXPERIMENT) $(ARGS)

## Evaluate a checkpoint: make evaluate ARGS="ckpt_path=logs/runs/<run>/checkpoints/last.ckpt"
evaluate: $(BASE_STAMP)
	$(PY) evaluate.py $(ARGS)

## Gate scorers for the synthetic world: a tiny ViT and a tiny ResNet CLIP trained on clean synthetic data, exported
## compact (fp16, trained token rows only; 14 MB together) to assets/scorers/{tiny-vit,tiny-rn}.safetensors, which
## conf/gate/synthetic.yaml reads. They are shipped, so `make train` does not train them (4.5 min on 2 CPU cores);
## `make scorers` retrains them from scratch (training runs in data/scorers/) — do it and commit the files when the
## world's renderer or caption grammar changes (tests/test_shipped_scorers.py checks they still fit the world). They
## train on scenes disjoint from the raw data they will judge (scene_offset), like a pretrained CLIP that never saw
## your data, with the world's generic object counts (1-4) and caption mix, not the relation-dense mix they judge.
SCORER_ARGS = data.source.scene_offset=1000000 data.source.world.min_objects=1 data.source.world.caption_mix=null trainer.max_steps=400 trainer.val_check_interval=400 data.val_negatives={} evaluate_after=false run_test=false logger=none trainer.enable_progress_bar=false
scorers: | $(BASE_STAMP)
	rm -rf data/scorers/tiny-vit-run data/scorers/tiny-rn-run
	$(PY) train.py model=tiny_vit seed=100 $(SCORER_ARGS) hydra.run.dir=data/scorers/tiny-vit-run
	$(PY) -m lightning_modules.export data/scorers/tiny-vit-run/checkpoints/last.ckpt assets/scorers/tiny-vit.safetensors --compact
	$(PY) train.py model=tiny_rn seed=101 $(SCORER_ARGS) hydra.run.dir=data/scorers/tiny-rn-run
	$(PY) -m lightning_modules.export data/scorers/tiny-rn-run/checkpoints/last.ckpt assets/scorers/tiny-rn.safetensors --compact

$(SCORERS):
	@echo "missing $@: it is shipped in the repository (git checkout assets/scorers) or rebuilt by 'make scorers'"; exit 1

## Default test run: CPU-only, offline, no slow or gpu tests.
test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow and not gpu" $(ARGS)

test-slow: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q -m "slow" $(ARGS)

test-gpu: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q -m "gpu" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf logs outputs .pytest_cache

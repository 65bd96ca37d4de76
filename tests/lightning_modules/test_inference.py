"""Checkpoint loading is safe and its errors are usable: the model is rebuilt from an allow-list of architecture
fields only (a hostile checkpoint cannot make open_clip unpickle another file), and bad files name themselves."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from lightning_modules.inference import load_checkpoint
from lightning_modules.model_factory import ModelSpec


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint(path, model_cfg):
    state = {f"model.{k}": v for k, v in ModelSpec(name="tiny-vit").build().state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"run_config": {"model": model_cfg}}}, path)
    return path


def test_a_checkpoint_cannot_make_open_clip_load_a_file(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "aux.pt").write_bytes(pickle.dumps(_Payload(marker)))
    ckpt = _checkpoint(
        tmp_path / "evil.ckpt",
        {
            "name": "tiny-vit",
            "model_kwargs": {"weights_only": False, "pretrained_image_path": str(tmp_path / "aux.pt")},
        },
    )
    with pytest.raises(ValueError, match=r"model\.model_kwargs\.pretrained_image_path"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    # the payload does run when unpickled unsafely: the test would notice a loader that did so
    pickle.loads((tmp_path / "aux.pt").read_bytes())
    assert marker.exists()


def test_an_honest_checkpoint_loads_with_architecture_kwargs(tmp_path):
    ckpt = _checkpoint(tmp_path / "ok.ckpt", {"name": "tiny-vit", "model_kwargs": {"force_image_size": 48}})
    model, spec, _ = load_checkpoint(ckpt)
    assert (
        spec.pretrained is None and spec.cache_dir is None and spec.model_kwargs == {"force_image_size": 48}
    )
    assert not model.training


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 10])
def test_unreadable_checkpoint_files_are_named(tmp_path, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"ckpt_path: '.*bad\.ckpt' \(\d+ bytes\) is not a readable"):
        load_checkpoint(bad)


def test_a_checkpoint_trained_from_another_initial_temperature_loads_and_must_give_a_number(tmp_path):
    ckpt = _checkpoint(tmp_path / "t.ckpt", {"name": "tiny-vit", "model_kwargs": {"init_logit_scale": 3.912}})
    _, spec, _ = load_checkpoint(ckpt)
    assert spec.model_kwargs == {"init_logit_scale": 3.912}
    bad = _checkpoint(
        tmp_path / "b.ckpt", {"name": "tiny-vit", "model_kwargs": {"init_logit_scale": "/x.pt"}}
    )
    with pytest.raises(ValueError, match=r"model_kwargs\.init_logit_scale must be a number"):
        load_checkpoint(bad)

"""Model stage on the tiny model; the real default model in test_real_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssae_steps.config import ConfigError
from ssae_steps.model import ModelConfig, load_model, next_token_loss, prepare_model
from tests.tiny_model import TINY_LAYERS


def test_prepare_local_model_round_trips(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = ModelConfig(source="local", name=str(tiny_model_dir), hook_layer=2)
    info = prepare_model(cfg, tmp_path / "hf", tmp_path / "model.json")
    assert info["n_layers"] == TINY_LAYERS
    assert info["d_model"] == 64
    assert info["hook_name"] == "blocks.2.hook_resid_post"
    assert json.loads((tmp_path / "model.json").read_text())["hook_layer"] == 2
    original, tok = load_model(tiny_model_dir)
    copied, tok2 = load_model(tmp_path / "hf")
    ids = tok("Water boils at one hundred degrees Celsius.", return_tensors="pt").input_ids
    assert ids.tolist() == tok2("Water boils at one hundred degrees Celsius.", return_tensors="pt").input_ids.tolist()
    with torch.inference_mode():
        torch.testing.assert_close(original(ids).logits, copied(ids).logits)
    assert info["sanity_loss_nats"] == pytest.approx(next_token_loss(copied, tok2, info_text()), rel=1e-5)
    assert not list(tmp_path.glob(".*tmp-*")), "temporary output left behind"


def info_text() -> str:
    from ssae_steps.model import SANITY_TEXT

    return SANITY_TEXT


def test_hook_layer_out_of_range(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = ModelConfig(source="local", name=str(tiny_model_dir), hook_layer=TINY_LAYERS)
    with pytest.raises(ConfigError, match=r"model.hook_layer: 4 is out of range.*4 decoder blocks"):
        prepare_model(cfg, tmp_path / "hf", tmp_path / "model.json")
    assert not (tmp_path / "model.json").exists()


def test_missing_local_path_names_key(tmp_path: Path) -> None:
    cfg = ModelConfig(source="local", name=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"model.name: local model path .*nope.* does not exist"):
        prepare_model(cfg, tmp_path / "hf", tmp_path / "model.json")


def test_missing_gguf_package_names_key(tmp_path: Path) -> None:
    cfg = ModelConfig(source="gguf_package", name="no_such_gguf_package")
    with pytest.raises(ConfigError, match=r"model.name: cannot import GGUF package module 'no_such_gguf_package'"):
        prepare_model(cfg, tmp_path / "hf", tmp_path / "model.json")


def test_killed_save_leaves_no_complete_output(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import PreTrainedModel

    def crash(self, *args, **kwargs):  # a job killed while writing weights
        Path(args[0]).mkdir(parents=True, exist_ok=True)
        (Path(args[0]) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    cfg = ModelConfig(source="local", name=str(tiny_model_dir), hook_layer=1)
    with pytest.raises(KeyboardInterrupt):
        prepare_model(cfg, tmp_path / "hf", tmp_path / "model.json")
    assert not (tmp_path / "hf").exists()
    assert not (tmp_path / "model.json").exists()
    assert not list(tmp_path.glob(".*tmp-*"))

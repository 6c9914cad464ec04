"""The embedded default: Gemma 3 270M from the PyPI GGUF package, dequantised and saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssae_steps.model import ModelConfig, load_model, next_token_loss, prepare_model
from tests.conftest import wiki_texts


@pytest.mark.slow
def test_default_model_is_sane_on_real_text(tmp_path: Path) -> None:
    info = prepare_model(ModelConfig(), tmp_path / "hf", tmp_path / "model.json")
    assert (info["model_type"], info["n_layers"], info["d_model"]) == ("gemma3_text", 18, 640)
    assert info["hook_layer"] == 9
    model, tokenizer = load_model(tmp_path / "hf")
    # Real English the model was not asked to memorise: Wikipedia lead sections.
    losses = [next_token_loss(model, tokenizer, row["text"]) for row in wiki_texts(8, "Physical sciences")]
    mean = sum(losses) / len(losses)
    assert 0.5 < mean < 6.0, losses
    assert info["sanity_loss_nats"] < 6.0

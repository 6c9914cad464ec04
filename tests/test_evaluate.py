"""Evaluation metrics: FVU anchors, spliced loss equals the clean loss for an identity
splice, tail-concept numbers on a planted example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssae_steps.evaluate import fvu, reconstruction_metrics, spliced_loss, windows_from_rows
from ssae_steps.model import load_model, residual_stream
from ssae_steps.sae import SAEConfig, SparseAutoencoder
from ssae_steps.tail_concepts import TailConfig, concept_detection, tail_recall, tail_tokens


def test_fvu_of_perfect_reconstruction_is_0_and_of_the_mean_is_1() -> None:
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0)) * 3 + 2
    assert fvu(x, x) == 0.0
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0, abs=1e-6)
    assert fvu(x, x + 0.1 * (x - x.mean(0))) == pytest.approx(0.01, rel=1e-4)


def test_reconstruction_metrics_of_a_planted_sae() -> None:
    """An SAE whose 8 decoder rows are the data's axes and k=2 reconstructs 2-sparse data exactly."""
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=8, k=2))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(8))
        sae.W_enc.copy_(torch.eye(8))
    gen = torch.Generator().manual_seed(1)
    x = torch.zeros(300, 8)
    x[torch.arange(300), torch.randint(0, 4, (300,), generator=gen)] = 1 + torch.rand(300, generator=gen)
    x[torch.arange(300), 4 + torch.randint(0, 3, (300,), generator=gen)] = 1 + torch.rand(300, generator=gen)
    tail = np.zeros(300, bool)
    tail[:30] = True
    metrics, rows, latents = reconstruction_metrics(sae, x.numpy(), tail, dense_threshold=0.5)
    assert metrics["fvu"] == pytest.approx(0.0, abs=1e-10) and metrics["l0"] == 2.0
    assert metrics["dead_fraction"] == 1 / 8  # axis 7 never used
    assert metrics["dense_fraction"] == 0.0  # no axis on more than half the tokens
    assert metrics["tail_tokens"] == 30 and metrics["tail_fvu"] == pytest.approx(0.0, abs=1e-10)
    assert len(rows) == len(latents) == 600


def test_identity_splice_gives_the_clean_loss(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    texts = ["Water boils at one hundred degrees Celsius at sea level.", "The sun is a star made of hot plasma."]
    windows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    clean, n = spliced_loss(model, windows, layer=2, bos=bos, pad=pad, batch_size=2)
    identity, _ = spliced_loss(model, windows, layer=2, bos=bos, pad=pad, batch_size=2, replace=lambda h: h)
    zero, _ = spliced_loss(model, windows, layer=2, bos=bos, pad=pad, batch_size=2, replace=torch.zeros_like)
    assert n == sum(len(w) for w in windows)
    assert identity == pytest.approx(clean, rel=1e-6)
    assert abs(zero - clean) > 1e-3  # the tiny model is untrained, so only "different" is assured
    # The chunked loss is the model's own: HF's loss on one window.
    ids = torch.tensor([[bos, *windows[0]]])
    with torch.inference_mode():
        reference = float(model(input_ids=ids, labels=ids).loss)
    single, _ = spliced_loss(model, windows[:1], layer=2, bos=bos, pad=pad, batch_size=1)
    assert single == pytest.approx(reference, rel=1e-5)
    # A splice that returns the cached activation itself (what the SAE sees) changes nothing either.
    cached = residual_stream(model, ids, torch.ones_like(ids), 2)[0, 1:]
    spliced, _ = spliced_loss(model, windows[:1], 2, bos, pad, batch_size=1, replace=lambda h: cached[None])
    assert spliced == pytest.approx(reference, rel=1e-5)


def test_windows_are_rebuilt_from_cached_rows() -> None:
    doc = np.array(["a"] * 5 + ["b"] * 3)
    pos = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    tok = np.arange(8)
    assert windows_from_rows(doc, pos, tok, chunk=3, max_tokens=100) == [[0, 1, 2], [3, 4], [5, 6, 7]]
    assert windows_from_rows(doc, pos, tok, chunk=3, max_tokens=4) == [[0, 1, 2], [3, 4]]


def test_tail_tokens_on_planted_counts() -> None:
    # token 1: common everywhere; 2: subdomain-specific and rare; 3: specific but too
    # rarely held out; 4: rare but not specific.
    general = np.array([0, 50_000, 2, 2, 30] + [10_000] * 5)
    subdomain = np.array([0, 5_000, 400, 300, 1] + [1_000] * 5)
    heldout = np.array([0, 900, 40, 2, 5] + [100] * 5)
    cfg = TailConfig(min_ratio=4.0, max_general_frequency=1e-3, min_count=5)
    rows = tail_tokens(subdomain, general, heldout, cfg)
    assert [r["token_id"] for r in rows] == [2]
    ratio = (401 / (subdomain.sum() + 10)) / (3 / (general.sum() + 10))
    assert rows[0]["ratio"] == pytest.approx(ratio)


def test_concept_detection_on_planted_latents() -> None:
    # 10 rows; token 7 at rows 0-3, token 9 at rows 4-5. Latent 3 fires exactly on token
    # 7; latent 1 fires on rows 4 and 6-9 (1 of 2 token-9 rows, 4 false positives).
    tokens = np.array([7, 7, 7, 7, 9, 9, 1, 1, 1, 1])
    rows = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9])
    latents = np.array([3, 3, 3, 3, 1, 1, 1, 1, 1])
    found = concept_detection(rows, latents, tokens, concepts=[7, 9], d_sae=5)
    assert found[0] == {"token_id": 7, "latent": 3, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert found[1]["latent"] == 1
    assert found[1]["precision"] == pytest.approx(1 / 5) and found[1]["recall"] == pytest.approx(1 / 2)
    assert found[1]["f1"] == pytest.approx(2 * 1 / (5 + 2))
    assert tail_recall(found, 0.5) == 0.5

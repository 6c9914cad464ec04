"""Evaluation metrics: FVU anchors, spliced loss equals the clean loss for an identity
splice and for the SAE plus its error term, matched-norm noise is far worse than a trained
SAE, per-document sums give the set's metrics, test windows are a seeded uniform sample,
tail-concept numbers on a planted example (latent chosen on validation, scored on test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssae_steps.activations.sets import write_activation_set
from ssae_steps.bootstrap import resample_weights
from ssae_steps.evals.config import TailConfig
from ssae_steps.evals.evaluate import (
    fvu,
    reconstruct_rows,
    reconstruction_metrics,
    sample_windows,
    set_metrics,
    windows_from_rows,
)
from ssae_steps.evals.per_doc import doc_metrics, doc_stats, read_per_doc, write_per_doc
from ssae_steps.evals.spliced_loss import spliced_loss, window_losses
from ssae_steps.evals.tail import (
    concept_detection,
    detections,
    tail_detection,
    tail_recall,
    tail_tokens,
    token_types,
    type_detection,
)
from ssae_steps.model import load_model, padded_batch, residual_stream
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae
from ssae_steps.sae.config import SAEConfig, TrainConfig
from ssae_steps.sae.train import train_sae
from tests.conftest import wiki_texts


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
    assert n == sum(len(w) - 1 for w in windows)  # not the prediction from BOS
    assert identity == pytest.approx(clean, rel=1e-6)
    assert abs(zero - clean) > 1e-3  # the tiny model is untrained, so only "different" is assured
    # The chunked loss is the model's own: HF's loss on one window, from position 1 on.
    ids = torch.tensor([[bos, *windows[0]]])
    with torch.inference_mode():
        labels = ids.clone()
        labels[0, 1] = -100  # the first token, predicted from BOS
        reference = float(model(input_ids=ids, labels=labels).loss)
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
    assert windows_from_rows(doc, pos, tok, chunk=3) == [("a", [0, 1, 2]), ("a", [3, 4]), ("b", [5, 6, 7])]


def test_scored_windows_are_a_seeded_uniform_sample() -> None:
    windows = [(f"d{i}", [i] * 10) for i in range(200)]
    picked = sample_windows(windows, max_tokens=300, seed=0)
    assert len(picked) == 30 and picked == sample_windows(windows, 300, seed=0)
    assert picked != sample_windows(windows, 300, seed=1)
    assert picked != windows[:30]  # not the first rows of the cache
    assert len(sample_windows(windows, max_tokens=10**9, seed=0)) == 200
    # Uniform: over many seeds every window is drawn about equally often (30 of 200 each time).
    counts = np.bincount([w[1][0] for s in range(400) for w in sample_windows(windows, 300, s)], minlength=200)
    assert counts.mean() == pytest.approx(60) and counts.min() > 30 and counts.max() < 95


def test_per_document_sums_give_the_set_metrics(tmp_path: Path) -> None:
    """FVU, L0 and the losses from per-document sums (via a written and re-read table) equal
    the set's own; a resample's FVU is that of its rows, with their own mean."""
    gen = torch.Generator().manual_seed(3)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=3), seed=1)
    docs = np.repeat([f"doc{i}" for i in range(12)], np.arange(5, 17))
    acts = (torch.randn(len(docs), 8, generator=gen) * 2 + 1).numpy()
    recon = reconstruct_rows(sae, acts)
    metrics = set_metrics(acts, recon, 32, np.zeros(len(acts), bool), dense_threshold=0.5)
    stats = doc_stats(docs, acts, recon.sq_err, recon.l0())
    rng = np.random.default_rng(0)
    losses = {c: rng.random(12) * stats["tokens"] for c in ("clean_ce", "spliced_ce", "kl")}
    stats |= {"loss_tokens": stats["tokens"].astype(float), **losses}
    write_per_doc(tmp_path / "per_doc.parquet", {"subdomain": stats})
    frame = read_per_doc(tmp_path / "per_doc.parquet")["subdomain"]
    assert frame["doc_id"].tolist() == sorted(set(docs)) and frame["tokens"].sum() == len(acts)
    fns = doc_metrics(frame)
    ones = np.ones((1, 12))
    assert fns["fvu"](ones)[0] == pytest.approx(metrics["fvu"], rel=1e-9)
    assert fns["l0"](ones)[0] == pytest.approx(metrics["l0"], rel=1e-12)
    spliced, clean = losses["spliced_ce"].sum(), losses["clean_ce"].sum()
    assert fns["delta_ce"](ones)[0] == pytest.approx((spliced - clean) / len(acts))
    assert fns["kl"](ones)[0] == pytest.approx(losses["kl"].sum() / len(acts))
    weights = resample_weights(12, 1, seed=5)[0]
    drawn = [np.flatnonzero(docs == d) for d, w in zip(frame["doc_id"], weights, strict=True) for _ in range(int(w))]
    rows = np.concatenate(drawn)
    direct = fvu(torch.from_numpy(acts[rows]).double(), _x_hat(sae, acts[rows]).double())
    assert fns["fvu"](weights[None])[0] == pytest.approx(direct, rel=1e-5)


def _x_hat(sae: SparseAutoencoder, acts: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return sae(torch.from_numpy(acts))[0]


@pytest.fixture(scope="module")
def trained_tiny_sae(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The tiny model, a TopK SAE trained on its layer-2 activations of 80 Wikipedia
    summaries, and 16 other summaries' windows to score."""
    model, tokenizer = load_model(tiny_model_dir)
    texts = [r["text"] for r in wiki_texts(100)]
    windows = [ids[:47] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    rows = []
    for start in range(0, 80, 16):
        batch = windows[start : start + 16]
        ids, mask = padded_batch(batch, tokenizer.bos_token_id, tokenizer.pad_token_id)
        hidden = residual_stream(model, ids, mask, 2)
        rows += [hidden[i, 1 : 1 + len(w)] for i, w in enumerate(batch)]
    tmp = tmp_path_factory.mktemp("tiny_sae")
    manifest = write_activation_set(torch.cat(rows).numpy(), tmp / "acts" / "manifest.json")
    cfg = TrainConfig.from_dict(
        {"sae": {"d_sae": 256, "k": 32}, "batch_size": 128, "epochs": 8, "lr": 0.002, "aux_k": 64}
    )
    train_sae(cfg, manifest, tmp / "run")
    return model, tokenizer, load_sae(tmp / "run" / "sae"), windows[80:96]


def test_sae_plus_its_error_term_gives_the_clean_loss_and_noise_is_far_worse(trained_tiny_sae: tuple) -> None:
    model, tokenizer, sae, windows = trained_tiny_sae
    args = (model, windows, 2, tokenizer.bos_token_id, tokenizer.pad_token_id, 4)

    def reconstruction(h: torch.Tensor) -> torch.Tensor:
        return sae(h.reshape(-1, h.shape[-1]))[0].reshape(h.shape)

    def with_error(h: torch.Tensor) -> torch.Tensor:
        x_hat = reconstruction(h)
        return x_hat + (h - x_hat)

    gen = torch.Generator().manual_seed(0)

    def noise(h: torch.Tensor) -> torch.Tensor:
        direction = torch.randn(h.shape, generator=gen)
        return direction / direction.norm(dim=-1, keepdim=True) * h.norm(dim=-1, keepdim=True)

    def per_token(losses: dict[str, np.ndarray], key: str) -> float:
        return float(losses[key].sum() / losses["tokens"].sum())

    exact = window_losses(*args, replace=with_error)
    assert exact["tokens"].sum() == sum(len(w) - 1 for w in windows)
    np.testing.assert_allclose(exact["spliced_ce"], exact["clean_ce"], rtol=1e-5)
    assert per_token(exact, "kl") < 1e-6
    spliced = window_losses(*args, replace=reconstruction)
    noised = window_losses(*args, replace=noise)
    np.testing.assert_allclose(spliced["clean_ce"], exact["clean_ce"], rtol=1e-6)
    assert per_token(spliced, "kl") > 100 * max(per_token(exact, "kl"), 1e-9)  # the SAE does change the output
    assert per_token(noised, "kl") > 5 * per_token(spliced, "kl")
    delta = {
        name: per_token(x, "spliced_ce") - per_token(x, "clean_ce") for name, x in [("sae", spliced), ("noise", noised)]
    }
    assert delta["noise"] > 5 * abs(delta["sae"])


def test_tail_latent_is_chosen_on_validation_and_scored_on_test() -> None:
    """Latent 3 detects token 7 perfectly on validation rows but fires on nothing on test
    rows, where latent 4 would: the validation choice (3) is kept and scores F1 0 on test."""
    tokens = np.array([7, 7, 1, 1])
    docs = np.array(["a", "a", "b", "b"])
    validation = (tokens, np.array([0, 1, 2]), np.array([3, 3, 4]), docs)
    test = (np.array([0, 1]), np.array([4, 4]))
    tail = tail_detection({"validation": [validation], "test": [(tokens, *test, docs)]}, [7], 8, 0.5)
    (found,) = tail["detections"]
    assert found["latent"] == 3 and found["validation_f1"] == 1.0 and found["f1"] == 0.0
    assert tail["recall"] == 0.0 and tail["evaluable"] == 1
    # A concept missing from the test part is not evaluable rather than "missed".
    tail = tail_detection({"validation": [validation], "test": [(tokens[2:], *test, docs[2:])]}, [7], 8, 0.5)
    assert tail["evaluable"] == 0 and np.isnan(tail["recall"])


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
    assert found[0] == {"token_id": 7, "latent": 3, "f1": 1.0, "precision": 1.0, "recall": 1.0, "support": 4}
    assert found[1]["latent"] == 1
    assert found[1]["precision"] == pytest.approx(1 / 5) and found[1]["recall"] == pytest.approx(1 / 2)
    assert found[1]["f1"] == pytest.approx(2 * 1 / (5 + 2))
    assert tail_recall(found, 0.5) == 0.5
    # Scored with latents chosen elsewhere: latent 1 for token 7 has F1 0 here.
    scored = concept_detection(rows, latents, tokens, concepts=[7, 9], d_sae=5, latents=[1, 1])
    assert [d["latent"] for d in scored] == [1, 1] and scored[0]["f1"] == 0.0 and scored[1] == found[1]


def test_token_types_are_every_type_in_validation_text_often_enough() -> None:
    general = np.array([0, 900, 0, 100])
    validation = np.array([3, 7, 5, 4])
    types = token_types(general, validation, min_count=5)
    assert types == [
        {"token_id": 1, "validation_count": 7, "general_count": 900, "general_frequency": 0.9},
        {"token_id": 2, "validation_count": 5, "general_count": 0, "general_frequency": 0.0},
    ]


def test_type_detection_on_planted_latents_in_chunks() -> None:
    """Token t (0-5) occurs on rows 3t..3t+2 of both parts; latent t fires exactly on
    them for t < 4 (captured), latent 7 fires on every row of tokens 4 and 5 (F1 2/3 each,
    below the 0.7 threshold). Scored in chunks of 2 concepts the result equals one pass, and
    the per-document counts give back every test F1."""
    tokens = np.repeat(np.arange(6), 3)
    rows = np.concatenate([np.arange(12), np.arange(12, 18)])
    latents = np.concatenate([np.repeat(np.arange(4), 3), np.full(6, 7)])
    docs = np.array([f"d{i % 4}" for i in range(18)])
    parts = {"validation": [(tokens, rows, latents, docs)], "test": [(tokens, rows, latents, docs)]}
    frequencies = np.array([0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    found = type_detection(parts, list(range(6)), frequencies, 8, 0.7)
    assert found["captured"] == [True, True, True, True, False, False]
    assert found["f1"][4] == pytest.approx(2 * 3 / (6 + 3))
    assert found["general_frequency"] == list(frequencies)
    assert detections(parts, list(range(6)), 8, chunk=2) == detections(parts, list(range(6)), 8)
    counts = found["test_counts"]
    assert counts["docs"] == ["d0", "d1", "d2", "d3"]
    for t in range(6):
        entries = [i for i, ty in enumerate(counts["type"]) if ty == t]
        tp, fires, support = (sum(counts[key][i] for i in entries) for key in ("tp", "fires", "support"))
        assert support == 3 and 2 * tp / (fires + support) == pytest.approx(found["f1"][t])
    # Per document: token 4 (rows 12-14) sits in documents d0, d1, d2 once each; latent 7
    # fires on rows 12-17, i.e. d0 d1 d2 d3 d0 d1.
    doc_rows = {counts["docs"][counts["doc"][i]]: i for i, ty in enumerate(counts["type"]) if ty == 4}
    assert [counts["fires"][doc_rows[d]] for d in ("d0", "d1", "d2", "d3")] == [2, 2, 1, 1]
    assert [counts["support"][doc_rows[d]] for d in ("d0", "d1", "d2", "d3")] == [1, 1, 1, 0]

"""Spliced next-token loss: the cached-clean-pass KL identity against the model's own
full-vocabulary distributions, for a linear head and for a soft-capped one; every loss
left out of the BOS-to-first-token prediction, which the splice cannot change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ssae_steps.config import ConfigError
from ssae_steps.evals.evaluate import cached_clean_scores
from ssae_steps.evals.per_doc import add_window_losses, doc_metrics, doc_stats
from ssae_steps.evals.spliced_loss import (
    clean_scores,
    load_clean_scores,
    save_clean_scores,
    window_losses,
    windows_fingerprint,
)
from ssae_steps.model import load_model, padded_batch
from tests.conftest import wiki_texts

LAYER = 2


def _windows(tokenizer: object, count: int = 7) -> list[list[int]]:
    texts = [r["text"] for r in wiki_texts(40)[20 : 20 + count]]
    # Different lengths, so batches are padded and sorted.
    return [ids[: 9 + 5 * i] for i, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"])]


def _scale_and_shift(h: torch.Tensor) -> torch.Tensor:
    return 0.7 * h + 0.3 * h.roll(1, dims=-1)


@torch.no_grad()
def _reference(
    model: object, windows: list[list[int]], bos: int, pad: int, replace, first: int = 1
) -> dict[str, np.ndarray]:
    """One window at a time through HF's own forward (its LM head and soft-cap), float64
    log-softmaxes over the whole vocabulary, summed over the predictions from positions
    ``first`` on (position 0 is BOS, predicting the window's first token)."""
    from ssae_steps.model import decoder_blocks

    def hook(_m, _i, output):
        hidden = output[0] if isinstance(output, tuple) else output
        patched = hidden.clone()
        patched[:, 1:] = replace(hidden[:, 1:])
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    out = {k: [] for k in ("clean_ce", "spliced_ce", "kl")}
    for w in windows:
        ids, mask = padded_batch([w], bos, pad)
        clean = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[0, first:-1].double(), -1)
        handle = decoder_blocks(model)[LAYER].register_forward_hook(hook)
        try:
            spliced = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[0, first:-1].double(), -1)
        finally:
            handle.remove()
        target = ids[0, first + 1 :, None]
        out["clean_ce"].append(-float(clean.gather(1, target).sum()))
        out["spliced_ce"].append(-float(spliced.gather(1, target).sum()))
        out["kl"].append(float((clean.exp() * (clean - spliced)).sum()))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_window_losses_equal_the_full_vocabulary_reference(tiny_model_dir: Path, softcap: float | None) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    model.config.get_text_config().final_logit_softcapping = softcap
    windows = _windows(tokenizer)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    reference = _reference(model, windows, bos, pad, _scale_and_shift)
    assert reference["kl"].min() > 1e-4  # the splice does change the distributions
    clean = clean_scores(model, windows, bos, pad, batch_size=3, chunk=5)
    resumable = clean_scores(model, windows, bos, pad, batch_size=3, chunk=5, layer=LAYER)
    # The KL terms are cached only where the identity holds (no soft-cap).
    assert clean.linear == resumable.linear == (softcap is None)
    assert clean.hook_hidden is None and resumable.hook_hidden is not None
    for cached in (None, clean, resumable):
        got = window_losses(model, windows, LAYER, bos, pad, 3, _scale_and_shift, clean=cached, chunk=5)
        assert got["tokens"].tolist() == [len(w) - 1 for w in windows]
        for key in ("clean_ce", "spliced_ce", "kl"):
            np.testing.assert_allclose(got[key], reference[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_the_identity_splice_has_zero_kl_through_the_cache(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    windows = _windows(tokenizer)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    clean = clean_scores(model, windows, bos, pad, batch_size=4)
    got = window_losses(model, windows, LAYER, bos, pad, 4, lambda h: h, clean=clean)
    np.testing.assert_allclose(got["spliced_ce"], got["clean_ce"], rtol=1e-5)
    assert np.abs(got["kl"]).max() < 1e-4


def _calls_of_first_block(model: object) -> list[int]:
    from ssae_steps.model import decoder_blocks

    calls: list[int] = []
    decoder_blocks(model)[0].register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_spliced_passes_resume_after_the_hooked_block(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    windows = _windows(tokenizer)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    clean = clean_scores(model, windows, bos, pad, batch_size=3, layer=LAYER)
    assert clean.layer == LAYER
    assert clean.hook_hidden.shape == (sum(len(w) + 1 for w in windows), model.config.hidden_size)
    full = window_losses(model, windows, LAYER, bos, pad, 3, _scale_and_shift)
    calls = _calls_of_first_block(model)
    resumed = window_losses(model, windows, LAYER, bos, pad, 3, _scale_and_shift, clean=clean)
    assert calls == []  # the blocks before the hooked one did not run
    for key in ("spliced_ce", "kl"):
        np.testing.assert_allclose(resumed[key], full[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # Scored at another layer, the cache's block output does not apply: the whole model runs.
    window_losses(model, windows, LAYER - 1, bos, pad, 3, _scale_and_shift, clean=clean)
    assert len(calls) == 3


def test_a_model_that_cannot_resume_from_the_block_output_runs_in_full(tiny_model_dir: Path) -> None:
    """A later block that reads more than the hidden state passed on (here: block 0's
    output, handed over by hooks) makes resuming wrong; the clean pass notices and keeps
    no block output, so the spliced passes run the whole model and stay exact."""
    from ssae_steps.model import decoder_blocks

    model, tokenizer = load_model(tiny_model_dir)
    blocks = decoder_blocks(model)
    handed: list[torch.Tensor] = []
    blocks[0].register_forward_hook(lambda _m, _i, out: handed.append(out[0] if isinstance(out, tuple) else out))

    def add_block_0(_m, args, kwargs):
        extra = handed.pop() if handed else 0.0
        return (args[0] + 0.5 * extra, *args[1:]), kwargs

    blocks[LAYER + 1].register_forward_pre_hook(add_block_0, with_kwargs=True)
    windows = _windows(tokenizer)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    clean = clean_scores(model, windows, bos, pad, batch_size=3, layer=LAYER)
    assert clean.hook_hidden is None and clean.layer is None
    full = window_losses(model, windows, LAYER, bos, pad, 3, _scale_and_shift)
    cached = window_losses(model, windows, LAYER, bos, pad, 3, _scale_and_shift, clean=clean)
    np.testing.assert_allclose(cached["spliced_ce"], full["spliced_ce"], rtol=1e-5)


def test_clean_scores_round_trip_and_refuse_other_windows(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    windows = _windows(tokenizer, 4)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    scores = clean_scores(model, windows, bos, pad, batch_size=2, layer=LAYER)
    path = tmp_path / "clean_scores.safetensors"
    save_clean_scores(path, {"general": scores, "plain": clean_scores(model, windows, bos, pad, batch_size=2)})
    loaded = load_clean_scores(path)["general"]
    assert loaded.fingerprint == windows_fingerprint(windows)
    np.testing.assert_array_equal(loaded.ce, scores.ce)
    np.testing.assert_array_equal(loaded.mean_unembedding, scores.mean_unembedding)
    assert loaded.layer == LAYER
    np.testing.assert_array_equal(loaded.hook_hidden, scores.hook_hidden)
    assert load_clean_scores(path)["plain"].hook_hidden is None
    cache = load_clean_scores(path)
    assert cached_clean_scores(cache, path, "general", windows) is not None
    other = windows[:3] + [windows[3][:-1]]
    with pytest.raises(ConfigError, match="clean_scores.safetensors.*'general'"):
        cached_clean_scores(cache, path, "general", other)
    with pytest.raises(ConfigError, match="'subdomain'"):
        cached_clean_scores(cache, path, "subdomain", windows)
    with pytest.raises(ValueError, match="other windows"):
        window_losses(model, other, LAYER, bos, pad, 2, lambda h: h, clean=loaded)


def test_losses_leave_out_the_bos_to_first_token_prediction_per_document(tiny_model_dir: Path) -> None:
    """The prediction from BOS is the same with and without the splice (delta CE and KL
    exactly 0 there), so it is left out: each document's loss token count is its windows'
    lengths minus one each, and its delta CE and KL equal HF's own over positions >= 1."""
    model, tokenizer = load_model(tiny_model_dir)
    windows = _windows(tokenizer)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    # Seven windows of three documents (a document's windows need not be adjacent).
    docs = ["b", "a", "b", "c", "a", "b", "c"]
    everything = _reference(model, windows, bos, pad, _scale_and_shift, first=0)
    from_first = _reference(model, windows, bos, pad, _scale_and_shift, first=1)
    # What is left out: the BOS position's prediction, equal with and without the splice.
    at_bos = {key: everything[key] - from_first[key] for key in everything}
    np.testing.assert_allclose(at_bos["spliced_ce"], at_bos["clean_ce"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(at_bos["kl"], 0.0, atol=1e-6)
    assert from_first["kl"].min() > 1e-4  # the rest does change
    for cached in (None, clean_scores(model, windows, bos, pad, batch_size=3, layer=LAYER)):
        losses = window_losses(model, windows, LAYER, bos, pad, 3, _scale_and_shift, clean=cached)
        stats = doc_stats(np.array(docs * 2), np.zeros((14, 2)), np.zeros(14), np.zeros(14))
        add_window_losses(stats, list(zip(docs, windows, strict=True)), losses)
        assert stats["doc_id"].tolist() == ["a", "b", "c"]
        for i, doc in enumerate(stats["doc_id"]):
            mine = [j for j, d in enumerate(docs) if d == doc]
            assert stats["loss_tokens"][i] == sum(len(windows[j]) - 1 for j in mine)
            for key in ("clean_ce", "spliced_ce", "kl"):
                np.testing.assert_allclose(
                    stats[key][i], from_first[key][mine].sum(), rtol=1e-4, atol=1e-5, err_msg=f"{doc} {key}"
                )
        frame = pd.DataFrame({k: v for k, v in stats.items() if k != "sum_x"})
        frame["sum_x"] = list(stats["sum_x"])
        metrics = doc_metrics(frame)
        ones = np.ones((1, 3))
        n = sum(len(w) - 1 for w in windows)
        delta = (from_first["spliced_ce"] - from_first["clean_ce"]).sum() / n
        assert float(metrics["delta_ce"](ones)[0]) == pytest.approx(delta, rel=1e-3, abs=1e-6)
        assert float(metrics["kl"](ones)[0]) == pytest.approx(from_first["kl"].sum() / n, rel=1e-3)

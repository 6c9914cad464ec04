"""Next-token loss with one block's output replaced (an SAE spliced in), against the clean
model: per scored window, cross-entropy of both and KL(clean || spliced), in nats.

Why a clean cache: on a CPU the unembedding (262k vocabulary for Gemma) is most of an
evaluation's time, and the clean half of every comparison is the same for every SAE. For a
bias-free linear unembedding ``W`` without logit soft-capping, KL at a position needs three
things of the clean distribution ``p = softmax(W h_c)`` - its negative entropy, and
``W^T p``, the unembedding's mean under it - because ``sum_v p_v (W h_s)_v = h_s . W^T p``:

    KL(p || q) = sum_v p_v log p_v - h_s . W^T p + logsumexp(W h_s),    q = softmax(W h_s).

So :func:`clean_scores` runs the clean model once per evaluation set (with the clean
cross-entropy per position) and :func:`window_losses` then costs one spliced pass per SAE.
Other heads (e.g. Gemma 2's soft-capped logits) score the clean model again beside each
spliced pass, with full log-softmaxes. Either way positions are scored ``chunk`` at a time
across the whole batch: logits of a few hundred positions fit in memory, and the
unembedding matrix is read once per chunk rather than once per row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssae_steps._io import atomic_path

CHUNK = 256
"""Positions per unembedding call: 256 x 262k float32 logits are 268 MB."""


def windows_fingerprint(windows: list[list[int]]) -> str:
    """SHA-256 of the windows' token ids, in order: which windows a clean cache belongs to."""
    digest = hashlib.sha256()
    for ids in windows:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


@dataclass
class CleanScores:
    """The clean model at every scored position of a list of windows (window order, each
    window's predicted positions in turn): cross-entropy of the next token, and where the
    unembedding is linear the KL terms of the module docstring."""

    fingerprint: str
    ce: np.ndarray
    """(positions,) float64."""
    neg_entropy: np.ndarray | None = None
    """(positions,) float64: sum_v p_v log p_v."""
    mean_unembedding: np.ndarray | None = None
    """(positions, d_model) float32: W^T p."""

    @property
    def linear(self) -> bool:
        return self.neg_entropy is not None and self.mean_unembedding is not None


def save_clean_scores(path: str | Path, scores: dict[str, CleanScores]) -> None:
    """One safetensors file for every set (``NAME.ce`` ...; fingerprints in its metadata)."""
    from safetensors.numpy import save_file

    tensors, metadata = {}, {}
    for name, s in scores.items():
        metadata[name] = s.fingerprint
        tensors[f"{name}.ce"] = np.ascontiguousarray(s.ce)
        if s.linear:
            tensors[f"{name}.neg_entropy"] = np.ascontiguousarray(s.neg_entropy)
            tensors[f"{name}.mean_unembedding"] = np.ascontiguousarray(s.mean_unembedding)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_clean_scores(path: str | Path) -> dict[str, CleanScores]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as handle:
        keys = set(handle.keys())
        for name, fingerprint in (handle.metadata() or {}).items():
            out[name] = CleanScores(
                fingerprint,
                handle.get_tensor(f"{name}.ce"),
                *(
                    handle.get_tensor(f"{name}.{k}") if f"{name}.{k}" in keys else None
                    for k in ("neg_entropy", "mean_unembedding")
                ),
            )
    return out


def _linear_head(model: Any) -> torch.Tensor | None:
    """The unembedding matrix when logits are exactly ``W h``; else None."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if softcap or not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    return head.weight


def _logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _batches(
    windows: list[list[int]], bos: int | None, pad: int, batch_size: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """``(window indices, input_ids, attention_mask)``, windows in length order (little padding)."""
    from ssae_steps.model import padded_batch

    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        yield (batch, *padded_batch([windows[i] for i in batch], bos, pad))


def _final_hidden(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    return out.last_hidden_state


def _predicting(hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of every position that predicts a real token, row by row, and the
    token each predicts."""
    valid = mask[:, 1:].bool().to(hidden.device)
    return hidden[:, :-1][valid], ids[:, 1:].to(hidden.device)[valid]


def _offsets(windows: list[list[int]], bos: int | None) -> np.ndarray:
    """Start of each window's positions in the flat per-position arrays (and the total)."""
    predicted = [len(w) + (1 if bos is not None else 0) - 1 for w in windows]
    return np.concatenate([[0], np.cumsum(predicted)]).astype(np.int64)


def _rows_of(offsets: np.ndarray, batch: list[int]) -> np.ndarray:
    """Where a batch's predicting positions (as :func:`_predicting` orders them) go in the
    flat per-position arrays."""
    return np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in batch])


def _clean_chunk(model: Any, w: torch.Tensor | None, h: torch.Tensor, target: torch.Tensor) -> tuple:
    logits = _logits(model, h)
    lse = torch.logsumexp(logits, -1)
    ce = (lse - logits.gather(1, target[:, None])[:, 0]).double()
    if w is None:
        return ce, None, None
    p = torch.exp(logits - lse[:, None])
    neg_entropy = ((p * logits).sum(-1) - lse).double()
    return ce, neg_entropy, p @ w.float()


@torch.no_grad()
def clean_scores(
    model: Any, windows: list[list[int]], bos: int | None, pad: int, batch_size: int, chunk: int = CHUNK
) -> CleanScores:
    """Score ``windows`` with the clean model (see :class:`CleanScores`)."""
    w = _linear_head(model)
    offsets = _offsets(windows, bos)
    total = int(offsets[-1])
    ce = np.zeros(total)
    neg_entropy = np.zeros(total) if w is not None else None
    mean_unembedding = (
        np.zeros((total, model.config.get_text_config().hidden_size), np.float32) if w is not None else None
    )
    for batch, ids, mask in _batches(windows, bos, pad, batch_size):
        h, target = _predicting(_final_hidden(model, ids, mask), ids, mask)
        where = _rows_of(offsets, batch)
        for start in range(0, len(target), chunk):
            rows = where[start : start + chunk]
            c, e, m = _clean_chunk(model, w, h[start : start + chunk], target[start : start + chunk])
            ce[rows] = c.cpu().numpy()
            if w is not None:
                neg_entropy[rows] = e.cpu().numpy()
                mean_unembedding[rows] = m.cpu().numpy()
    return CleanScores(windows_fingerprint(windows), ce, neg_entropy, mean_unembedding)


@torch.no_grad()
def window_losses(
    model: Any,
    windows: list[list[int]],
    layer: int,
    bos: int | None,
    pad: int,
    batch_size: int,
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clean: CleanScores | None = None,
    chunk: int = CHUNK,
) -> dict[str, np.ndarray]:
    """Per window: ``tokens`` predicted and summed next-token cross-entropy of the clean
    model (``clean_ce``); with ``replace``, also with block ``layer``'s output at non-BOS
    positions passed through it (``spliced_ce``) and summed KL(clean || spliced) (``kl``).
    ``clean``: this function's clean scores of the same windows, so that only the spliced
    model runs (its KL terms are used where it has them)."""
    from ssae_steps.model import decoder_blocks

    if clean is None:
        clean = clean_scores(model, windows, bos, pad, batch_size, chunk)
    elif clean.fingerprint != windows_fingerprint(windows):
        raise ValueError("the clean scores were computed on other windows than these")
    offsets = _offsets(windows, bos)
    window_of = np.repeat(np.arange(len(windows)), np.diff(offsets))
    out = {"tokens": np.diff(offsets).astype(float), "clean_ce": np.bincount(window_of, clean.ce, len(windows))}
    if replace is None:
        return out
    offset = 1 if bos is not None else 0

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        patched = hidden.clone()
        patched[:, offset:] = replace(hidden[:, offset:].float()).to(hidden.dtype)
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    spliced_ce, kl = np.zeros(int(offsets[-1])), np.zeros(int(offsets[-1]))
    w = _linear_head(model)
    for batch, ids, mask in _batches(windows, bos, pad, batch_size):
        handle = decoder_blocks(model)[layer].register_forward_hook(hook)
        try:
            h_spliced, target = _predicting(_final_hidden(model, ids, mask), ids, mask)
        finally:
            handle.remove()
        use_cache = clean.linear and w is not None
        h_clean = None if use_cache else _predicting(_final_hidden(model, ids, mask), ids, mask)[0]
        where = _rows_of(offsets, batch)
        for start in range(0, len(target), chunk):
            rows = where[start : start + chunk]
            s, t = h_spliced[start : start + chunk], target[start : start + chunk]
            logits = _logits(model, s)
            lse = torch.logsumexp(logits, -1)
            spliced_ce[rows] = (lse - logits.gather(1, t[:, None])[:, 0]).double().cpu().numpy()
            if use_cache:
                mean_w = torch.from_numpy(clean.mean_unembedding[rows]).to(s.device).double()
                cross = (s.double() * mean_w).sum(-1) - lse.double()
                kl[rows] = clean.neg_entropy[rows] - cross.cpu().numpy()
            else:
                clean_lp = torch.log_softmax(_logits(model, h_clean[start : start + chunk]), -1)
                spliced_lp = logits - lse[:, None]
                kl[rows] = (clean_lp.exp() * (clean_lp - spliced_lp)).sum(-1).double().cpu().numpy()
    out["spliced_ce"] = np.bincount(window_of, spliced_ce, len(windows))
    out["kl"] = np.bincount(window_of, kl, len(windows))
    return out


def spliced_loss(
    model: Any,
    windows: list[list[int]],
    layer: int,
    bos: int | None,
    pad: int,
    batch_size: int,
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over ``windows`` with block ``layer``'s output
    passed through ``replace`` (None: the clean model), and the tokens it is over."""
    losses = window_losses(model, windows, layer, bos, pad, batch_size, replace)
    count = int(losses["tokens"].sum())
    return float(losses["spliced_ce" if replace is not None else "clean_ce"].sum()) / max(count, 1), count

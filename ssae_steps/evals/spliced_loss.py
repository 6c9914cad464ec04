"""Next-token loss with one block's output replaced (an SAE spliced in), against the clean
model: per scored window, cross-entropy of both and KL(clean || spliced), in nats, summed
over the positions the splice can change (:func:`scored_positions`: the prediction of a
window's first token from BOS alone is left out of every loss and token count).

Why a clean cache: on a CPU the unembedding (262k vocabulary for Gemma) is most of an
evaluation's time, and the clean half of every comparison is the same for every SAE. For a
bias-free linear unembedding ``W`` without logit soft-capping, KL at a position needs three
things of the clean distribution ``p = softmax(W h_c)`` - its negative entropy, and
``W^T p``, the unembedding's mean under it - because ``sum_v p_v (W h_s)_v = h_s . W^T p``:

    KL(p || q) = sum_v p_v log p_v - h_s . W^T p + logsumexp(W h_s),    q = softmax(W h_s).

So :func:`clean_scores` runs the clean model once per evaluation set (with the clean
cross-entropy per position) and :func:`window_losses` then costs one spliced pass per SAE.
The blocks up to the hooked one are the same in both passes, so the clean pass also keeps
that block's output, and the spliced pass resumes from it: only the later blocks and the
head run per SAE. It keeps it only after checking, on its first batch, that resuming gives
the clean model's own final hidden states (a model whose blocks need more than the hidden
state passed on, or return tuples, runs in full instead).
Other heads (e.g. Gemma 2's soft-capped logits) score the clean model again beside each
spliced pass, with full log-softmaxes. Either way positions are scored ``chunk`` at a time
across the whole batch: logits of a few hundred positions fit in memory, and the
unembedding matrix is read once per chunk rather than once per row.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssae_steps.files import atomic_path

log = logging.getLogger("ssae.spliced_loss")
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
    layer: int | None = None
    hook_hidden: np.ndarray | None = None
    """(positions with BOS, d_model) float32: block ``layer``'s output at every position of
    every window, window order; None where a spliced pass cannot resume from it."""

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
        if s.hook_hidden is not None:
            tensors[f"{name}.hook_hidden"] = np.ascontiguousarray(s.hook_hidden)
            tensors[f"{name}.layer"] = np.array([s.layer], dtype=np.int64)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_clean_scores(path: str | Path) -> dict[str, CleanScores]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as handle:
        keys = set(handle.keys())
        for name, fingerprint in (handle.metadata() or {}).items():
            neg_entropy, mean_unembedding, layer, hook_hidden = (
                handle.get_tensor(f"{name}.{k}") if f"{name}.{k}" in keys else None
                for k in ("neg_entropy", "mean_unembedding", "layer", "hook_hidden")
            )
            out[name] = CleanScores(
                fingerprint,
                handle.get_tensor(f"{name}.ce"),
                neg_entropy,
                mean_unembedding,
                int(layer[0]) if layer is not None else None,
                hook_hidden,
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


class _KnownOutput(torch.nn.Module):
    """Stands in for a decoder block whose output is already known (``value``), or for one
    before it, whose output is not needed (None: passes its input on)."""

    def __init__(self, value: torch.Tensor | None = None) -> None:
        super().__init__()
        self.value = value

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.value if self.value is not None else (args[0] if args else kwargs["hidden_states"])


def final_hidden_from(
    model: Any, layer: int, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The final hidden states with block ``layer``'s output set to ``hidden``, running only
    the blocks after it (the ones before are swapped out for the call)."""
    from ssae_steps.model import decoder_blocks

    blocks = decoder_blocks(model)
    saved = [blocks[i] for i in range(layer + 1)]
    try:
        for i in range(layer):
            blocks[i] = _KnownOutput()
        blocks[layer] = _KnownOutput(hidden)
        return _final_hidden(model, ids, mask)
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


def _window_rows(windows: list[list[int]], bos: int | None) -> np.ndarray:
    """Start of each window's positions (BOS included) in :attr:`CleanScores.hook_hidden`."""
    lengths = [len(w) + (1 if bos is not None else 0) for w in windows]
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _given_hidden(
    hook_hidden: np.ndarray, starts: np.ndarray, batch: list[int], shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """A batch's block outputs from :attr:`CleanScores.hook_hidden`, right-padded with zeros
    (padding is after every real position, so causal attention never reads it)."""
    given = torch.zeros(*shape[:2], hook_hidden.shape[1])
    for row, i in enumerate(batch):
        given[row, : starts[i + 1] - starts[i]] = torch.from_numpy(hook_hidden[starts[i] : starts[i + 1]])
    return given.to(like.device, like.dtype)


def _predicting(hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of every position that predicts a real token, row by row, and the
    token each predicts."""
    valid = mask[:, 1:].bool().to(hidden.device)
    return hidden[:, :-1][valid], ids[:, 1:].to(hidden.device)[valid]


def _offsets(windows: list[list[int]], bos: int | None) -> np.ndarray:
    """Start of each window's positions in the flat per-position arrays (and the total)."""
    predicted = [len(w) + (1 if bos is not None else 0) - 1 for w in windows]
    return np.concatenate([[0], np.cumsum(predicted)]).astype(np.int64)


def scored_positions(windows: list[list[int]], bos: int | None) -> np.ndarray:
    """Per predicting position (the flat order of :class:`CleanScores`), whether it counts
    in the losses: all but the BOS position of each window. That one predicts the window's
    first token from BOS alone, which the splice (non-BOS positions only) never changes, so
    its spliced and clean scores are equal and it would add exactly 0 to delta CE and KL
    while adding a token to their denominators. Without BOS every position is spliced and
    counts. Either way a window of n tokens has n - 1 scored positions (predicting its
    tokens 2..n)."""
    offsets = _offsets(windows, bos)
    keep = np.ones(int(offsets[-1]), dtype=bool)
    if bos is not None:
        firsts = offsets[:-1][np.diff(offsets) > 0]
        keep[firsts] = False
    return keep


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
    model: Any,
    windows: list[list[int]],
    bos: int | None,
    pad: int,
    batch_size: int,
    chunk: int = CHUNK,
    layer: int | None = None,
) -> CleanScores:
    """Score ``windows`` with the clean model (see :class:`CleanScores`); with ``layer``,
    also keep that block's output for spliced passes to resume from."""
    from ssae_steps.model import decoder_blocks

    w = _linear_head(model)
    starts = _window_rows(windows, bos)
    hook_hidden = (
        np.zeros((int(starts[-1]), model.config.get_text_config().hidden_size), np.float32)
        if layer is not None
        else None
    )
    captured: list[Any] = []

    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        captured.append(output)

    offsets = _offsets(windows, bos)
    total = int(offsets[-1])
    ce = np.zeros(total)
    neg_entropy = np.zeros(total) if w is not None else None
    mean_unembedding = (
        np.zeros((total, model.config.get_text_config().hidden_size), np.float32) if w is not None else None
    )
    for number, (batch, ids, mask) in enumerate(_batches(windows, bos, pad, batch_size)):
        handle = decoder_blocks(model)[layer].register_forward_hook(keep) if hook_hidden is not None else None
        try:
            final = _final_hidden(model, ids, mask)
        finally:
            if handle is not None:
                handle.remove()
        if hook_hidden is not None:
            out = captured.pop()
            if number == 0 and not _resumes_exactly(model, layer, out, final, ids, mask):
                hook_hidden = None
            else:
                for row, i in enumerate(batch):
                    hook_hidden[starts[i] : starts[i + 1]] = out[row, : starts[i + 1] - starts[i]].float().cpu().numpy()
        h, target = _predicting(final, ids, mask)
        where = _rows_of(offsets, batch)
        for start in range(0, len(target), chunk):
            rows = where[start : start + chunk]
            c, e, m = _clean_chunk(model, w, h[start : start + chunk], target[start : start + chunk])
            ce[rows] = c.cpu().numpy()
            if w is not None:
                neg_entropy[rows] = e.cpu().numpy()
                mean_unembedding[rows] = m.cpu().numpy()
    return CleanScores(
        windows_fingerprint(windows),
        ce,
        neg_entropy,
        mean_unembedding,
        layer if hook_hidden is not None else None,
        hook_hidden,
    )


def _resumes_exactly(
    model: Any, layer: int, out: Any, final: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> bool:
    """Whether running on from block ``layer``'s output ``out`` gives the full pass's
    ``final`` hidden states (at real positions)."""
    if not isinstance(out, torch.Tensor):
        log.info("block %d returns %s, not a tensor: spliced passes run the whole model", layer, type(out).__name__)
        return False
    resumed = final_hidden_from(model, layer, out, ids, mask)
    real = mask.bool().to(final.device)
    same = torch.allclose(resumed[real].float(), final[real].float(), rtol=1e-5, atol=1e-5)
    if not same:
        log.info("resuming after block %d does not reproduce the model: spliced passes run the whole model", layer)
    return same


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
    """Per window, over its *scored* positions (:func:`scored_positions`: every prediction
    made from a position the splice replaces): ``tokens`` scored and summed next-token
    cross-entropy of the clean model (``clean_ce``); with ``replace``, also with block
    ``layer``'s output at non-BOS positions passed through it (``spliced_ce``) and summed
    KL(clean || spliced) (``kl``). ``clean``: this function's clean scores of the same
    windows, so that only the spliced model runs (its KL terms are used where it has them)."""
    from ssae_steps.model import decoder_blocks

    if clean is None:
        clean = clean_scores(model, windows, bos, pad, batch_size, chunk)
    elif clean.fingerprint != windows_fingerprint(windows):
        raise ValueError("the clean scores were computed on other windows than these")
    offsets = _offsets(windows, bos)
    window_of = np.repeat(np.arange(len(windows)), np.diff(offsets))
    scored = scored_positions(windows, bos).astype(np.float64)
    out = {
        "tokens": np.bincount(window_of, scored, len(windows)),
        "clean_ce": np.bincount(window_of, clean.ce * scored, len(windows)),
    }
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
    resume = clean.hook_hidden is not None and clean.layer == layer
    starts = _window_rows(windows, bos)
    for batch, ids, mask in _batches(windows, bos, pad, batch_size):
        if resume:
            given = _given_hidden(clean.hook_hidden, starts, batch, tuple(ids.shape), next(model.parameters()))
            final = final_hidden_from(model, layer, hook(None, None, given), ids, mask)
        else:
            handle = decoder_blocks(model)[layer].register_forward_hook(hook)
            try:
                final = _final_hidden(model, ids, mask)
            finally:
                handle.remove()
        h_spliced, target = _predicting(final, ids, mask)
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
    out["spliced_ce"] = np.bincount(window_of, spliced_ce * scored, len(windows))
    out["kl"] = np.bincount(window_of, kl * scored, len(windows))
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
    """Mean next-token cross-entropy (nats) over the scored positions of ``windows``
    (:func:`scored_positions`) with block ``layer``'s output passed through ``replace``
    (None: the clean model), and the tokens it is over."""
    losses = window_losses(model, windows, layer, bos, pad, batch_size, replace)
    count = int(losses["tokens"].sum())
    return float(losses["spliced_ce" if replace is not None else "clean_ce"].sum()) / max(count, 1), count

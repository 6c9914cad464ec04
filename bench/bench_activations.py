"""Activation caching throughput vs the bare truncated forward pass.

Target (issue: activation shards): ``cache_activations`` - reading the table, loading the
model, tokenizing, forward pass stopped after the hooked block, dropping BOS/pad, writing
Parquet shards, statistics and manifest - reaches at least 90% of the tokens/s of a bare
truncated forward pass (loading the model, tokenizing, the same windows in the same
batches, nothing kept or written). Both are timed in this run, alternating, best of
``--repeats``. Fixed start-up costs (~4 s here, mostly loading Gemma's 262k-token
tokenizer) weigh less the more tokens a set has; the default run caches 26k-400k per set.

    snakemake --cores 2 results/model/model.json      # once: the default Gemma 3 270M
    python bench/bench_activations.py --tokens 20000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssae_steps.activations.cache import batches_in_random_order, cache_activations, select_documents, tokenize_windows
from ssae_steps.activations.config import ActivationConfig
from ssae_steps.data.config import CorpusConfig
from ssae_steps.data.corpus import build_corpus
from ssae_steps.model import load_model, residual_stream  # noqa: E402

TARGET = 0.9


def bare_forward(model_dir: Path, texts: list[str], cfg: ActivationConfig, layer: int) -> int:
    import torch

    model, tokenizer = load_model(model_dir)
    windows = tokenize_windows(tokenizer, texts, cfg.context_length, cfg.max_train_tokens)
    tokens = 0
    for batch in batches_in_random_order(windows, cfg.batch_size):
        width = max(len(w.ids) for w in batch) + 1
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, w in enumerate(batch):
            ids[r, : len(w.ids) + 1] = torch.tensor([tokenizer.bos_token_id, *w.ids])
            mask[r, : len(w.ids) + 1] = 1
        residual_stream(model, ids, mask, layer)
        tokens += sum(len(w.ids) for w in batch)
    return tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="results/model/hf")
    parser.add_argument("--layer", type=int, default=None, help="default: hook_layer of results/model/model.json")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").exists():
        sys.exit(f"{model_dir} is not a model directory; run `snakemake results/model/model.json` first")
    layer = args.layer
    if layer is None:
        layer = json.loads((model_dir.parent / "model.json").read_text())["hook_layer"]
    cfg = ActivationConfig(max_train_tokens=args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = CorpusConfig.from_dict({"heldout_fraction": 0.01, "sources": [{"kind": "wiki_summaries"}]}, "bench")
        build_corpus("bench", corpus, 0, root / "docs.parquet", root / "summary.json")
        _, texts, _ = select_documents(root / "docs.parquet", "train", [])
        load_model(model_dir)  # warm the page cache for both
        bare, ours = [], []
        for r in range(args.repeats):
            started = time.perf_counter()
            n = bare_forward(model_dir, texts, cfg, layer)
            bare.append(n / (time.perf_counter() - started))
            started = time.perf_counter()
            info = cache_activations(cfg, model_dir, layer, root / "docs.parquet", "train", root / f"run{r}" / "m.json")
            ours.append(info["tokens"] / (time.perf_counter() - started))
    best_bare, best_ours = max(bare), max(ours)
    ratio = best_ours / best_bare
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"tokens: {n}  layer: {layer}  context {cfg.context_length}  batch {cfg.batch_size}  store {cfg.dtype}")
    print(f"bare truncated forward     : {best_bare:8.1f} tokens/s")
    print(f"ssae cache_activations     : {best_ours:8.1f} tokens/s")
    print(f"ratio ssae / bare          : {ratio:8.2f}  (target >= {TARGET}) {verdict}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

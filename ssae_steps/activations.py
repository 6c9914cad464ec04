"""Activation cache: residual-stream activations of the foundation model at the hook
point, one row per token, in Parquet shards plus a ``manifest.json``.

Documents are cut into windows of at most ``context_length`` tokens (BOS + up to
``context_length - 1`` document tokens); windows are batched by length so padding is
minimal, and the forward pass stops after the hooked block. BOS and pad positions are
dropped. Row columns: ``doc_id``, ``position`` (token index within its document),
``token_id`` and ``activation`` (fixed-size list of ``d_model`` float16/float32).

Shards are written atomically and carry a run key; a rerun after a crash keeps the
complete shards of the same run and resumes after them (no token is written twice), and
``manifest.json`` - the one output Snakemake tracks - is written last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssae_steps._config import ConfigError, from_mapping, require_at_least, resolve_device, run_stage, to_mapping
from ssae_steps._io import atomic_path, remove_stale_temporaries, write_json

log = logging.getLogger("ssae.activations")
SHARD_PATTERN = "shard-{:05d}.parquet"
# Activations compress poorly and slowly; the small columns compress well.
SHARD_COMPRESSION = {"doc_id": "zstd", "position": "zstd", "token_id": "zstd", "activation": "none"}


@dataclass
class ActivationConfig:
    """How activations are computed and stored."""

    context_length: int = 128
    """Tokens per window, BOS included."""
    batch_size: int = 16
    """Windows per forward pass."""
    dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the activation vectors."""
    shard_tokens: int = 65_536
    """Rows (tokens) per shard; the reader holds a few shards in memory at a time."""
    max_train_tokens: int | None = 400_000
    """Cap on tokens cached from a training set (whole windows, in document order)."""
    max_heldout_tokens: int | None = 50_000
    """Cap on tokens cached from a held-out (evaluation) set."""

    def validate(self, where: str) -> None:
        require_at_least(where, 2, context_length=self.context_length)
        require_at_least(
            where,
            1,
            batch_size=self.batch_size,
            shard_tokens=self.shard_tokens,
            max_train_tokens=self.max_train_tokens,
            max_heldout_tokens=self.max_heldout_tokens,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "activations") -> ActivationConfig:
        return from_mapping(cls, data, where)


@dataclass
class Window:
    doc: int
    start: int
    ids: list[int]


def make_windows(token_lists: list[list[int]], context_length: int, max_tokens: int | None) -> list[Window]:
    """Windows in document order, whole windows only, stopping before ``max_tokens``."""
    chunk = context_length - 1
    windows: list[Window] = []
    total = 0
    for doc, ids in enumerate(token_lists):
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            if max_tokens is not None and total + len(piece) > max_tokens:
                return windows
            windows.append(Window(doc, start, piece))
            total += len(piece)
    return windows


def tokenize_windows(tokenizer: Any, texts: list[str], context_length: int, max_tokens: int | None) -> list[Window]:
    """Tokenize documents in chunks, only as far as ``max_tokens`` needs, and cut windows."""
    token_lists: list[list[int]] = []
    total, chunk = 0, 256
    for start in range(0, len(texts), chunk):
        ids = tokenizer(texts[start : start + chunk], add_special_tokens=False)["input_ids"]
        token_lists.extend(ids)
        total += sum(len(x) for x in ids)
        if max_tokens is not None and total > max_tokens:
            break
    return make_windows(token_lists, context_length, max_tokens)


def batches_by_length(windows: list[Window], batch_size: int) -> list[list[Window]]:
    order = sorted(range(len(windows)), key=lambda i: (-len(windows[i].ids), i))
    return [[windows[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def select_documents(table: str | Path, split: str, exclude_tables: list[str | Path]) -> tuple[list[str], list[str]]:
    """``(doc_ids, texts)`` of one split (``all`` for every row) minus the held-out
    documents of ``exclude_tables``."""
    import pyarrow.parquet as pq

    from ssae_steps.corpus import heldout_ids

    if not Path(table).exists():
        raise ConfigError(f"file {table}: table not found")
    data = pq.read_table(table, columns=["doc_id", "text", "split"]).to_pydict()
    blocked: set[str] = set()
    for other in exclude_tables:
        blocked |= heldout_ids(other)
    keep = [
        i
        for i, (d, s) in enumerate(zip(data["doc_id"], data["split"], strict=True))
        if (split == "all" or s == split) and d not in blocked
    ]
    if not keep:
        raise ConfigError(f"file {table}: no documents in split {split!r}")
    return [data["doc_id"][i] for i in keep], [data["text"][i] for i in keep]


class _RunningStats:
    def __init__(self, dim: int) -> None:
        self.n = 0
        self.sum = np.zeros(dim)
        self.sumsq = np.zeros(dim)
        self.norm_sum = 0.0
        self.norm_sumsq = 0.0
        self.norm_max = 0.0

    def add(self, x: np.ndarray) -> None:
        # Called per batch (a few thousand rows): float32 partial sums, float64 totals.
        x = x.astype(np.float32, copy=False)
        norms = np.linalg.norm(x, axis=1)
        self.n += len(x)
        self.sum += x.sum(0)
        self.sumsq += np.einsum("ij,ij->j", x, x)
        self.norm_sum += float(norms.sum())
        self.norm_sumsq += float((norms * norms).sum())
        self.norm_max = max(self.norm_max, float(norms.max(initial=0.0)))

    def summary(self) -> dict[str, Any]:
        mean = self.sum / max(self.n, 1)
        var = np.maximum(self.sumsq / max(self.n, 1) - mean * mean, 0.0)
        norm_mean = self.norm_sum / max(self.n, 1)
        return {
            "mean": mean.tolist(),
            "std": np.sqrt(var).tolist(),
            "norm_mean": norm_mean,
            "norm_std": math.sqrt(max(self.norm_sumsq / max(self.n, 1) - norm_mean**2, 0.0)),
            "norm_max": self.norm_max,
            # Total variance sum_i Var(x_i): the FVU denominator per token.
            "total_variance": float(var.sum()),
        }


def _shard_table(doc_ids: list[str], positions: np.ndarray, tokens: np.ndarray, acts: np.ndarray, run_key: str) -> Any:
    import pyarrow as pa

    dim = acts.shape[1]
    activation = pa.FixedSizeListArray.from_arrays(pa.array(acts.reshape(-1)), dim)
    table = pa.table(
        {
            "doc_id": pa.array(doc_ids, pa.string()),
            "position": pa.array(positions, pa.int32()),
            "token_id": pa.array(tokens, pa.int32()),
            "activation": activation,
        }
    )
    return table.replace_schema_metadata({"ssae.run_key": run_key})


def _forward_batch(
    model: Any, batch: list[Window], doc_ids: list[str], bos: int | None, pad: int, layer: int
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``(doc_ids, positions, token_ids, activations)`` of one batch of windows,
    BOS prepended for the model and dropped from the rows with the right padding."""
    from ssae_steps import model as model_module  # looked up per call, so tests can intercept it

    offset = 1 if bos is not None else 0
    input_ids, mask = model_module.padded_batch([w.ids for w in batch], bos, pad)
    device = next(model.parameters()).device
    hidden = model_module.residual_stream(model, input_ids.to(device), mask.to(device), layer).float().cpu().numpy()
    acts = np.concatenate([hidden[r, offset : offset + len(w.ids)] for r, w in enumerate(batch)])
    ids = [doc_ids[w.doc] for w in batch for _ in w.ids]
    pos = np.concatenate([np.arange(w.start, w.start + len(w.ids)) for w in batch])
    tok = np.concatenate([np.asarray(w.ids) for w in batch])
    return ids, pos, tok, acts


def _complete_shards(shard_dir: Path, run_key: str, shard_tokens: int) -> int:
    """Number of leading full shards written by this same run; clears anything else."""
    import pyarrow.parquet as pq

    count = 0
    while (path := shard_dir / SHARD_PATTERN.format(count)).exists():
        meta = pq.read_metadata(path)
        key = (meta.schema.to_arrow_schema().metadata or {}).get(b"ssae.run_key", b"").decode()
        if key != run_key or meta.num_rows != shard_tokens:
            break
        count += 1
    for stale in shard_dir.glob("shard-*.parquet"):
        if int(stale.stem.split("-")[1]) >= count:
            stale.unlink()
    return count


def cache_activations(
    cfg: ActivationConfig,
    model_dir: str | Path,
    hook_layer: int,
    table: str | Path,
    split: str,
    manifest: str | Path,
    exclude_heldout_of: list[str | Path] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Cache the activations of ``table``'s ``split`` documents; return the manifest."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from ssae_steps.model import load_model

    started = time.time()
    manifest = Path(manifest)
    shard_dir = manifest.parent / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(manifest)
    doc_ids, texts = select_documents(table, split, exclude_heldout_of or [])
    model, tokenizer = load_model(model_dir, resolve_device(device))
    dim = int(model.config.get_text_config().hidden_size)
    max_tokens = cfg.max_heldout_tokens if split == "heldout" else cfg.max_train_tokens
    windows = tokenize_windows(tokenizer, texts, cfg.context_length, max_tokens)
    if not windows:
        raise ConfigError(f"file {table}: split {split!r} has no tokens")
    key_src = json.dumps([to_mapping(cfg), str(model_dir), hook_layer, split, doc_ids, len(windows)])
    run_key = hashlib.sha1(key_src.encode()).hexdigest()
    done = _complete_shards(shard_dir, run_key, cfg.shard_tokens)
    skip = done * cfg.shard_tokens
    if done:
        log.info("resuming after %d complete shards (%d tokens)", done, skip)

    stats = _RunningStats(dim)
    for i in range(done):
        column = pq.read_table(shard_dir / SHARD_PATTERN.format(i), columns=["activation"])["activation"]
        values = column.combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        for start in range(0, len(values), 4096):
            stats.add(values[start : start + 4096])
    store = np.float16 if cfg.dtype == "float16" else np.float32
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    buffer: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = []
    buffered = 0
    shard_index = done
    emitted = 0
    shards = [{"file": SHARD_PATTERN.format(i), "rows": cfg.shard_tokens} for i in range(done)]
    # Shards are written by one background thread (Arrow releases the GIL) while the next
    # batches run; at most one write is in flight, bounding memory.
    writer = ThreadPoolExecutor(max_workers=1)
    pending: list[Future[None]] = []

    def write_shard(path: Path, table: Any) -> None:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression=SHARD_COMPRESSION)

    def flush(final: bool) -> None:
        nonlocal buffer, buffered, shard_index
        while buffered >= cfg.shard_tokens or (final and buffered):
            ids = [d for b in buffer for d in b[0]]
            pos, tok, act = (np.concatenate([b[k] for b in buffer]) for k in (1, 2, 3))
            n = min(cfg.shard_tokens, buffered)
            name = SHARD_PATTERN.format(shard_index)
            while pending:
                pending.pop().result()
            table = _shard_table(ids[:n], pos[:n], tok[:n], act[:n], run_key)
            pending.append(writer.submit(write_shard, shard_dir / name, table))
            shards.append({"file": name, "rows": n})
            shard_index += 1
            buffer = [(ids[n:], pos[n:], tok[n:], act[n:])] if buffered > n else []
            buffered -= n

    progress = tqdm(
        batches_by_length(windows, cfg.batch_size), desc="forward", unit="batch", file=sys.stderr, mininterval=5
    )
    try:
        for batch in progress:
            rows = sum(len(w.ids) for w in batch)
            if emitted + rows <= skip:
                emitted += rows
                continue
            ids, pos, tok, acts = _forward_batch(model, batch, doc_ids, bos, pad, hook_layer)
            drop = max(0, skip - emitted)
            emitted += rows
            largest = float(np.abs(acts).max())
            if not math.isfinite(largest):
                raise FloatingPointError("non-finite activations from the model; check the model dtype")
            if store is np.float16 and largest > np.finfo(np.float16).max:
                raise ConfigError("activations.dtype: float16 overflows on this model's activations; use float32")
            stats.add(acts[drop:])
            buffer.append((ids[drop:], pos[drop:], tok[drop:], acts[drop:].astype(store)))
            buffered += rows - drop
            flush(final=False)
        flush(final=True)
        while pending:
            pending.pop().result()
    finally:
        # On a crash, let the write in flight finish: a shard is complete or absent.
        writer.shutdown(wait=True)

    total = sum(s["rows"] for s in shards)
    info = {
        "config": to_mapping(cfg),
        "model_dir": str(model_dir),
        "hook_layer": hook_layer,
        "hook_name": f"blocks.{hook_layer}.hook_resid_post",
        "d_model": dim,
        "dtype": cfg.dtype,
        "table": str(table),
        "split": split,
        "documents": len({doc_ids[w.doc] for w in windows}),
        "windows": len(windows),
        "tokens": total,
        "shards": shards,
        "run_key": run_key,
        "stats": stats.summary(),
        "seconds": round(time.time() - started, 2),
    }
    info["tokens_per_second"] = round(total / max(info["seconds"], 1e-9), 1)
    write_json(manifest, info)
    log.info("cached %d tokens in %d shards (%.0f tokens/s)", total, len(shards), info["tokens_per_second"])
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="JSON object of the activations config")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--hook-layer", type=int, required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--split", required=True, choices=["train", "heldout", "all"])
    parser.add_argument("--exclude-heldout-of", nargs="*", default=[])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args(argv)

    def body() -> None:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        cfg = ActivationConfig.from_dict(json.loads(args.params))
        cache_activations(
            cfg,
            args.model_dir,
            args.hook_layer,
            args.table,
            args.split,
            args.manifest,
            args.exclude_heldout_of,
            args.device,
        )

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())

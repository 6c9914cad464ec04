"""Activation cache: residual-stream activations of the foundation model at the hook
point, one row per token, in Arrow IPC shards plus a ``manifest.json``
(:mod:`ssae_steps.activations.shards` has the format).

Caps keep the corpus mix: documents are taken in a seeded random order until the token
cap, so a capped set is a uniform sample of its documents (the shipped Wikipedia data is
grouped by topic; a cap in table order would keep only the first topics). The manifest
reports the mix by ``source`` and by each label column (e.g. ``topic``), beside the mix of
the whole uncapped split.

Documents are cut into windows of at most ``context_length`` tokens (BOS + up to
``context_length - 1`` document tokens). Batches hold windows of one length (little
padding) drawn at random, and are run and written in a seeded random order, so every
shard - and every record batch of it - is a random sample of the set, while each
window's rows stay contiguous. The forward pass stops after the hooked block. BOS and pad
positions are dropped. Row columns: ``doc_id``, ``position`` (token index within its
document), ``token_id`` and ``activation`` (fixed-size list of ``d_model`` float16/float32).

Shards are written atomically and carry a run key: a hash of the config, the seed, the
*content* of the model directory (weights and tokenizer), the code of this stage and the
selected documents. A rerun after a crash keeps the complete shards of the same run and
resumes after them (no token is written twice); any other change re-caches. The manifest
- the one output Snakemake tracks, written last - records each shard's row count, size
and BLAKE3 digest (taken right after the shard is written), which
:class:`~ssae_steps.activations.reader.ActivationShardReader` checks.

Parts (scatter/gather, ``parts`` > 1 in the workflow): ``part = (i, n)`` writes only part i
of the set's shards, plus a part manifest; :mod:`ssae_steps.activations.gather` has the
scheme and writes the set's manifest from the parts'.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from ssae_steps.activations.config import ActivationConfig
from ssae_steps.activations.gather import part_shards
from ssae_steps.activations.shards import Shard, complete_shards
from ssae_steps.activations.writer import ShardWriter
from ssae_steps.cli import run
from ssae_steps.config import ConfigError, resolve_device, to_mapping
from ssae_steps.files import code_fingerprint, remove_stale_temporaries, tree_digest, write_json

log = logging.getLogger("ssae.activations")


@dataclass
class Window:
    doc: int
    start: int
    ids: list[int]


def make_windows(
    token_lists: list[list[int]], context_length: int, max_tokens: int | None, order: list[int] | None = None
) -> list[Window]:
    """Windows of the documents in ``order`` (default: table order), whole windows only,
    stopping before ``max_tokens``."""
    chunk = context_length - 1
    windows: list[Window] = []
    total = 0
    for doc in order if order is not None else range(len(token_lists)):
        ids = token_lists[doc]
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            if max_tokens is not None and total + len(piece) > max_tokens:
                return windows
            windows.append(Window(doc, start, piece))
            total += len(piece)
    return windows


def tokenize_windows(
    tokenizer: Any, texts: list[str], context_length: int, max_tokens: int | None, seed: int = 0
) -> list[Window]:
    """Windows of the documents in a seeded random order up to ``max_tokens``: a uniform
    sample of documents, whatever order the table is in. Only the documents the cap needs
    are tokenized."""
    order = np.random.default_rng(seed).permutation(len(texts)).tolist()
    token_lists: list[list[int]] = [[] for _ in texts]
    total, chunk = 0, 256
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        ids = tokenizer([texts[i] for i in part], add_special_tokens=False)["input_ids"]
        for i, doc_ids in zip(part, ids, strict=True):
            token_lists[i] = doc_ids
        total += sum(len(x) for x in ids)
        if max_tokens is not None and total > max_tokens:
            order = order[: start + chunk]
            break
    return make_windows(token_lists, context_length, max_tokens, order)


def batches_in_random_order(windows: list[Window], batch_size: int, seed: int = 0) -> list[list[Window]]:
    """Batches of equal-length windows (little padding), each a random draw among the
    windows of its length, in a random order: the write order of the shards."""
    rng = np.random.default_rng([seed, 1])
    tiebreak = rng.random(len(windows))
    order = sorted(range(len(windows)), key=lambda i: (-len(windows[i].ids), tiebreak[i]))
    batches = [[windows[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


MIX_MAX_VALUES = 50  # label columns with more distinct values (titles) say nothing as a mix


def corpus_mix(labels: dict[str, list[Any]], weights: list[float] | np.ndarray) -> dict[str, dict[str, float]]:
    """Share of ``weights`` (tokens or characters per document) by each label column's values
    (``(none)`` where a document has no value)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = max(float(weights.sum()), 1e-12)
    mix: dict[str, dict[str, float]] = {}
    for column, values in labels.items():
        keys = ["(none)" if v is None else str(v) for v in values]
        shares: dict[str, float] = collections.defaultdict(float)
        for key, weight in zip(keys, weights, strict=True):
            shares[key] += weight / total
        mix[column] = {k: round(v, 5) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}
    return mix


def select_documents(
    table: str | Path, split: str, exclude_tables: list[str | Path]
) -> tuple[list[str], list[str], dict[str, list[Any]]]:
    """``(doc_ids, texts, labels)`` of one split (``all`` for every row) minus the held-out
    documents of ``exclude_tables``; ``labels`` maps ``source`` and each string label
    column to its per-document values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ssae_steps.data.corpus import heldout_ids

    if not Path(table).exists():
        raise ConfigError(f"file {table}: table not found")
    schema = pq.read_schema(table)
    label_columns = [
        f.name
        for f in schema
        if f.name not in ("doc_id", "text", "split")
        and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    ]
    data = pq.read_table(table, columns=["doc_id", "text", "split", *label_columns]).to_pydict()
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
    labels = {c: [data[c][i] for i in keep] for c in label_columns}
    return [data["doc_id"][i] for i in keep], [data["text"][i] for i in keep], labels


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


def cache_activations(
    cfg: ActivationConfig,
    model_dir: str | Path,
    hook_layer: int,
    table: str | Path,
    split: str,
    manifest: str | Path,
    exclude_heldout_of: list[str | Path] | None = None,
    device: str = "cpu",
    seed: int = 0,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Cache the activations of ``table``'s ``split`` documents; return the manifest.
    ``seed`` fixes the document sample under the cap and the write order. ``part = (i,
    n)``: write only part i of n of the shards (into ``manifest``'s grandparent's
    ``shards/``; ``manifest`` is then the part's, e.g. ``SET/parts/0-of-2.json``)."""
    from tqdm import tqdm

    from ssae_steps.model import load_model

    started = time.time()
    manifest = Path(manifest)
    shard_dir = (manifest.parent.parent if part else manifest.parent) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(manifest)
    doc_ids, texts, labels = select_documents(table, split, exclude_heldout_of or [])
    labels = {c: v for c, v in labels.items() if len(set(v)) <= MIX_MAX_VALUES}
    model_digest = tree_digest(model_dir)
    model, tokenizer = load_model(model_dir, resolve_device(device))
    dim = int(model.config.get_text_config().hidden_size)
    max_tokens = cfg.max_heldout_tokens if split == "heldout" else cfg.max_train_tokens
    windows = tokenize_windows(tokenizer, texts, cfg.context_length, max_tokens, seed)
    if not windows:
        raise ConfigError(f"file {table}: split {split!r} has no tokens")
    code = code_fingerprint("ssae_steps.activations.cache")
    # Not `parts`: however many jobs cache a set, its shards are the same.
    key_cfg = {k: v for k, v in to_mapping(cfg).items() if k != "parts"}
    key_src = json.dumps([key_cfg, model_digest, code, hook_layer, split, seed, doc_ids, len(windows)])
    run_key = hashlib.sha1(key_src.encode()).hexdigest()
    total_rows = sum(len(w.ids) for w in windows)
    first, last = part_shards(total_rows, cfg.shard_tokens, *part) if part else (0, None)
    kept = complete_shards(shard_dir, run_key, cfg.shard_tokens, first, last)
    done = len(kept)
    skip = (first + done) * cfg.shard_tokens
    stop = total_rows if last is None else min(total_rows, last * cfg.shard_tokens)
    if done:
        log.info("resuming after %d complete shards (%d tokens)", done, done * cfg.shard_tokens)

    store = np.float16 if cfg.dtype == "float16" else np.float32
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    emitted = 0
    progress = tqdm(
        batches_in_random_order(windows, cfg.batch_size, seed),
        desc="forward",
        unit="batch",
        file=sys.stderr,
        mininterval=5,
    )
    with ShardWriter(shard_dir, run_key, dim, cfg.dtype, cfg.shard_tokens, first_index=first + done) as writer:
        for entry in kept:
            values = Shard(shard_dir / entry["file"]).columns(["activation"])["activation"]
            for start in range(0, len(values), 4096):
                writer.stats.add(values[start : start + 4096])
        for batch in progress:
            if emitted >= stop:
                break  # the rest belongs to later parts
            rows = sum(len(w.ids) for w in batch)
            if emitted + rows <= skip:
                emitted += rows
                continue
            ids, pos, tok, acts = _forward_batch(model, batch, doc_ids, bos, pad, hook_layer)
            drop = max(0, skip - emitted)
            keep = min(rows, stop - emitted)  # rows past this part's last shard: the next part's
            emitted += rows
            ids, pos, tok, acts = ids[:keep], pos[:keep], tok[:keep], acts[:keep]
            largest = float(np.abs(acts).max())
            if not math.isfinite(largest):
                raise FloatingPointError("non-finite activations from the model; check the model dtype")
            if store is np.float16 and largest > np.finfo(np.float16).max:
                raise ConfigError("activations.dtype: float16 overflows on this model's activations; use float32")
            writer.add(ids[drop:], pos[drop:], tok[drop:], acts[drop:])
        shards = kept + writer.close()
    stats = writer.stats

    total = sum(s["rows"] for s in shards)
    window_tokens = collections.Counter()
    for w in windows:
        window_tokens[w.doc] += len(w.ids)
    sampled = sorted(window_tokens)
    sampled_labels = {c: [v[i] for i in sampled] for c, v in labels.items()}
    info: dict[str, Any] = {
        "config": key_cfg,
        "seed": seed,
        "model_dir": str(model_dir),
        "model_digest": model_digest,
        "code": code,
        "hook_layer": hook_layer,
        "hook_name": f"blocks.{hook_layer}.hook_resid_post",
        "d_model": dim,
        "dtype": cfg.dtype,
        "table": str(table),
        "split": split,
        "documents": len(sampled),
        "split_documents": len(doc_ids),
        "windows": len(windows),
        "tokens": total,
        # Shares by source and label. Documents are sampled uniformly, so the set's document
        # shares match the whole split's up to sampling noise; tokens per document differ
        # by source, so token shares are reported for the set and character shares for the split.
        "mix": {
            "documents": corpus_mix(sampled_labels, np.ones(len(sampled))),
            "tokens": corpus_mix(sampled_labels, [window_tokens[i] for i in sampled]),
        },
        "split_mix": {
            "documents": corpus_mix(labels, np.ones(len(doc_ids))),
            "characters": corpus_mix(labels, [len(t) for t in texts]),
        },
        "shards": shards,
        "run_key": run_key,
        "stats": stats.summary(),
        "seconds": round(time.time() - started, 2),
    }
    info["tokens_per_second"] = round(total / max(info["seconds"], 1e-9), 1)
    if part:
        info |= {"part": part[0], "parts": part[1], "shard_range": [first, last], "raw_stats": stats.raw()}
    write_json(manifest, info)
    log.info("cached %d tokens in %d shards (%.0f tokens/s)", total, len(shards), info["tokens_per_second"])
    return info


def cache_activations_command(
    params: Annotated[ActivationConfig, "the activations config"],
    model_dir: Path,
    hook_layer: int,
    table: Path,
    split: Literal["train", "heldout", "all"],
    manifest: Path,
    exclude_heldout_of: list[Path] | None = None,
    seed: Annotated[int, "document sample under the cap and write order"] = 0,
    part: Annotated[tuple[int, int] | None, "write part I of N (manifest: the part's)"] = None,
    device: str = "auto",
) -> None:
    """Cache the foundation model's activations at the hook point for a split of a table."""
    cache_activations(params, model_dir, hook_layer, table, split, manifest, exclude_heldout_of, device, seed, part)


def main(argv: list[str] | None = None) -> int:
    return run(cache_activations_command, argv)


if __name__ == "__main__":
    sys.exit(main())

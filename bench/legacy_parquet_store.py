"""The activation store before issue 30, kept only so ``bench_store.py`` can measure it in
the same run as today's: Parquet shards with the activation as a fixed-size list column,
row groups of 4,096 rows, SHA-256 of each shard after writing, and a reader that hashes
every shard when it opens a set and decodes row groups in a seeded random order. The code
is the shipped code of commit a5d820c (``activations.py`` and ``activation_reader.py``),
reduced to what the benchmark calls; nothing in the workflow imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ssae_steps.activations.writer import RunningStats
from ssae_steps.files import atomic_path, file_sha256

SHARD_PATTERN = "shard-{:05d}.parquet"
SHARD_COMPRESSION = {"doc_id": "zstd", "position": "zstd", "token_id": "zstd", "activation": "none"}
ROW_GROUP_ROWS = 4096


def _shard_table(doc_ids: list[str], positions: np.ndarray, tokens: np.ndarray, acts: np.ndarray, run_key: str) -> Any:
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


class LegacyShardWriter:
    """The old ``cache_activations`` flush loop: statistics on the float32 rows, a float16
    copy buffered, each full shard encoded and written (then hashed) on one background
    thread, one write in flight."""

    def __init__(self, shard_dir: Path, run_key: str, d_model: int, shard_rows: int = 65_536) -> None:
        self.shard_dir, self.run_key, self.shard_rows = shard_dir, run_key, shard_rows
        shard_dir.mkdir(parents=True, exist_ok=True)
        self.stats = RunningStats(d_model)
        self.shards: list[dict[str, Any]] = []
        self.buffer: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = []
        self.buffered = 0
        self.index = 0
        self.writer = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future[None]] = []

    def _write(self, path: Path, table: Any, entry: dict[str, Any]) -> None:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression=SHARD_COMPRESSION, row_group_size=ROW_GROUP_ROWS)
            entry["sha256"] = file_sha256(tmp)

    def add(self, ids: list[str], pos: np.ndarray, tok: np.ndarray, acts: np.ndarray) -> None:
        self.stats.add(acts)
        self.buffer.append((ids, pos, tok, acts.astype(np.float16)))
        self.buffered += len(acts)
        self._flush(False)

    def _flush(self, final: bool) -> None:
        while self.buffered >= self.shard_rows or (final and self.buffered):
            ids = [d for b in self.buffer for d in b[0]]
            pos, tok, act = (np.concatenate([b[k] for b in self.buffer]) for k in (1, 2, 3))
            n = min(self.shard_rows, self.buffered)
            name = SHARD_PATTERN.format(self.index)
            while self.pending:
                self.pending.pop().result()
            table = _shard_table(ids[:n], pos[:n], tok[:n], act[:n], self.run_key)
            entry: dict[str, Any] = {"file": name, "rows": n}
            self.pending.append(self.writer.submit(self._write, self.shard_dir / name, table, entry))
            self.shards.append(entry)
            self.index += 1
            self.buffer = [(ids[n:], pos[n:], tok[n:], act[n:])] if self.buffered > n else []
            self.buffered -= n

    def close(self) -> list[dict[str, Any]]:
        self._flush(True)
        while self.pending:
            self.pending.pop().result()
        self.writer.shutdown(wait=True)
        return self.shards


def _read(file: Path, columns: list[str], d_model: int, row_group: int) -> dict[str, np.ndarray]:
    with pq.ParquetFile(file) as parquet:
        table = parquet.read_row_group(row_group, columns)
    out = {}
    for name in columns:
        column = table[name].combine_chunks()
        if name == "activation":
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), d_model)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def legacy_epoch(manifest: Path, batch_size: int, seed: int = 0, buffer_rows: int = 65_536) -> Iterator[Any]:
    """Open a set as the old reader did (SHA-256 of every shard, footers, run keys) and
    yield one shuffled epoch of float32 tensors."""
    import torch

    info = json.loads(manifest.read_text())
    shard_dir = manifest.parent / "shards"
    for entry in info["shards"]:
        if file_sha256(shard_dir / entry["file"]) != entry["sha256"]:
            raise RuntimeError(f"{entry['file']}: checksum mismatch")
        with pq.ParquetFile(shard_dir / entry["file"]) as parquet:
            assert parquet.metadata.num_rows == entry["rows"]
            assert (parquet.schema_arrow.metadata or {}).get(b"ssae.run_key", b"").decode() == info["run_key"]
    groups = []
    for entry in info["shards"]:
        with pq.ParquetFile(shard_dir / entry["file"]) as parquet:
            groups += [(shard_dir / entry["file"], i) for i in range(parquet.metadata.num_row_groups)]
    rng = np.random.default_rng([seed, 0])
    groups = [groups[i] for i in rng.permutation(len(groups))]
    parts: list[np.ndarray] = []
    held = 0
    for n, (file, group) in enumerate(groups):
        parts.append(_read(file, ["activation"], info["d_model"], group)["activation"])
        held += len(parts[-1])
        if held < buffer_rows and n + 1 < len(groups):
            continue
        rows, parts = np.concatenate(parts), []
        order = rng.permutation(held)
        full = held - held % batch_size
        for start in range(0, full, batch_size):
            yield torch.from_numpy(rows[order[start : start + batch_size]].astype(np.float32))
        parts, held = [rows[order[full:]]], held - full
    if held:
        yield torch.from_numpy(parts[0].astype(np.float32))

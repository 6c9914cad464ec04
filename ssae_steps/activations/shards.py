"""Activation shards on disk: Arrow IPC files that readers memory-map.

A shard (``shard-NNNNN.arrow``) is an uncompressed Arrow IPC *file* of record batches of
``batch_rows`` rows (the reader's unit of random access) with columns ``doc_id`` (string),
``position`` and ``token_id`` (int32) and ``activation`` (a non-nullable fixed-size list
of ``d_model`` float16/float32); the set's run key is in the schema metadata. Reading a
column is a view of the mapped file: no value is decoded. A shard opens with pyarrow
alone (``pa.ipc.open_file``), and a set loads into Hugging Face ``datasets`` with
``load_dataset("arrow", data_files=[...])`` (``Dataset.from_file`` reads only Arrow's
stream format, not these files).

Integrity. Each shard is hashed once, right after it is written, from the page cache
(BLAKE3: a cryptographic hash at ~2.5 GB/s on one core of the development machine, about
4x its SHA-256 with the CPU's SHA instructions, so hashing never holds a writer back).
The digest goes into the set's manifest and, with the file's size, mtime, inode and
ctime at that moment, into a stamp beside the shard (``shard-NNNNN.arrow.verified``).
Opening a set then checks only what is cheap - size, the Arrow footer, row count, run key
- plus the stamp: a file whose stat still matches a stamp of the manifest's digest is the
file that was hashed (ctime cannot be set by any user tool; replacing or editing a file
changes it). A shard without a matching stamp (copied, touched, replaced) is hashed again
before use and refused, by name, when its digest differs. ``verify`` hashes every byte.

Rows are turned into shards by :class:`~ssae_steps.activations.writer.ShardWriter`; this
module is the format itself: writing one shard, opening one, and checking a set's shards
against its manifest.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ssae_steps.config import ConfigError
from ssae_steps.files import atomic_path

SHARD_PATTERN = "shard-{:05d}.arrow"
STAMP_SUFFIX = ".verified"
RUN_KEY = b"ssae.run_key"
HASH = "blake3"
# Record batches are the reader's unit of random access: small enough that a shuffle buffer
# mixes many of them from every shard, large enough to read efficiently.
BATCH_ROWS = 4096
COLUMNS = ("activation", "doc_id", "position", "token_id")


class ShardIntegrityError(ConfigError):
    """A cached activation set is unusable: a shard is missing, damaged or from another run."""


def damaged(file: Path, problem: str) -> ShardIntegrityError:
    return ShardIntegrityError(f"{file}: {problem}; re-run the activation stage")


def _hasher() -> Any:
    from blake3 import blake3

    return blake3()


def file_digest(path: str | os.PathLike[str]) -> str:
    """BLAKE3 of a file's bytes (hex), read through a memory map."""
    digest = _hasher()
    if os.path.getsize(path):
        digest.update_mmap(str(path))
    return digest.hexdigest()


def shard_schema(d_model: int, dtype: str, run_key: str) -> pa.Schema:
    value = pa.field("item", pa.float16() if dtype == "float16" else pa.float32(), nullable=False)
    return pa.schema(
        [
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("position", pa.int32(), nullable=False),
            pa.field("token_id", pa.int32(), nullable=False),
            pa.field("activation", pa.list_(value, d_model), nullable=False),
        ],
        metadata={RUN_KEY: run_key.encode()},
    )


def _record_batch(
    schema: pa.Schema, doc_ids: Sequence[str], positions: np.ndarray, tokens: np.ndarray, acts: np.ndarray
) -> pa.RecordBatch:
    value_type = schema.field("activation").type
    flat = pa.array(np.ascontiguousarray(acts).reshape(-1), type=value_type.value_type)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(doc_ids, pa.string()),
            pa.array(np.asarray(positions, np.int32)),
            pa.array(np.asarray(tokens, np.int32)),
            pa.FixedSizeListArray.from_arrays(flat, type=value_type),
        ],
        schema=schema,
    )


def _stat_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def stamp_path(shard: Path) -> Path:
    return shard.with_name(shard.name + STAMP_SUFFIX)


def write_stamp(shard: Path, digest: str, hashed: dict[str, int] | None = None) -> None:
    """Record that ``shard``, as it is now on disk, has ``digest``; ``hashed``: its stat
    when the hash began - if the file changed since, nothing is stamped. Best effort: a set
    on a read-only disk is simply hashed again by its next reader."""
    try:
        now = _stat_stamp(shard)
        if hashed is not None and hashed != now:
            return
        with atomic_path(stamp_path(shard)) as tmp:
            tmp.write_text(json.dumps({HASH: digest, **now}))
    except OSError:
        pass


def stamp_matches(shard: Path, digest: str) -> bool:
    """Whether ``shard`` is, byte for byte, the file that was hashed to ``digest``."""
    try:
        stamp = json.loads(stamp_path(shard).read_text())
        return stamp.get(HASH) == digest and all(stamp.get(k) == v for k, v in _stat_stamp(shard).items())
    except (OSError, ValueError, AttributeError):
        return False


def write_shard(
    path: Path,
    schema: pa.Schema,
    doc_ids: Sequence[str],
    positions: np.ndarray,
    tokens: np.ndarray,
    acts: np.ndarray,
    batch_rows: int = BATCH_ROWS,
) -> dict[str, Any]:
    """Write one shard atomically and hash it; stamp it. Returns its manifest entry
    ``{"file", "rows", "bytes", "blake3"}``. The hash reads the file just written back from
    the page cache (Arrow writes it natively; a Python sink that hashed on the way would
    copy every buffer into Python objects, several times slower: measured)."""
    rows = len(acts)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for start in range(0, rows, batch_rows):
                rows_here = slice(start, start + batch_rows)
                columns = (doc_ids[rows_here], positions[rows_here], tokens[rows_here], acts[rows_here])
                writer.write_batch(_record_batch(schema, *columns))
        digest = file_digest(tmp)
        size = tmp.stat().st_size
    write_stamp(path, digest)
    return {"file": path.name, "rows": rows, "bytes": size, HASH: digest}


class Shard:
    """One shard, memory-mapped: its record batches are views of the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        except (pa.ArrowException, OSError) as exc:
            raise damaged(path, f"unreadable Arrow IPC file ({exc})") from exc

    @property
    def run_key(self) -> str:
        return (self._reader.schema.metadata or {}).get(RUN_KEY, b"").decode()

    @property
    def schema(self) -> pa.Schema:
        return self._reader.schema

    def record_batches(self) -> list[pa.RecordBatch]:
        """The shard's record batches, in order: views of the mapped file."""
        return [self._reader.get_batch(i) for i in range(self._reader.num_record_batches)]

    def batch_rows(self) -> list[int]:
        """Rows of each record batch (from the batches' headers; no values are read)."""
        return [batch.num_rows for batch in self.record_batches()]

    def columns(self, names: Sequence[str], batch: int | None = None) -> dict[str, np.ndarray]:
        """Columns of one record batch (or the whole shard) as numpy; ``activation`` is a
        zero-copy [rows, d_model] view of the mapped file, the small columns are decoded."""
        batches = [self._reader.get_batch(batch)] if batch is not None else self.record_batches()
        out = {}
        for name in names:
            parts = [column_numpy(b.column(name), name) for b in batches]
            out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out


def column_numpy(column: pa.Array, name: str) -> np.ndarray:
    if name == "activation":
        flat = column.flatten()
        return flat.to_numpy(zero_copy_only=True).reshape(len(column), column.type.list_size)
    if name == "doc_id":
        return column.to_numpy(zero_copy_only=False)
    return column.to_numpy(zero_copy_only=True)


def check_shard(file: Path, entry: dict[str, Any], run_key: str, full: bool = False) -> list[int]:
    """Check one shard against its manifest entry; return its record batches' row counts.
    ``full``: hash every byte whatever the stamp says (``verify``)."""
    if not file.is_file():
        raise damaged(file, "missing")
    if HASH not in entry or "bytes" not in entry:
        raise damaged(file, f"no {HASH} or size in the manifest (written by an older ssae; re-cache)")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise damaged(file, f"{size} bytes, the manifest says {entry['bytes']} (truncated or replaced)")
    if full or not stamp_matches(file, entry[HASH]):
        # Before the Arrow parser sees it: a damaged file is named by its checksum.
        before = _stat_stamp(file)
        if file_digest(file) != entry[HASH]:
            raise damaged(file, "checksum mismatch (modified or replaced after caching)")
        write_stamp(file, entry[HASH], hashed=before)
    shard = Shard(file)
    rows = shard.batch_rows()
    if sum(rows) != entry["rows"]:
        raise damaged(file, f"{sum(rows)} rows, the manifest says {entry['rows']}")
    if shard.run_key != run_key:
        raise damaged(file, f"run key {shard.run_key!r} is not the manifest's {run_key!r} (a shard of another set)")
    return rows


def read_manifest(manifest: str | Path) -> dict[str, Any]:
    path = Path(manifest).absolute()
    try:
        info = json.loads(path.read_text())
        _ = info["shards"], info["tokens"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardIntegrityError(f"{path}: unreadable activation manifest ({exc!r})") from exc
    if info.get("run_key") is None:
        raise ShardIntegrityError(f"{path}: no run_key (written by an older ssae); re-run the activation stage")
    return info


def check_set(manifest: str | Path, full: bool = False) -> tuple[dict[str, Any], list[list[int]]]:
    """Check every shard of a set (see :func:`check_shard`); the manifest and each shard's
    record-batch row counts. Raises :class:`ShardIntegrityError` naming the first bad file."""
    path = Path(manifest).absolute()
    info = read_manifest(path)
    rows = [check_shard(path.parent / "shards" / e["file"], e, info["run_key"], full) for e in info["shards"]]
    total = sum(int(e["rows"]) for e in info["shards"])
    if total != info["tokens"]:
        raise ShardIntegrityError(f"{path}: shards hold {total} rows, the manifest says tokens={info['tokens']}")
    return info, rows


def complete_shards(shard_dir: Path, run_key: str, shard_rows: int, first: int = 0, last: int | None = None) -> list:
    """Manifest entries of the full shards from ``first`` on written by this same run
    (resume after a kill); clears the rest of ``[first, last)`` and any old Parquet shard
    in it (a part never touches another part's shards). A shard is kept only when its
    stamp vouches for its bytes."""
    kept: list[dict[str, Any]] = []
    while last is None or first + len(kept) < last:
        path = shard_dir / SHARD_PATTERN.format(first + len(kept))
        try:
            stamp = json.loads(stamp_path(path).read_text())
            if not stamp_matches(path, stamp[HASH]):
                break
            shard = Shard(path)
            if shard.run_key != run_key or sum(shard.batch_rows()) != shard_rows:
                break
        except (OSError, ValueError, KeyError, TypeError, ShardIntegrityError):
            break
        kept.append({"file": path.name, "rows": shard_rows, "bytes": stamp["bytes"], HASH: stamp[HASH]})
    end = first + len(kept)
    for stale in shard_dir.glob("shard-*"):
        match = re.fullmatch(r"shard-(\d+)\.(arrow|arrow\.verified|parquet)", stale.name)
        if not match or int(match[1]) < first or (last is not None and int(match[1]) >= last):
            continue
        # Parquet shards of an ssae before the Arrow format are never read: a set's worth of disk.
        if int(match[1]) >= end or match[2] == "parquet":
            stale.unlink()
    return kept

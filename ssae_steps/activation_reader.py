"""Stream shuffled batches of cached activations with bounded memory, and check cached sets.

An activation set is ``manifest.json`` next to ``shards/shard-NNNNN.parquet``; the manifest
lists each shard's row count and sha256 and the set's ``run_key``, which every shard also
carries in its schema metadata. Readers verify all of that before use, so a truncated,
edited or foreign shard stops a stage with one line naming the file:

    python -m ssae_steps.activation_reader verify MANIFEST [MANIFEST ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ssae_steps._config import ConfigError
from ssae_steps._io import file_sha256

RUN_KEY = b"ssae.run_key"
COLUMNS = ["activation", "doc_id", "position", "token_id"]


class ShardIntegrityError(ConfigError):
    """A cached activation set is unusable: a shard is missing, damaged or from another run."""


def _damaged(file: Path, problem: str) -> ShardIntegrityError:
    return ShardIntegrityError(f"{file}: {problem}; re-run the activation stage")


def _check_shard(file: Path, entry: dict[str, Any], run_key: str) -> None:
    if not file.is_file():
        raise _damaged(file, "missing")
    if "sha256" not in entry:
        raise _damaged(file, "no sha256 in the manifest (written by an older ssae; re-cache)")
    # The hash comes first so that a truncated file never reaches the Parquet parser.
    if file_sha256(file) != entry["sha256"]:
        raise _damaged(file, "checksum mismatch (truncated or modified after caching)")
    try:
        with pq.ParquetFile(file) as parquet:
            rows = parquet.metadata.num_rows
            key = (parquet.schema_arrow.metadata or {}).get(RUN_KEY, b"").decode()
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(file, f"unreadable Parquet ({exc})") from exc
    if rows != entry["rows"]:
        raise _damaged(file, f"{rows} rows, the manifest says {entry['rows']}")
    if key != run_key:
        raise _damaged(file, f"run key {key!r} is not the manifest's {run_key!r} (a shard of another set)")


def verify_activation_set(manifest: str | Path) -> dict[str, Any]:
    """Check every shard of a set against its manifest (exists, sha256, row count, run key);
    raise :class:`ShardIntegrityError` naming the first bad file. Returns
    ``{"manifest", "shards", "rows", "ok"}``."""
    path = Path(manifest).absolute()
    try:
        info = json.loads(path.read_text())
        run_key, entries, tokens = info.get("run_key"), info["shards"], info["tokens"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardIntegrityError(f"{path}: unreadable activation manifest ({exc!r})") from exc
    if run_key is None:
        raise ShardIntegrityError(f"{path}: no run_key (written by an older ssae); re-run the activation stage")
    for entry in entries:
        _check_shard(path.parent / "shards" / entry["file"], entry, run_key)
    rows = sum(int(entry["rows"]) for entry in entries)
    if rows != tokens:
        raise ShardIntegrityError(f"{path}: shards hold {rows} rows, the manifest says tokens={tokens}")
    return {"manifest": str(path), "shards": len(entries), "rows": rows, "ok": True}


def _read(file: Path, columns: list[str], d_model: int, row_group: int | None = None) -> dict[str, np.ndarray]:
    """Columns of one shard (or one of its row groups) as numpy; ``activation`` is [rows, d_model]."""
    with pq.ParquetFile(file) as parquet:
        table = parquet.read(columns) if row_group is None else parquet.read_row_group(row_group, columns)
    out = {}
    for name in columns:
        column = table[name].combine_chunks()
        if name == "activation":
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), d_model)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


class ActivationShardReader:
    """Iterate over ``(activations [batch, d_model] float32 tensor)`` - or dicts with
    ``activation``, ``doc_id``, ``position``, ``token_id`` when ``with_metadata`` - for one
    epoch per ``iter()``; each new epoch reshuffles. Batches depend only on ``seed`` and
    ``epoch`` (which the trainer sets, then skips batches, to resume).

    Each epoch visits every row exactly once. The (shard, row group) pairs of the whole set
    are permuted with ``default_rng([seed, epoch])`` and read in that order into a buffer of
    about ``buffer_rows`` rows; a full buffer (plus the remainder carried from the previous
    one) is permuted and cut into batches, and the rows short of a full batch are carried.
    At most ``buffer_rows`` + one row group rows are held (``peak_rows``), whatever the
    set's size. ``shuffle=False`` streams rows in file order.

    How close to a uniform permutation: row groups come in a uniformly random order across
    all shards, and rows are uniformly permuted within each buffer, so a batch is a uniform
    sample of the ~``buffer_rows / row group rows`` row groups in its buffer, and those are
    a uniform sample of all row groups of the set (exactly uniform once ``buffer_rows``
    covers the set). Since the activation writer stores windows in a seeded random order,
    each row group is itself a random sample of windows; what remains of the file order is
    that a window's tokens (contiguous rows) come in the same buffer.
    """

    def __init__(
        self,
        manifest: str | Path,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        buffer_rows: int = 65_536,
        with_metadata: bool = False,
        drop_last: bool = False,
        verify: bool = True,
    ) -> None:
        self.manifest_path = Path(manifest)
        if verify:
            verify_activation_set(self.manifest_path)
        self.info: dict[str, Any] = json.loads(self.manifest_path.read_text())
        self.shard_dir = self.manifest_path.parent / "shards"
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_rows = max(1, buffer_rows)
        self.with_metadata = with_metadata
        self.columns = list(COLUMNS) if with_metadata else ["activation"]
        self.drop_last = drop_last
        self.epoch = 0
        self.peak_rows = 0
        self._row_groups: list[tuple[Path, int]] | None = None

    @property
    def d_model(self) -> int:
        return int(self.info["d_model"])

    @property
    def tokens(self) -> int:
        return int(self.info["tokens"])

    def __len__(self) -> int:
        full, rest = divmod(self.tokens, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _groups(self) -> list[tuple[Path, int]]:
        """Every (shard file, row group index) of the set, in file order."""
        if self._row_groups is None:
            self._row_groups = []
            for entry in self.info["shards"]:
                with pq.ParquetFile(self.shard_dir / entry["file"]) as parquet:
                    count = parquet.metadata.num_row_groups
                self._row_groups += [(self.shard_dir / entry["file"], i) for i in range(count)]
        return self._row_groups

    def _emit(self, rows: dict[str, np.ndarray], index: np.ndarray) -> Any:
        import torch

        act = torch.from_numpy(rows["activation"][index].astype(np.float32))
        if not self.with_metadata:
            return act
        return {"activation": act, **{c: rows[c][index] for c in rows if c != "activation"}}

    def __iter__(self) -> Iterator[Any]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        groups = self._groups()
        if self.shuffle:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        parts: list[dict[str, np.ndarray]] = []
        held = 0
        for n, (file, group) in enumerate(groups):
            parts.append(_read(file, self.columns, self.d_model, group))
            held += len(parts[-1]["activation"])
            if held < self.buffer_rows and n + 1 < len(groups):
                continue
            rows, parts = _concat(parts), []
            self.peak_rows = max(self.peak_rows, held)
            order = rng.permutation(held) if self.shuffle else np.arange(held)
            full = held - held % self.batch_size
            for start in range(0, full, self.batch_size):
                yield self._emit(rows, order[start : start + self.batch_size])
            parts, held = [{c: v[order[full:]] for c, v in rows.items()}], held - full
        if held and not self.drop_last:
            yield self._emit(parts[0], np.arange(held))


def write_activation_set(
    acts: np.ndarray,
    manifest: Path,
    shard_rows: int = 2000,
    doc_ids: Sequence[str] | None = None,
    row_group_rows: int | None = None,
    run_key: str | None = None,
    token_ids: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """Write an in-memory array as an activation set (shards + manifest) that
    :class:`ActivationShardReader` and the trainer read: for activations cached elsewhere
    and for tests. ``doc_id`` is ``doc_ids[row]`` (default ``array``); positions are row
    numbers; ``row_group_rows`` is the Parquet row group size (default: pyarrow's). The run
    key defaults to a hash of the values, so SAE checkpoints never outlive the data.
    ``token_id`` is ``token_ids[row]`` (default 0)."""
    for name, values in (("doc_ids", doc_ids), ("token_ids", token_ids)):
        if values is not None and len(values) != len(acts):
            raise ValueError(f"{len(values)} {name} for {len(acts)} rows")
    tokens = np.zeros(len(acts), np.int32) if token_ids is None else np.asarray(token_ids, np.int32)
    if run_key is None:
        digest = hashlib.sha1(np.ascontiguousarray(acts, dtype=np.float32).tobytes())
        digest.update("\0".join([] if doc_ids is None else list(doc_ids)).encode())
        if token_ids is not None:
            digest.update(tokens.tobytes())
        run_key = digest.hexdigest()
    shard_dir = manifest.parent / "shards"
    shard_dir.mkdir(parents=True)
    shards = []
    for i, start in enumerate(range(0, len(acts), shard_rows)):
        part = acts[start : start + shard_rows].astype(np.float32)
        ids = ["array"] * len(part) if doc_ids is None else list(doc_ids[start : start + shard_rows])
        table = pa.table(
            {
                "doc_id": pa.array(ids, pa.string()),
                "position": pa.array(np.arange(start, start + len(part)), pa.int32()),
                "token_id": pa.array(tokens[start : start + len(part)], pa.int32()),
                "activation": pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), acts.shape[1]),
            }
        ).replace_schema_metadata({RUN_KEY: run_key.encode()})
        file = shard_dir / f"shard-{i:05d}.parquet"
        pq.write_table(table, file, row_group_size=row_group_rows)
        shards.append({"file": file.name, "rows": len(part), "sha256": file_sha256(file)})
    manifest.write_text(
        json.dumps(
            {
                "d_model": acts.shape[1],
                "tokens": len(acts),
                "shards": shards,
                "run_key": run_key,
                "hook_name": "array",
                "model_dir": "none",
                "stats": {"norm_mean": float(np.linalg.norm(acts, axis=1).mean()), "mean": acts.mean(0).tolist()},
            }
        )
    )
    return manifest


def load_activation_set(manifest: str | Path, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """A whole (evaluation-sized) verified activation set in file order: ``activation``
    (float32 [rows, d_model]), ``doc_id``, ``position``, ``token_id``."""
    reader = ActivationShardReader(manifest, batch_size=1, shuffle=False, with_metadata=True)
    parts, held = [], 0
    for entry in reader.info["shards"]:
        if max_rows is not None and held >= max_rows:
            break
        parts.append(_read(reader.shard_dir / entry["file"], COLUMNS, reader.d_model))
        held += len(parts[-1]["activation"])
    rows = _concat(parts)
    if max_rows is not None:
        rows = {c: v[:max_rows] for c, v in rows.items()}
    rows["activation"] = rows["activation"].astype(np.float32, copy=False)
    return rows


def token_counts(manifest: str | Path) -> np.ndarray:
    """Occurrences of each token id in a verified activation set (index = token id)."""
    reader = ActivationShardReader(manifest, batch_size=1, shuffle=False)
    ids = [_read(reader.shard_dir / s["file"], ["token_id"], reader.d_model)["token_id"] for s in reader.info["shards"]]
    return np.bincount(np.concatenate(ids))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check cached activation sets against their manifests.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check every shard's presence, sha256, row count and run key")
    verify.add_argument("manifests", nargs="+", metavar="MANIFEST")
    args = parser.parse_args(argv)
    for manifest in args.manifests:
        try:
            report = verify_activation_set(manifest)
        except ShardIntegrityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"ok: {manifest} ({report['shards']} shards, {report['rows']} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

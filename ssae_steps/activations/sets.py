"""Whole activation sets: write one from an array, load one into memory, count its tokens,
verify every byte, export a Parquet copy to share.

The command line checks and shares cached sets (``verify`` hashes every byte of every
shard, where opening a set checks only what is cheap; ``export`` writes Parquet)::

    python -m ssae_steps.activations.sets verify --manifests MANIFEST [MANIFEST ...]
    python -m ssae_steps.activations.sets export --manifest MANIFEST --out-dir OUT_DIR

A damaged set ends either command with one ``error: ...`` line naming the file, and exit
status 2.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ssae_steps.activations.shards import COLUMNS, HASH, Shard, check_set, file_digest
from ssae_steps.activations.writer import ShardWriter
from ssae_steps.cli import run
from ssae_steps.files import atomic_path, write_json


def write_activation_set(
    acts: np.ndarray,
    manifest: Path,
    shard_rows: int = 2000,
    doc_ids: Sequence[str] | None = None,
    row_group_rows: int | None = None,
    run_key: str | None = None,
    token_ids: Sequence[int] | np.ndarray | None = None,
    dtype: str = "float32",
) -> Path:
    """Write an in-memory array as an activation set (shards + manifest) that
    :class:`~ssae_steps.activations.reader.ActivationShardReader` and the trainer read: for
    activations cached elsewhere and for tests. ``doc_id`` is ``doc_ids[row]`` (default
    ``array``); positions are row numbers; ``row_group_rows`` is the record batch size
    (default: one per shard). The run key defaults to a hash of the values, so SAE
    checkpoints never outlive the data. ``token_id`` is ``token_ids[row]`` (default 0)."""
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
    ids = ["array"] * len(acts) if doc_ids is None else list(doc_ids)
    with ShardWriter(
        shard_dir, run_key, acts.shape[1], dtype, shard_rows, batch_rows=row_group_rows or shard_rows
    ) as writer:
        writer.add(ids, np.arange(len(acts)), tokens, acts)
        shards = writer.close()
    write_json(
        manifest,
        {
            "d_model": acts.shape[1],
            "dtype": dtype,
            "tokens": len(acts),
            "shards": shards,
            "run_key": run_key,
            "hook_name": "array",
            "model_dir": "none",
            "stats": {"norm_mean": float(np.linalg.norm(acts, axis=1).mean()), "mean": acts.mean(0).tolist()},
        },
    )
    return manifest


def read_columns(manifest: str | Path, names: Sequence[str], max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Columns ``names`` of a checked set in file order (the first ``max_rows`` rows)."""
    path = Path(manifest)
    info, _ = check_set(path)
    parts, held = [], 0
    for entry in info["shards"]:
        if max_rows is not None and held >= max_rows:
            break
        parts.append(Shard(path.parent / "shards" / entry["file"]).columns(names))
        held += len(parts[-1][names[0]])
    rows = {c: np.concatenate([p[c] for p in parts]) for c in names}
    return rows if max_rows is None else {c: v[:max_rows] for c, v in rows.items()}


def load_activation_set(manifest: str | Path, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """A whole (evaluation-sized) checked activation set in file order: ``activation``
    (float32 [rows, d_model]), ``doc_id``, ``position``, ``token_id``."""
    rows = read_columns(manifest, COLUMNS, max_rows)
    rows["activation"] = rows["activation"].astype(np.float32)
    return rows


def token_counts(manifest: str | Path) -> np.ndarray:
    """Occurrences of each token id in a checked activation set (index = token id)."""
    return np.bincount(read_columns(manifest, ["token_id"])["token_id"])


def verify_activation_set(manifest: str | Path) -> dict[str, Any]:
    """Check every byte of every shard of a set against its manifest (exists, size, digest,
    row count, run key); raise :class:`~ssae_steps.activations.shards.ShardIntegrityError`
    naming the first bad file. Returns ``{"manifest", "shards", "rows", "ok"}``."""
    path = Path(manifest).absolute()
    info, _ = check_set(path, full=True)
    return {"manifest": str(path), "shards": len(info["shards"]), "rows": int(info["tokens"]), "ok": True}


# Activations compress poorly and slowly; the small columns compress well.
PARQUET_COMPRESSION = {"doc_id": "zstd", "position": "zstd", "token_id": "zstd", "activation": "none"}


def export_parquet(manifest: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write a Parquet copy of a checked set for sharing: ``OUT_DIR/shard-NNNNN.parquet``
    (same columns and schema metadata, one row group per record batch) and
    ``OUT_DIR/manifest.json`` (the set's, with the Parquet files' rows, sizes and digests
    and ``"format": "parquet"``), written last. Memory stays at one record batch."""
    import pyarrow.parquet as pq

    path, out = Path(manifest), Path(out_dir)
    info, _ = check_set(path)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry in info["shards"]:
        target = out / (Path(entry["file"]).stem + ".parquet")
        shard = Shard(path.parent / "shards" / entry["file"])
        with atomic_path(target) as tmp:
            with pq.ParquetWriter(tmp, shard.schema, compression=PARQUET_COMPRESSION) as writer:
                for batch in shard.record_batches():
                    writer.write_batch(batch)
        entries.append(
            {"file": target.name, "rows": entry["rows"], "bytes": target.stat().st_size, HASH: file_digest(target)}
        )
    exported = {**info, "shards": entries, "format": "parquet", "exported_from": str(path.absolute())}
    write_json(out / "manifest.json", exported)
    return exported


def verify_command(manifests: Annotated[list[Path], "the sets' manifest.json files"]) -> None:
    """Hash every shard; check sizes, row counts and run keys."""
    for manifest in manifests:
        report = verify_activation_set(manifest)
        print(f"ok: {manifest} ({report['shards']} shards, {report['rows']} rows)")


def export_command(manifest: Path, out_dir: Path) -> None:
    """Write a Parquet copy of a set (shards + manifest) for sharing."""
    info = export_parquet(manifest, out_dir)
    print(f"exported: {out_dir} ({len(info['shards'])} Parquet files, {info['tokens']} rows)")


def main(argv: list[str] | None = None) -> int:
    return run({"verify": verify_command, "export": export_command}, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Stream shuffled batches of cached activations with bounded memory.

Each epoch visits every cached token exactly once: shards are taken in a seeded random
order, ``shards_in_memory`` at a time; their rows (plus the remainder of the previous
group) are permuted and cut into batches. At most ``shards_in_memory + 1`` shards' rows
are held at once, whatever the corpus size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class ActivationShardReader:
    """Iterate over ``(activations [batch, d_model] float32 tensor)`` - or dicts with
    ``activation``, ``doc_id``, ``position``, ``token_id`` when ``with_metadata`` - for one
    epoch per ``iter()``; each new epoch reshuffles."""

    def __init__(
        self,
        manifest: str | Path,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        shards_in_memory: int = 2,
        with_metadata: bool = False,
        drop_last: bool = False,
    ) -> None:
        self.manifest_path = Path(manifest)
        self.info: dict[str, Any] = json.loads(self.manifest_path.read_text())
        self.shard_dir = self.manifest_path.parent / "shards"
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.shards_in_memory = max(1, shards_in_memory)
        self.with_metadata = with_metadata
        self.drop_last = drop_last
        self.epoch = 0
        self.peak_rows = 0
        missing = [s["file"] for s in self.info["shards"] if not (self.shard_dir / s["file"]).exists()]
        if missing:
            raise FileNotFoundError(f"{self.manifest_path}: shard(s) missing: {missing[:3]}")

    @property
    def d_model(self) -> int:
        return int(self.info["d_model"])

    @property
    def tokens(self) -> int:
        return int(self.info["tokens"])

    def __len__(self) -> int:
        full, rest = divmod(self.tokens, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _load(self, files: list[str]) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        columns = ["activation", "doc_id", "position", "token_id"] if self.with_metadata else ["activation"]
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for name in files:
            table = pq.read_table(self.shard_dir / name, columns=columns)
            act = table["activation"].combine_chunks()
            parts["activation"].append(act.values.to_numpy(zero_copy_only=False).reshape(len(act), self.d_model))
            for c in columns[1:]:
                parts[c].append(table[c].to_numpy(zero_copy_only=False))
        return {c: np.concatenate(v) for c, v in parts.items()}

    def _emit(self, rows: dict[str, np.ndarray], index: np.ndarray) -> Any:
        import torch

        act = torch.from_numpy(rows["activation"][index].astype(np.float32))
        if not self.with_metadata:
            return act
        return {"activation": act, **{c: rows[c][index] for c in rows if c != "activation"}}

    def __iter__(self) -> Iterator[Any]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        files = [s["file"] for s in self.info["shards"]]
        if self.shuffle:
            files = [files[i] for i in rng.permutation(len(files))]
        carry: dict[str, np.ndarray] | None = None
        for start in range(0, len(files), self.shards_in_memory):
            rows = self._load(files[start : start + self.shards_in_memory])
            if carry is not None:
                rows = {c: np.concatenate([carry[c], rows[c]]) for c in rows}
            n = len(rows["activation"])
            self.peak_rows = max(self.peak_rows, n)
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            full = n - n % self.batch_size
            for b in range(0, full, self.batch_size):
                yield self._emit(rows, order[b : b + self.batch_size])
            rest = order[full:]
            carry = {c: v[rest] for c, v in rows.items()}
        if carry is not None and len(carry["activation"]) and not self.drop_last:
            yield self._emit(carry, np.arange(len(carry["activation"])))


def write_activation_set(acts: np.ndarray, manifest: Path, shard_rows: int = 2000) -> Path:
    """Write an in-memory array as an activation set (shards + manifest) that
    :class:`ActivationShardReader` and the trainer read: for activations cached elsewhere
    and for tests. ``doc_id`` is ``array``; positions are row numbers."""
    shard_dir = manifest.parent / "shards"
    shard_dir.mkdir(parents=True)
    shards = []
    for i, start in enumerate(range(0, len(acts), shard_rows)):
        part = acts[start : start + shard_rows].astype(np.float32)
        table = pa.table(
            {
                "doc_id": pa.array(["array"] * len(part)),
                "position": pa.array(np.arange(start, start + len(part)), pa.int32()),
                "token_id": pa.array(np.zeros(len(part)), pa.int32()),
                "activation": pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), acts.shape[1]),
            }
        )
        pq.write_table(table, shard_dir / f"shard-{i:05d}.parquet")
        shards.append({"file": f"shard-{i:05d}.parquet", "rows": len(part)})
    manifest.write_text(
        json.dumps(
            {
                "d_model": acts.shape[1],
                "tokens": len(acts),
                "shards": shards,
                "run_key": "array",
                "hook_name": "array",
                "model_dir": "none",
                "stats": {"norm_mean": float(np.linalg.norm(acts, axis=1).mean()), "mean": acts.mean(0).tolist()},
            }
        )
    )
    return manifest


def load_activation_set(manifest: str | Path, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """A whole (evaluation-sized) activation set in file order: ``activation`` (float32
    [rows, d_model]), ``doc_id``, ``position``, ``token_id``."""
    reader = ActivationShardReader(manifest, batch_size=1 << 30, shuffle=False, with_metadata=True)
    files = [s["file"] for s in reader.info["shards"]]
    rows = reader._load(files)
    if max_rows is not None:
        rows = {c: v[:max_rows] for c, v in rows.items()}
    rows["activation"] = rows["activation"].astype(np.float32, copy=False)
    return rows


def token_counts(manifest: str | Path) -> np.ndarray:
    """Occurrences of each token id in an activation set (index = token id)."""
    import pyarrow.parquet as pq

    info = json.loads(Path(manifest).read_text())
    shard_dir = Path(manifest).parent / "shards"
    ids = np.concatenate(
        [pq.read_table(shard_dir / s["file"], columns=["token_id"])["token_id"].to_numpy() for s in info["shards"]]
    )
    return np.bincount(ids)

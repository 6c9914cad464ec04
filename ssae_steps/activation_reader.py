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

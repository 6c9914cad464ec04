"""Rows in, shards out: :class:`ShardWriter` turns streamed activation rows into the shards
of :mod:`ssae_steps.activations.shards`, with the set's running statistics.

The writer overlaps the three costs of caching - the caller's forward passes, the shard
writes (Arrow, then the BLAKE3 hash) and the statistics - on separate threads, and casts
rows into the stored dtype on the way in. The cast and the statistics decide the stored
values and the mean and norm the trainer starts from, so both are pinned bit for bit
(:func:`cast_into`, :meth:`RunningStats.add`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps.activations.shards import BATCH_ROWS, SHARD_PATTERN, shard_schema, write_shard


class RunningStats:
    """Per-dimension mean and variance, and norm statistics, of streamed activations."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.sum = np.zeros(dim)
        self.sumsq = np.zeros(dim)
        self.norm_sum = 0.0
        self.norm_sumsq = 0.0
        self.norm_max = 0.0
        self._square: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        # Called per batch (a few thousand rows): float32 partial sums, float64 totals. The
        # norms are numpy.linalg.norm's own arithmetic (sqrt of the row sums of x * x), so the
        # mean and norm_mean the trainer starts from are the same bits as ever.
        x = np.ascontiguousarray(x, dtype=np.float32)  # row sums in numpy.linalg.norm's order
        if self._square is None or self._square.shape[0] < len(x) or self._square.shape[1] != x.shape[1]:
            self._square = np.empty(x.shape, np.float32)
        square = np.multiply(x, x, out=self._square[: len(x)])
        norms = np.sqrt(np.add.reduce(square, axis=1))
        self.n += len(x)
        self.sum += x.sum(0)
        self.sumsq += square.sum(0)
        self.norm_sum += float(norms.sum())
        self.norm_sumsq += float((norms * norms).sum())
        self.norm_max = max(self.norm_max, float(norms.max(initial=0.0)))

    def raw(self) -> dict[str, Any]:
        """The sums, for merging the statistics of parts (:meth:`merged`)."""
        return {
            "n": self.n,
            "sum": self.sum.tolist(),
            "sumsq": self.sumsq.tolist(),
            "norm_sum": self.norm_sum,
            "norm_sumsq": self.norm_sumsq,
            "norm_max": self.norm_max,
        }

    @classmethod
    def merged(cls, raws: list[dict[str, Any]]) -> RunningStats:
        out = cls(len(raws[0]["sum"]))
        for raw in raws:
            out.n += raw["n"]
            out.sum += np.asarray(raw["sum"])
            out.sumsq += np.asarray(raw["sumsq"])
            out.norm_sum += raw["norm_sum"]
            out.norm_sumsq += raw["norm_sumsq"]
            out.norm_max = max(out.norm_max, raw["norm_max"])
        return out

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


class ShardWriter:
    """Rows in, shards out: fills shards of ``shard_rows`` (named from ``first_index`` on),
    keeps running statistics of the rows as given, and writes each full shard on a
    background thread while the caller computes the next rows. Rows are cast straight into
    a preallocated shard buffer (two of them: one filling, one being written), and the
    statistics run on a second background thread, one batch behind; Arrow, the hash and
    numpy release the GIL. Use as a context manager: on an error the write in flight still
    finishes, so a shard is complete or absent. ``close()`` returns the shards' manifest
    entries, in order; ``stats`` is complete after it."""

    def __init__(
        self,
        shard_dir: Path,
        run_key: str,
        d_model: int,
        dtype: str,
        shard_rows: int,
        first_index: int = 0,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self.shard_dir = Path(shard_dir)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.schema = shard_schema(d_model, dtype, run_key)
        self.store = np.dtype(dtype)
        self.d_model = d_model
        self.shard_rows = shard_rows
        self.batch_rows = batch_rows
        self.next_index = first_index
        self.stats = RunningStats(d_model)
        self.entries: list[dict[str, Any]] = []
        self._filling = self._new_buffer()
        self._spare: dict[str, Any] | None = None
        self._filled = 0
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-write")
        self._statistics = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-stats")
        self._pending_write: Future[dict[str, Any]] | None = None
        self._pending_stats: Future[None] | None = None

    def _new_buffer(self) -> dict[str, Any]:
        return {
            "act": np.empty((self.shard_rows, self.d_model), self.store),
            "pos": np.empty(self.shard_rows, np.int32),
            "tok": np.empty(self.shard_rows, np.int32),
            "ids": [],
        }

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writes.shutdown(wait=True)
        self._statistics.shutdown(wait=True)

    def add(self, doc_ids: Sequence[str], positions: np.ndarray, tokens: np.ndarray, acts: np.ndarray) -> None:
        """Append rows; ``acts`` (any float dtype) are stored in the set's dtype. ``acts``
        must stay unchanged until the next ``add`` (its statistics are computed meanwhile)."""
        if not len(acts):
            return
        self._wait_stats()
        self._pending_stats = self._statistics.submit(self.stats.add, acts)
        done = 0
        while done < len(acts):
            take = min(len(acts) - done, self.shard_rows - self._filled)
            rows, into = slice(done, done + take), slice(self._filled, self._filled + take)
            cast_into(self._filling["act"][into], acts[rows])
            self._filling["pos"][into] = positions[rows]
            self._filling["tok"][into] = tokens[rows]
            self._filling["ids"].extend(doc_ids[rows])
            self._filled += take
            done += take
            if self._filled == self.shard_rows:
                self._submit()

    def close(self) -> list[dict[str, Any]]:
        """Write the last (partial) shard, wait for every write and the statistics; the
        manifest entries."""
        if self._filled:
            self._submit()
        self._wait_write()
        self._wait_stats()
        return self.entries

    def _wait_stats(self) -> None:
        if self._pending_stats is not None:
            self._pending_stats.result()
            self._pending_stats = None

    def _wait_write(self) -> None:
        if self._pending_write is not None:
            self.entries.append(self._pending_write.result())
            self._pending_write = None

    def _submit(self) -> None:
        self._wait_write()  # frees the spare buffer
        n, full = self._filled, self._filling
        path = self.shard_dir / SHARD_PATTERN.format(self.next_index)
        columns = (full["ids"], full["pos"][:n], full["tok"][:n], full["act"][:n])
        self._pending_write = self._writes.submit(write_shard, path, self.schema, *columns, self.batch_rows)
        self.next_index += 1
        self._filling, self._spare = self._spare or self._new_buffer(), full
        self._filling["ids"] = []
        self._filled = 0


def cast_into(target: np.ndarray, values: np.ndarray) -> None:
    """``target[:] = values`` in ``target``'s dtype. float32 -> float16 goes through torch's
    vectorised conversion (round to nearest even: the same bits as numpy's scalar cast,
    tested; ~10x faster)."""
    if target.dtype == np.float16 and values.dtype == np.float32:
        import torch

        torch.from_numpy(target).copy_(torch.from_numpy(np.ascontiguousarray(values)))
    else:
        np.copyto(target, values, casting="same_kind")

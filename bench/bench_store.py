"""Activation store throughput against this machine's practical limit and the previous format.

For each ``--d-models`` (default 640, the default run's Gemma 3 270M, and 2304, Gemma 2
2B's), one float16 set of ``--gigabytes`` (default 1.0) of activation values on local disk
(``--dir``), written and read back in the same run by:

- ``ours``: the stages' own code - ``ShardWriter`` fed float32 rows in forward-batch-sized
  chunks (``--chunk-rows``, default 16 windows x 127 tokens), exactly as
  ``cache_activations`` feeds it: running statistics, float16 cast, Arrow IPC shards of
  65,536 rows, BLAKE3 while writing, stamps; then ``ActivationShardReader`` as the trainer
  uses it (``reuse_buffers``): open (checks) and one shuffled epoch of float32 tensors of
  ``--batch`` rows;
- ``numpy``: ``numpy.save`` / ``numpy.load`` of the same float16 array in one file, the
  machine's practical limit for moving those bytes through the page cache;
- ``parquet``: the previous format (``legacy_parquet_store.py``: Parquet with a
  fixed-size-list column, SHA-256, hashed again by every reader), same rows, same
  chunks, same epoch.

Repeats run round-robin (``--repeats``, default 3; the best of them reported for every
method alike, medians in ``--json``); dirty pages are flushed (``os.sync``, untimed) before
each write, and each read follows its write, as a training run reading a set it has just
cached does. Prints a table, ``--json``,
and a last line ``RESULT d640: write 0.xx save, read 0.xx load, ... | d2304: ...`` with
the ratios the targets name (write >= 0.5x ``numpy.save``, shuffled read >= 0.5x
``numpy.load``, both >= 10x the previous format).

    python bench/bench_store.py --dir /tmp/bench_store
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import legacy_parquet_store as legacy  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402, F401 - imported before any timing, as in a stage

from ssae_steps.activations.reader import ActivationShardReader  # noqa: E402
from ssae_steps.activations.writer import ShardWriter  # noqa: E402
from ssae_steps.files import write_json  # noqa: E402

SHARD_ROWS = 65_536


class Data:
    """One set's rows: float32 activations as the model hands them over, the float16 values
    stored, and the small columns."""

    def __init__(self, d_model: int, gigabytes: float, seed: int = 0) -> None:
        rows = int(gigabytes * 1e9 / (2 * d_model))
        rng = np.random.default_rng(seed)
        self.f32 = (
            rng.standard_normal((rows, d_model), dtype=np.float32) * 4 + rng.standard_normal(d_model) * 20
        ).astype(np.float32)
        self.f16 = self.f32.astype(np.float16)
        self.doc_ids = [f"doc-{i // 300:07d}" for i in range(rows)]
        self.positions = (np.arange(rows) % 300).astype(np.int32)
        self.tokens = rng.integers(0, 262_144, rows).astype(np.int32)

    @property
    def rows(self) -> int:
        return len(self.f32)


def _chunks(data: Data, chunk: int):  # noqa: ANN202
    for start in range(0, data.rows, chunk):
        stop = start + chunk
        yield data.doc_ids[start:stop], data.positions[start:stop], data.tokens[start:stop], data.f32[start:stop]


def write_ours(data: Data, root: Path, chunk: int) -> Path:
    shard_dir = root / "shards"
    with ShardWriter(shard_dir, "bench", data.f32.shape[1], "float16", SHARD_ROWS) as writer:
        for rows in _chunks(data, chunk):
            writer.add(*rows)
        shards = writer.close()
    manifest = root / "manifest.json"
    write_json(
        manifest,
        {
            "d_model": data.f32.shape[1],
            "tokens": data.rows,
            "shards": shards,
            "run_key": "bench",
            "stats": writer.stats.summary(),
        },
    )
    return manifest


def write_parquet(data: Data, root: Path, chunk: int) -> Path:
    writer = legacy.LegacyShardWriter(root / "shards", "bench", data.f32.shape[1], SHARD_ROWS)
    for rows in _chunks(data, chunk):
        writer.add(*rows)
    shards = writer.close()
    manifest = root / "manifest.json"
    manifest.write_text(
        json.dumps({"d_model": data.f32.shape[1], "tokens": data.rows, "shards": shards, "run_key": "bench"})
    )
    return manifest


def read_ours(manifest: Path, batch: int) -> int:
    return sum(len(x) for x in ActivationShardReader(manifest, batch, shuffle=True, seed=0, reuse_buffers=True))


def read_parquet(manifest: Path, batch: int) -> int:
    return sum(len(x) for x in legacy.legacy_epoch(manifest, batch, seed=0))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _warm_up(root: Path, chunk: int, batch: int) -> None:
    """Every path once on a tiny set, untimed: first calls import modules (pyarrow loads
    pandas on its first string array) that a stage has long imported."""
    tiny = Data(64, 0.001)
    for name, write, read in (("ours", write_ours, read_ours), ("parquet", write_parquet, read_parquet)):
        read(write(tiny, _fresh(root / f"warm-{name}"), chunk), batch)
        shutil.rmtree(root / f"warm-{name}")


def bench_d_model(d_model: int, gigabytes: float, root: Path, repeats: int, chunk: int, batch: int) -> dict:
    _warm_up(root, chunk, batch)
    data = Data(d_model, gigabytes)
    times: dict[str, list[float]] = {
        k: [] for k in ("save", "load", "ours_write", "ours_read", "parquet_write", "parquet_read")
    }
    sizes: dict[str, int] = {}
    for _ in range(repeats):
        npy = _fresh(root / "numpy") / "acts.npy"
        os.sync()
        times["save"].append(_timed(lambda npy=npy: np.save(npy, data.f16)))
        times["load"].append(_timed(lambda npy=npy: np.load(npy)))
        sizes["numpy"] = npy.stat().st_size

        ours = _fresh(root / "ours")
        os.sync()
        times["ours_write"].append(_timed(lambda ours=ours: write_ours(data, ours, chunk)))
        times["ours_read"].append(_timed(lambda ours=ours: read_ours(ours / "manifest.json", batch)))
        sizes["ours"] = sum(p.stat().st_size for p in (ours / "shards").glob("*.arrow"))

        parquet = _fresh(root / "parquet")
        os.sync()
        times["parquet_write"].append(_timed(lambda parquet=parquet: write_parquet(data, parquet, chunk)))
        times["parquet_read"].append(_timed(lambda parquet=parquet: read_parquet(parquet / "manifest.json", batch)))
        sizes["parquet"] = sum(p.stat().st_size for p in (parquet / "shards").glob("*.parquet"))
    for name in ("numpy", "ours", "parquet"):
        shutil.rmtree(root / name, ignore_errors=True)
    # Best of the repeats for every method alike: this VM's reclaim and writeback slow some
    # repeats several-fold (numpy.load most), and the best is the machine's limit.
    rate = {k: data.rows / min(v) for k, v in times.items()}
    return {
        "d_model": d_model,
        "rows": data.rows,
        "value_bytes": int(data.f16.nbytes),
        "bytes_per_token": {k: round(v / data.rows, 1) for k, v in sizes.items()},
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "tokens_per_second": {k: round(v) for k, v in rate.items()},
        "median_tokens_per_second": {k: round(data.rows / statistics.median(v)) for k, v in times.items()},
        "ratios": {
            "write_vs_save": rate["ours_write"] / rate["save"],
            "read_vs_load": rate["ours_read"] / rate["load"],
            "write_vs_parquet": rate["ours_write"] / rate["parquet_write"],
            "read_vs_parquet": rate["ours_read"] / rate["parquet_read"],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-models", type=int, nargs="+", default=[640, 2304])
    parser.add_argument("--gigabytes", type=float, default=1.0, help="activation values per set (float16)")
    parser.add_argument("--dir", type=Path, default=None, help="local-disk folder for the sets (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=16 * 127, help="rows per writer call (one forward batch)")
    parser.add_argument("--batch", type=int, default=4096, help="reader batch (training batch)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = []
        for d_model in args.d_models:
            result = bench_d_model(d_model, args.gigabytes, Path(tmp), args.repeats, args.chunk_rows, args.batch)
            results.append(result)
            rate = result["tokens_per_second"]
            print(f"d_model {d_model}: {result['rows']:,} rows, {result['value_bytes'] / 1e9:.2f} GB of values")
            print("  format    write tokens/s   read tokens/s   bytes/token")
            for name, w, r in (
                ("numpy", "save", "load"),
                ("ours", "ours_write", "ours_read"),
                ("parquet", "parquet_write", "parquet_read"),
            ):
                print(f"  {name:8s} {rate[w]:>15,} {rate[r]:>15,} {result['bytes_per_token'][name]:>13}")
            print("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    parts = []
    for r in results:
        q = r["ratios"]
        parts.append(
            f"d{r['d_model']}: write {q['write_vs_save']:.2f}x save, read {q['read_vs_load']:.2f}x load, "
            f"write {q['write_vs_parquet']:.1f}x parquet, read {q['read_vs_parquet']:.1f}x parquet"
        )
    print("RESULT " + " | ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

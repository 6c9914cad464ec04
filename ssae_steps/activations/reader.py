"""Stream shuffled batches of cached activations with bounded memory, and check, share and
export cached sets.

An activation set is ``manifest.json`` next to ``shards/shard-NNNNN.arrow`` (Arrow IPC
files, :mod:`ssae_steps.activations.shards`); the manifest lists each shard's rows, size
and BLAKE3 digest and the set's ``run_key``, which every shard also carries in its schema
metadata. Opening a set checks all of that cheaply (hashing only shards whose stamp no
longer matches), so a truncated, edited, replaced or foreign shard stops a stage with one
line naming the file; ``verify`` hashes every byte:

    python -m ssae_steps.activations.reader verify MANIFEST [MANIFEST ...]
    python -m ssae_steps.activations.reader export MANIFEST OUT_DIR   # a Parquet copy to share
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps.activations.shards import (
    COLUMNS,
    HASH,
    Shard,
    ShardIntegrityError,
    ShardWriter,
    check_set,
    file_digest,
    read_manifest,
)
from ssae_steps.files import atomic_path, write_json

OPEN_SHARDS = 256  # memory maps a reader keeps open (one file descriptor each)

__all__ = [
    "ActivationShardReader",
    "ShardIntegrityError",
    "export_parquet",
    "load_activation_set",
    "token_counts",
    "verify_activation_set",
    "write_activation_set",
]


def verify_activation_set(manifest: str | Path) -> dict[str, Any]:
    """Check every byte of every shard of a set against its manifest (exists, size,
    digest, row count, run key); raise :class:`ShardIntegrityError` naming the first bad
    file. Returns ``{"manifest", "shards", "rows", "ok"}``."""
    path = Path(manifest).absolute()
    info, _ = check_set(path, full=True)
    return {"manifest": str(path), "shards": len(info["shards"]), "rows": int(info["tokens"]), "ok": True}


def _gather(segments: list[dict[str, np.ndarray]], offsets: np.ndarray, index: np.ndarray, out: dict) -> None:
    """``out[c][i]`` = row ``index[i]`` of the buffer (its ``segments`` end to end, starting at
    ``offsets``), for each column ``c`` of ``out``; a cast to ``out``'s dtype on the way."""
    which = np.searchsorted(offsets, index, side="right") - 1
    local = index - offsets[which]
    for s in np.unique(which):
        rows = np.flatnonzero(which == s)
        for name, target in out.items():
            target[rows] = segments[s][name][local[rows]]


class _Prefetch:
    """Runs a generator on a background thread, ``depth`` items ahead of its consumer;
    stops it when the consumer stops early, and re-raises its errors."""

    _END = object()

    def __init__(self, items: Iterator[Any], depth: int) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activation-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self._queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            # Finalised from the producer thread itself (cyclic GC) or at exit: never join.
            if threading.current_thread() is not self._thread and not sys.is_finalizing():
                self._thread.join()
                self._items.close()  # type: ignore[attr-defined]


class ActivationShardReader:
    """Iterate over ``(activations [batch, d_model] float32 tensor)`` - or dicts with
    ``activation`` and the metadata columns (``doc_id``, ``position``, ``token_id``, or
    those named by ``with_metadata``) - for one epoch per ``iter()``; each new epoch
    reshuffles. Batches depend only on ``seed`` and ``epoch`` (:meth:`iter_epoch` resumes
    mid-epoch without reading the skipped batches).

    Each epoch visits every row exactly once. The (shard, record batch) pairs of the whole
    set are permuted with ``default_rng([seed, epoch])`` and taken in that order into a
    buffer of about ``buffer_rows`` rows; a full buffer (plus the remainder carried from the
    previous one) is permuted and cut into batches, and the rows short of a full batch are
    carried. The buffer holds views of the memory-mapped shards, so nothing is decoded or
    copied until a batch is gathered, and at most ``buffer_rows`` + one record batch rows
    are referenced (``peak_rows``), whatever the set's size. ``shuffle=False`` streams rows
    in file order. Batches are prepared on a background thread, ``prefetch`` ahead; with a
    CUDA ``device`` they are gathered into pinned host memory in the stored dtype, copied
    asynchronously and converted to float32 on the device. ``reuse_buffers`` (CPU) hands
    out batches from a small ring of buffers instead of new memory: faster, for a consumer
    that is done with a batch when it asks for the next one (the trainer).

    How close to a uniform permutation: record batches come in a uniformly random order
    across all shards, and rows are uniformly permuted within each buffer, so a batch is a
    uniform sample of the ~``buffer_rows / 4096`` record batches in its buffer, and those
    are a uniform sample of all of the set's (exactly uniform once ``buffer_rows`` covers
    the set). Since the activation writer stores windows in a seeded random order, each
    record batch is itself a random sample of windows; what remains of the file order is
    that a window's tokens (contiguous rows) come in the same buffer.
    """

    def __init__(
        self,
        manifest: str | Path,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        buffer_rows: int = 65_536,
        with_metadata: bool | Sequence[str] = False,
        drop_last: bool = False,
        verify: bool = True,
        device: str = "cpu",
        prefetch: int = 2,
        reuse_buffers: bool = False,
    ) -> None:
        self.manifest_path = Path(manifest)
        if verify:
            self.info, batch_rows = check_set(self.manifest_path)
        else:
            self.info = read_manifest(self.manifest_path)
            batch_rows = [Shard(self.shard_dir / e["file"]).batch_rows() for e in self.info["shards"]]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_rows = max(1, buffer_rows)
        if with_metadata is True:
            self.metadata = [c for c in COLUMNS if c != "activation"]
        else:
            self.metadata = [with_metadata] if isinstance(with_metadata, str) else list(with_metadata or [])
        self.with_metadata = bool(self.metadata)
        self.drop_last = drop_last
        self.device = device
        self.prefetch = max(1, prefetch)
        self.reuse_buffers = reuse_buffers
        self.epoch = 0
        self.peak_rows = 0
        self.bytes_read = 0
        self._open: dict[Path, Shard] = {}
        self._open_lock = threading.Lock()
        # Every (shard file, record batch index, rows) of the set, in file order.
        self._groups = [
            (self.shard_dir / entry["file"], b, n)
            for entry, rows in zip(self.info["shards"], batch_rows, strict=True)
            for b, n in enumerate(rows)
        ]

    @property
    def shard_dir(self) -> Path:
        return self.manifest_path.parent / "shards"

    @property
    def d_model(self) -> int:
        return int(self.info["d_model"])

    @property
    def tokens(self) -> int:
        return int(self.info["tokens"])

    def __len__(self) -> int:
        full, rest = divmod(self.tokens, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Any]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.iter_epoch(epoch)

    def iter_epoch(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` from batch ``skip`` on (the skipped ones are not read).
        The prefetch thread starts with the first batch asked for."""
        ring = _Ring(self)
        with contextlib.closing(iter(_Prefetch(self._batches(epoch, skip, ring), self.prefetch))) as items:
            for batch in items:
                slot, rows = batch["activation"] if isinstance(batch, dict) else batch
                act = ring.deliver(slot, rows)  # in the consumer's thread
                yield (
                    {"activation": act, **{c: v for c, v in batch.items() if c != "activation"}}
                    if isinstance(batch, dict)
                    else act
                )

    def _batches(self, epoch: int, skip: int, ring: _Ring) -> Iterator[Any]:
        rng = np.random.default_rng([self.seed, epoch])
        groups = self._groups
        if self.shuffle:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        columns = ["activation", *self.metadata]
        segments: list[dict[str, np.ndarray]] = []
        held = emitted = 0
        for n, (file, batch, rows) in enumerate(groups):
            segment = self._shard(file).columns(columns, batch)
            self.bytes_read += segment["activation"].nbytes
            segments.append(segment)
            held += rows
            if held < self.buffer_rows and n + 1 < len(groups):
                continue
            self.peak_rows = max(self.peak_rows, held)
            offsets = np.cumsum([0] + [len(s["activation"]) for s in segments[:-1]])
            order = rng.permutation(held) if self.shuffle else np.arange(held)
            full = held - held % self.batch_size
            for start in range(0, full, self.batch_size):
                if emitted >= skip:
                    yield self._emit(segments, offsets, order[start : start + self.batch_size], ring)
                emitted += 1
            rest = order[full:]
            carried = {c: np.empty((len(rest), *segments[0][c].shape[1:]), segments[0][c].dtype) for c in columns}
            _gather(segments, offsets, rest, carried)
            segments, held = [carried], held - full
        if held and not self.drop_last and emitted >= skip:
            yield self._emit(segments, np.zeros(1, np.int64), np.arange(held), ring)

    def _shard(self, file: Path) -> Shard:
        """An open (memory-mapped) shard. The most recently used stay open, so a later epoch
        finds their pages mapped, within a bound on open files."""
        with self._open_lock:  # two epochs may be iterated at once
            shard = self._open.pop(file, None) or Shard(file)
            self._open[file] = shard
            while len(self._open) > OPEN_SHARDS:
                self._open.pop(next(iter(self._open)))
            return shard

    def _emit(self, segments: list[dict[str, np.ndarray]], offsets: np.ndarray, index: np.ndarray, ring: _Ring) -> Any:
        out: dict[str, Any] = {c: np.empty(len(index), segments[0][c].dtype) for c in self.metadata}
        slot, out["activation"] = ring.stage(len(index), segments[0]["activation"].dtype)
        _gather(segments, offsets, index, out)
        staged = (slot, len(index))
        if not self.metadata:
            return staged
        return {**out, "activation": staged}


class _Ring:
    """Where batches are assembled. The prefetch thread gathers a batch's rows in the
    stored dtype into one of ``prefetch + 2`` staging slots (pinned host memory for CUDA);
    the consumer's thread then converts the slot to float32 in one vectorised pass - on the
    CPU, or on the GPU after an asynchronous copy - so the two threads share the work (a
    cast during the gather, or into freshly allocated memory, costs 2-3x more at d_model
    2304: measured). With at most ``prefetch`` batches queued and one being delivered,
    ``prefetch + 2`` slots are never overwritten early: the prefetch thread stages batch
    ``i + prefetch + 2`` only after the consumer asked for batch ``i + 1``, and a slot whose
    device copy may still run is waited for (its CUDA event).

    CPU outputs are new tensors, or with ``reuse_buffers`` one of two float32 buffers in
    turn, each valid until the consumer asks for the next batch but one."""

    def __init__(self, reader: ActivationShardReader) -> None:
        self.rows, self.d_model = reader.batch_size, reader.d_model
        self.device = reader.device
        self.cuda = reader.device.startswith("cuda")
        self.count = reader.prefetch + 2
        self.reuse = reader.reuse_buffers
        self.slots: list[Any] = []
        self.outputs: list[Any] = []
        self.events: dict[int, Any] = {}
        self.staged = 0
        self.delivered = 0

    def stage(self, rows: int, dtype: np.dtype) -> tuple[int, np.ndarray]:
        """A slot for the next batch and the array to gather its ``rows`` into."""
        import torch

        slot = self.staged % self.count
        self.staged += 1
        if len(self.slots) < self.count:
            buffer = torch.empty((self.rows, self.d_model), dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
            self.slots.append(buffer.pin_memory() if self.cuda else buffer)
        if slot in self.events:
            self.events.pop(slot).synchronize()
        return slot, self.slots[slot][:rows].numpy()

    def deliver(self, slot: int, rows: int) -> Any:
        import torch

        staged = self.slots[slot][:rows]
        if self.cuda:
            on_device = staged.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(on_device.device))  # the stream that copies
            self.events[slot] = event
            return on_device.float()
        if not self.reuse:
            return staged.float() if staged.dtype != torch.float32 else staged.clone()
        turn = self.delivered % 2
        self.delivered += 1
        if len(self.outputs) < 2:
            self.outputs.append(torch.empty((self.rows, self.d_model), dtype=torch.float32))
        return self.outputs[turn][:rows].copy_(staged)


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
    :class:`ActivationShardReader` and the trainer read: for activations cached elsewhere
    and for tests. ``doc_id`` is ``doc_ids[row]`` (default ``array``); positions are row
    numbers; ``row_group_rows`` is the record batch size (default: one per shard). The run
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


def _read_set(manifest: str | Path, names: Sequence[str], max_rows: int | None = None) -> dict[str, np.ndarray]:
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
    rows = _read_set(manifest, COLUMNS, max_rows)
    rows["activation"] = rows["activation"].astype(np.float32)
    return rows


def token_counts(manifest: str | Path) -> np.ndarray:
    """Occurrences of each token id in a checked activation set (index = token id)."""
    return np.bincount(_read_set(manifest, ["token_id"])["token_id"])


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check cached activation sets, or export one as Parquet.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="hash every shard; check sizes, row counts and run keys")
    verify.add_argument("manifests", nargs="+", metavar="MANIFEST")
    export = commands.add_parser("export", help="write a Parquet copy of a set (shards + manifest) for sharing")
    export.add_argument("manifest", metavar="MANIFEST")
    export.add_argument("out_dir", metavar="OUT_DIR")
    args = parser.parse_args(argv)
    if args.command == "export":
        try:
            info = export_parquet(args.manifest, args.out_dir)
        except ShardIntegrityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"exported: {args.out_dir} ({len(info['shards'])} Parquet files, {info['tokens']} rows)")
        return 0
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

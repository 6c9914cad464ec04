"""Stream shuffled batches of a cached activation set with bounded memory.

An activation set is ``manifest.json`` next to ``shards/shard-NNNNN.arrow`` (Arrow IPC
files, :mod:`ssae_steps.activations.shards`); opening one checks its shards against the
manifest cheaply (hashing only shards whose stamp no longer matches), so a truncated,
edited, replaced or foreign shard stops a stage with one line naming the file. Whole sets
(loaded into memory, verified byte for byte, exported) are in
:mod:`ssae_steps.activations.sets`.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps.activations.shards import COLUMNS, Shard, check_set, read_manifest

OPEN_SHARDS = 256  # memory maps a reader keeps open (one file descriptor each)


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

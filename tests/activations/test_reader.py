"""ActivationShardReader: global mixing with bounded memory, epoch contract, shard integrity,
open formats (pyarrow, Hugging Face datasets, the Parquet export)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssae_steps.activations.reader import ActivationShardReader
from ssae_steps.activations.sets import (
    load_activation_set,
    main,
    token_counts,
    verify_activation_set,
    write_activation_set,
)
from ssae_steps.activations.shards import ShardIntegrityError
from ssae_steps.config import ConfigError

D_MODEL = 8


def _set(root: Path, rows: int, shard_rows: int, row_group_rows: int, run_key: str = "array", **kw: object) -> Path:
    acts = np.random.default_rng(0).normal(size=(rows, D_MODEL)).astype(np.float32)
    return write_activation_set(
        acts, root / "manifest.json", shard_rows=shard_rows, row_group_rows=row_group_rows, run_key=run_key, **kw
    )


def _entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _positions(reader: ActivationShardReader) -> list[np.ndarray]:
    return [np.asarray(batch["position"]) for batch in reader]


def test_topic_block_shards_mix_within_first_batches(tmp_path: Path) -> None:
    """Measure: the Shannon entropy of the doc_id (topic) distribution within a batch,
    averaged over the first 5 batches, relative to the topic entropy of the whole set
    (log 8 here). Shards are topic blocks, so reading shards (or a few shards) at a time
    gives batches of one or two topics and a ratio of at most ~1/3."""
    topics, per_topic = 8, 4000
    doc_ids = [f"topic-{t}" for t in range(topics) for _ in range(per_topic)]
    manifest = _set(tmp_path, topics * per_topic, shard_rows=per_topic, row_group_rows=50, doc_ids=doc_ids)
    corpus = _entropy(np.asarray(doc_ids))
    for seed in range(3):
        reader = ActivationShardReader(manifest, batch_size=256, seed=seed, buffer_rows=4096, with_metadata=True)
        assert reader.buffer_rows * 4 <= reader.tokens
        batches = iter(reader)
        mean = np.mean([_entropy(np.asarray(next(batches)["doc_id"])) for _ in range(5)])
        assert mean >= 0.9 * corpus, (seed, mean, corpus)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_row_once_per_epoch_and_reproducible(tmp_path: Path, drop_last: bool) -> None:
    rows, batch = 5003, 64  # not a multiple of the batch size, so drop_last matters
    manifest = _set(tmp_path, rows, shard_rows=700, row_group_rows=90)
    reader = ActivationShardReader(manifest, batch, seed=3, buffer_rows=1000, with_metadata=True, drop_last=drop_last)
    epochs = [_positions(reader) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == len(reader)
        seen = np.concatenate(batches)
        assert len(np.unique(seen)) == len(seen)
        if drop_last:
            assert all(len(b) == batch for b in batches) and len(seen) == rows - rows % batch
        else:
            assert np.array_equal(np.sort(seen), np.arange(rows))
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))

    again = ActivationShardReader(manifest, batch, seed=3, buffer_rows=1000, with_metadata=True, drop_last=drop_last)
    again.epoch = 1  # what the trainer does to resume
    assert all(np.array_equal(a, b) for a, b in zip(_positions(again), epochs[1], strict=True))
    other_seed = ActivationShardReader(manifest, batch, seed=4, buffer_rows=1000, with_metadata=True)
    assert not np.array_equal(np.concatenate(_positions(other_seed)), np.concatenate(epochs[0]))


def test_unshuffled_reader_keeps_file_order_and_values(tmp_path: Path) -> None:
    manifest = _set(tmp_path, 1234, shard_rows=300, row_group_rows=50)
    reader = ActivationShardReader(manifest, 100, shuffle=False, buffer_rows=170, with_metadata=True)
    batches = list(reader)
    assert np.array_equal(np.concatenate([b["position"] for b in batches]), np.arange(1234))
    whole = load_activation_set(manifest)
    assert np.array_equal(np.concatenate([b["activation"].numpy() for b in batches]), whole["activation"])
    assert np.array_equal(whole["position"], np.arange(1234))
    assert len(load_activation_set(manifest, max_rows=400)["activation"]) == 400
    assert token_counts(manifest).tolist() == [1234]


def test_peak_rows_bounded_by_buffer_not_set_size(tmp_path: Path) -> None:
    buffer_rows, row_group, batch = 1000, 125, 96
    manifest = _set(tmp_path, 30 * buffer_rows, shard_rows=2500, row_group_rows=row_group)
    reader = ActivationShardReader(manifest, batch, seed=0, buffer_rows=buffer_rows)
    assert sum(len(x) for x in reader) == reader.tokens
    assert buffer_rows <= reader.peak_rows <= buffer_rows + row_group + batch


def _shard(manifest: Path, i: int) -> Path:
    return manifest.parent / "shards" / f"shard-{i:05d}.arrow"


def _small_set(root: Path, run_key: str = "array") -> Path:
    return _set(root, 1000, shard_rows=250, row_group_rows=50, run_key=run_key)


def test_truncated_shard_is_named(tmp_path: Path) -> None:
    manifest = _small_set(tmp_path)
    shard = _shard(manifest, 1)
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    with pytest.raises(
        ShardIntegrityError, match=f"shard-00001.arrow: {size // 2} bytes, the manifest says {size}"
    ) as err:
        ActivationShardReader(manifest, 64)
    assert str(shard.absolute()) in str(err.value)
    assert isinstance(err.value, ConfigError)
    with pytest.raises(ShardIntegrityError, match="shard-00001"):
        load_activation_set(manifest)


def test_foreign_shard_is_named(tmp_path: Path) -> None:
    manifest = _small_set(tmp_path / "ours")
    other = _small_set(tmp_path / "theirs", run_key="another-run")
    _shard(manifest, 2).write_bytes(_shard(other, 2).read_bytes())
    info = json.loads(manifest.read_text())
    info["shards"][2] = json.loads(other.read_text())["shards"][2]  # a manifest edited to vouch for it
    manifest.write_text(json.dumps(info))
    with pytest.raises(ShardIntegrityError, match="shard-00002.arrow: run key 'another-run'"):
        ActivationShardReader(manifest, 64)


def test_row_count_missing_file_and_old_manifest_are_caught(tmp_path: Path) -> None:
    manifest = _small_set(tmp_path)
    good = manifest.read_text()
    info = json.loads(good)
    info["shards"][0]["rows"] += 1
    manifest.write_text(json.dumps(info))
    with pytest.raises(ShardIntegrityError, match="shard-00000.arrow: 250 rows, the manifest says 251"):
        verify_activation_set(manifest)

    info = json.loads(good)
    del info["shards"][3]["blake3"]
    manifest.write_text(json.dumps(info))
    with pytest.raises(ShardIntegrityError, match="shard-00003.arrow: no blake3.*older ssae"):
        verify_activation_set(manifest)

    manifest.write_text(good)
    _shard(manifest, 3).unlink()
    with pytest.raises(ShardIntegrityError, match="shard-00003.arrow: missing"):
        token_counts(manifest)


def test_verify_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = _small_set(tmp_path / "good"), _small_set(tmp_path / "bad")
    assert verify_activation_set(good) == {"manifest": str(good.absolute()), "shards": 4, "rows": 1000, "ok": True}
    assert main(["verify", "--manifests", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"ok: {good} (4 shards, 1000 rows)"
    shard = _shard(bad, 3)
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["verify", "--manifests", str(good), str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("ok: ") and "shard-00003.arrow" in out.err and out.err.count("\n") == 1


def test_a_replaced_shard_of_the_same_size_is_refused(tmp_path: Path) -> None:
    """Shards 1 and 2 swapped: sizes, footers, row counts and run keys all pass; only the
    digest (hashed again because the stamps no longer match) tells them apart."""
    manifest = _small_set(tmp_path)
    one, two = _shard(manifest, 1).read_bytes(), _shard(manifest, 2).read_bytes()
    assert len(one) == len(two)
    _shard(manifest, 1).write_bytes(two)
    with pytest.raises(ShardIntegrityError, match="shard-00001.arrow: checksum mismatch"):
        ActivationShardReader(manifest, 64)


def test_an_edit_that_keeps_size_and_mtime_is_still_hashed(tmp_path: Path) -> None:
    """A byte changed in place with the mtime put back: the inode's ctime, which no user tool
    sets, still voids the stamp, so the reader hashes the shard and refuses it."""
    import os

    manifest = _small_set(tmp_path)
    shard = _shard(manifest, 0)
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the activation values: the Arrow footer still parses
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert shard.stat().st_mtime_ns == before.st_mtime_ns and shard.stat().st_size == before.st_size
    with pytest.raises(ShardIntegrityError, match="shard-00000.arrow: checksum mismatch"):
        ActivationShardReader(manifest, 64)


class _CountingDigest:
    def __init__(self, real: object) -> None:
        self.real, self.bytes, self.files = real, 0, []

    def __call__(self, path: Path) -> str:
        self.bytes += Path(path).stat().st_size
        self.files.append(Path(path).name)
        return self.real(path)  # type: ignore[operator]


def test_opening_a_set_hashes_nothing_that_was_hashed_when_written(tmp_path: Path, monkeypatch) -> None:
    """Bytes counted, not timed: a set written here opens and streams one epoch without
    hashing a byte (its stamps vouch for every shard), so a reader passes over the set's
    bytes once. A touched shard is hashed once, by the first reader after the touch, and
    ``verify`` hashes every byte of every shard."""
    import os

    from ssae_steps.activations import shards as activation_shards

    manifest = _small_set(tmp_path)
    shards = sorted((manifest.parent / "shards").glob("*.arrow"))
    counter = _CountingDigest(activation_shards.file_digest)
    monkeypatch.setattr(activation_shards, "file_digest", counter)

    reader = ActivationShardReader(manifest, 64, seed=0)
    rows = sum(len(batch) for batch in reader)
    assert rows == 1000 and counter.bytes == 0
    assert reader.bytes_read == 1000 * D_MODEL * 4  # each stored activation byte once per epoch

    os.utime(shards[2])  # touched (copied, restored from a backup...): no longer vouched for
    ActivationShardReader(manifest, 64)
    assert counter.files == [shards[2].name] and counter.bytes == shards[2].stat().st_size
    ActivationShardReader(manifest, 64)  # re-stamped by the reader that hashed it
    assert counter.files == [shards[2].name]

    counter.bytes, counter.files = 0, []
    verify_activation_set(manifest)
    assert counter.bytes == sum(p.stat().st_size for p in shards) and sorted(counter.files) == [p.name for p in shards]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_is_bit_exact_and_shards_open_with_pyarrow_and_datasets(tmp_path: Path, dtype: str) -> None:
    """What is stored is exactly the input in the set's dtype; the reader, pyarrow alone
    (memory-mapped), Hugging Face ``datasets`` (the real package) and the Parquet export
    all give those same values."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ssae_steps.activations.sets import export_parquet

    rng = np.random.default_rng(5)
    acts = (rng.standard_normal((900, D_MODEL)) * 30).astype(np.float32)
    tokens = rng.integers(0, 500, 900)
    manifest = write_activation_set(
        acts, tmp_path / "set" / "manifest.json", shard_rows=400, row_group_rows=128, token_ids=tokens, dtype=dtype
    )
    stored = acts.astype(dtype)
    loaded = load_activation_set(manifest)
    assert loaded["activation"].dtype == np.float32
    assert np.array_equal(loaded["activation"], stored.astype(np.float32))
    assert np.array_equal(loaded["token_id"], tokens)
    streamed = np.concatenate([b.numpy() for b in ActivationShardReader(manifest, 100, shuffle=False)])
    assert np.array_equal(streamed, stored.astype(np.float32))

    files = sorted(str(p) for p in (manifest.parent / "shards").glob("*.arrow"))
    with pa.memory_map(files[0]) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.schema.metadata[b"ssae.run_key"] == json.loads(manifest.read_text())["run_key"].encode()
    first = np.stack(table["activation"].to_numpy(zero_copy_only=False))
    assert first.dtype == np.dtype(dtype) and np.array_equal(first, stored[:400])

    hf = datasets.load_dataset("arrow", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == 900 and hf.column_names == ["doc_id", "position", "token_id", "activation"]
    hf_acts = np.asarray(hf.with_format("numpy")["activation"])
    assert np.array_equal(hf_acts.astype(np.float32), stored.astype(np.float32))
    assert np.array_equal(np.asarray(hf["token_id"]), tokens)

    exported = export_parquet(manifest, tmp_path / "export")
    parquet = pq.read_table(sorted((tmp_path / "export").glob("*.parquet")))
    assert np.array_equal(np.stack(parquet["activation"].to_numpy(zero_copy_only=False)), stored)
    assert exported["format"] == "parquet" and exported["tokens"] == 900
    assert json.loads((tmp_path / "export" / "manifest.json").read_text())["shards"] == exported["shards"]


def test_export_cli_refuses_a_damaged_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _small_set(tmp_path / "set")
    assert main(["export", "--manifest", str(manifest), "--out-dir", str(tmp_path / "out")]) == 0
    assert "exported:" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("shard-*.parquet"))) == 4
    _shard(manifest, 0).write_bytes(b"not arrow")
    assert main(["export", "--manifest", str(manifest), "--out-dir", str(tmp_path / "out2")]) == 2
    assert "shard-00000.arrow" in capsys.readouterr().err and not (tmp_path / "out2" / "manifest.json").exists()


def test_batches_are_prepared_ahead_and_an_early_stop_ends_the_thread(tmp_path: Path) -> None:
    """The prefetch thread yields the same batches as reading inline would (resuming at a
    batch gives the tail of the same epoch), stops when the consumer stops, and hands its
    errors (a shard gone after opening) to the consumer."""
    import threading

    manifest = _set(tmp_path, 5000, shard_rows=1000, row_group_rows=100)
    reader = ActivationShardReader(manifest, 64, seed=2, buffer_rows=700)
    whole = [b.numpy() for b in reader.iter_epoch(3)]
    tail = [b.numpy() for b in reader.iter_epoch(3, skip=40)]
    assert len(tail) == len(whole) - 40 and all(np.array_equal(a, b) for a, b in zip(whole[40:], tail, strict=True))

    before = threading.active_count()
    unstarted = iter(reader)  # asked for no batch: no thread yet
    assert threading.active_count() == before
    del unstarted
    for i, _ in enumerate(reader):
        if i == 2:
            break
    assert threading.active_count() == before

    opened = ActivationShardReader(manifest, 64, seed=2, buffer_rows=700)  # checked, nothing mapped yet
    _shard(manifest, 3).unlink()
    with pytest.raises(ShardIntegrityError, match="shard-00003.arrow"):
        for _ in opened:
            pass
    assert threading.active_count() == before


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches(tmp_path: Path) -> None:
    """Pinned host buffers and asynchronous copies give the CPU path's values, on the device."""
    manifest = _set(tmp_path, 6000, shard_rows=1000, row_group_rows=250)
    cpu = [b.numpy() for b in ActivationShardReader(manifest, 128, seed=1, buffer_rows=900)]
    gpu = list(ActivationShardReader(manifest, 128, seed=1, buffer_rows=900, device="cuda"))
    assert all(b.is_cuda and b.dtype == __import__("torch").float32 for b in gpu)
    assert all(np.array_equal(a, b.cpu().numpy()) for a, b in zip(cpu, gpu, strict=True))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_reused_buffers_give_the_same_batches(tmp_path: Path, dtype: str) -> None:
    """The trainer's ring of reused output buffers: each batch, read before the next is
    asked for, equals the freshly allocated batch; float16 and float32 sets."""
    acts = np.random.default_rng(3).normal(size=(3000, D_MODEL)).astype(np.float32)
    manifest = write_activation_set(acts, tmp_path / "m.json", shard_rows=700, row_group_rows=100, dtype=dtype)
    fresh = [b.numpy() for b in ActivationShardReader(manifest, 128, seed=4, buffer_rows=500)]
    reused = [
        b.numpy().copy() for b in ActivationShardReader(manifest, 128, seed=4, buffer_rows=500, reuse_buffers=True)
    ]
    assert len(fresh) == len(reused) and all(np.array_equal(a, b) for a, b in zip(fresh, reused, strict=True))


def test_the_vectorised_float16_cast_is_numpys_cast_bit_for_bit() -> None:
    """Shards store float32 -> float16 through torch's vectorised conversion; it must give
    numpy's bits (round to nearest even, subnormals, signed zero), or cached values and
    every SAE trained on them would change with the format."""
    from ssae_steps.activations.writer import cast_into

    rng = np.random.default_rng(0)
    edge = np.array(
        [0.0, -0.0, 6.1e-5, 5.96e-8, 2.98e-8, 1e-9, 65504.0, 65519.0, 1 + 2**-11, 1 + 3 * 2**-11, -(2**-24) * 1.5],
        np.float32,
    )
    for values in (edge, rng.standard_normal(200_000).astype(np.float32) * 1e-5, rng.standard_normal(200_000) * 1e3):
        values = np.asarray(values, np.float32).reshape(-1, 1)
        target = np.empty(values.shape, np.float16)
        cast_into(target, values)
        assert np.array_equal(target.view(np.uint16), values.astype(np.float16).view(np.uint16))


def test_batches_are_the_parquet_readers_batches(tmp_path: Path) -> None:
    """The same rows cached by the previous Parquet writer (kept in bench/ for the store
    benchmark) and by today's writer give the same shuffled batches, value for value and
    in the same order: the format change cannot change an SAE trained from a cache."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import legacy_parquet_store as legacy

    from ssae_steps.activations.writer import ShardWriter

    rng = np.random.default_rng(9)
    rows, d_model, shard_rows = 20_000, 16, 6_000  # 4 shards, row groups / record batches of 4096
    acts = rng.standard_normal((rows, d_model)).astype(np.float32)
    ids, pos, tok = [f"d{i // 50}" for i in range(rows)], np.arange(rows) % 50, rng.integers(0, 99, rows)
    old, new = tmp_path / "old", tmp_path / "new"
    old_writer = legacy.LegacyShardWriter(old / "shards", "k", d_model, shard_rows)
    with ShardWriter(new / "shards", "k", d_model, "float16", shard_rows) as new_writer:
        for start in range(0, rows, 1_500):
            chunk = slice(start, start + 1_500)
            old_writer.add(ids[chunk], pos[chunk], tok[chunk], acts[chunk])
            new_writer.add(ids[chunk], pos[chunk], tok[chunk], acts[chunk])
        entries = new_writer.close()
    (old / "manifest.json").write_text(
        json.dumps({"d_model": d_model, "tokens": rows, "shards": old_writer.close(), "run_key": "k"})
    )
    (new / "manifest.json").write_text(
        json.dumps({"d_model": d_model, "tokens": rows, "shards": entries, "run_key": "k", "dtype": "float16"})
    )
    for seed in (0, 5):
        before = [b.numpy() for b in legacy.legacy_epoch(old / "manifest.json", 512, seed=seed, buffer_rows=9_000)]
        after = ActivationShardReader(new / "manifest.json", 512, seed=seed, buffer_rows=9_000)
        now = [b.numpy() for b in after]
        assert len(now) == len(before) and all(np.array_equal(a, b) for a, b in zip(before, now, strict=True))


def test_recaching_clears_this_range_of_stale_shards_stamps_and_parquet_leftovers(tmp_path: Path) -> None:
    """What a re-cache of shards [0, 2) starts from: the complete shards of the same run are
    kept; a shard of another run, its stamp and an older ssae's Parquet shard in the range
    are removed; another part's files (index 2 on) are left alone."""
    from ssae_steps.activations.shards import complete_shards

    manifest = write_activation_set(np.ones((40, D_MODEL), np.float32), tmp_path / "m.json", shard_rows=10, run_key="a")
    shards = tmp_path / "shards"
    (shards / "shard-00001.parquet").write_bytes(b"old format")
    (shards / "shard-00002.parquet").write_bytes(b"another part's")
    kept = complete_shards(shards, "a", 10, first=0, last=2)
    assert [e["file"] for e in kept] == ["shard-00000.arrow", "shard-00001.arrow"]
    assert not (shards / "shard-00001.parquet").exists() and (shards / "shard-00002.parquet").exists()
    assert complete_shards(shards, "b", 10, first=0, last=2) == []  # another run: nothing kept
    left = sorted(p.name for p in shards.iterdir())
    assert left[:3] == ["shard-00002.arrow", "shard-00002.arrow.verified", "shard-00002.parquet"]
    assert json.loads(manifest.read_text())["tokens"] == 40

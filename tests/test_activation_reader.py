"""ActivationShardReader: global mixing with bounded memory, epoch contract, shard integrity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssae_steps._config import ConfigError
from ssae_steps.activation_reader import (
    ActivationShardReader,
    ShardIntegrityError,
    load_activation_set,
    main,
    token_counts,
    verify_activation_set,
    write_activation_set,
)

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
    return manifest.parent / "shards" / f"shard-{i:05d}.parquet"


def _small_set(root: Path, run_key: str = "array") -> Path:
    return _set(root, 1000, shard_rows=250, row_group_rows=50, run_key=run_key)


def test_truncated_shard_is_named(tmp_path: Path) -> None:
    manifest = _small_set(tmp_path)
    shard = _shard(manifest, 1)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ShardIntegrityError, match="shard-00001.parquet: checksum mismatch") as err:
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
    info["shards"][2]["sha256"] = json.loads(other.read_text())["shards"][2]["sha256"]
    manifest.write_text(json.dumps(info))
    with pytest.raises(ShardIntegrityError, match="shard-00002.parquet: run key 'another-run'"):
        ActivationShardReader(manifest, 64)


def test_row_count_missing_file_and_old_manifest_are_caught(tmp_path: Path) -> None:
    manifest = _small_set(tmp_path)
    good = manifest.read_text()
    info = json.loads(good)
    info["shards"][0]["rows"] += 1
    manifest.write_text(json.dumps(info))
    with pytest.raises(ShardIntegrityError, match="shard-00000.parquet: 250 rows, the manifest says 251"):
        verify_activation_set(manifest)

    info = json.loads(good)
    del info["shards"][3]["sha256"]
    manifest.write_text(json.dumps(info))
    with pytest.raises(ShardIntegrityError, match="shard-00003.parquet: no sha256.*older ssae"):
        verify_activation_set(manifest)

    manifest.write_text(good)
    _shard(manifest, 3).unlink()
    with pytest.raises(ShardIntegrityError, match="shard-00003.parquet: missing"):
        token_counts(manifest)


def test_verify_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = _small_set(tmp_path / "good"), _small_set(tmp_path / "bad")
    assert verify_activation_set(good) == {"manifest": str(good.absolute()), "shards": 4, "rows": 1000, "ok": True}
    assert main(["verify", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"ok: {good} (4 shards, 1000 rows)"
    shard = _shard(bad, 3)
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["verify", str(good), str(bad)]) == 1
    out = capsys.readouterr()
    assert out.out.startswith("ok: ") and "shard-00003.parquet" in out.err and out.err.count("\n") == 1

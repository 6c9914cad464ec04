"""Activation shards: exact values, token counts, representative caps, random write order,
reader coverage, resume after a crash and re-caching after a model change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from ssae_steps.activations.cache import cache_activations, make_windows, tokenize_windows
from ssae_steps.activations.config import ActivationConfig
from ssae_steps.activations.reader import ActivationShardReader
from ssae_steps.data.config import CorpusConfig
from ssae_steps.data.corpus import build_corpus
from ssae_steps.model import load_model

LAYER = 2


@pytest.fixture(scope="module")
def corpus(small_corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("act_corpus")
    cfg = CorpusConfig.from_dict(
        {"heldout_fraction": 0.2, "sources": [{"kind": "jsonl", "path": str(small_corpora["physics"])}]}, "corpora.p"
    )
    build_corpus("p", cfg, 0, root / "docs.parquet", root / "summary.json")
    return root / "docs.parquet"


def _cfg(**kw) -> ActivationConfig:
    base = {
        "context_length": 48,
        "batch_size": 4,
        "dtype": "float32",
        "shard_tokens": 1000,
        "max_train_tokens": None,
        "max_heldout_tokens": None,
    }
    return ActivationConfig.from_dict({**base, **kw})


def _shard_frame(path: Path) -> pd.DataFrame:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all().to_pandas()


def _rows(manifest: Path) -> pd.DataFrame:
    info = json.loads(manifest.read_text())
    frames = [_shard_frame(manifest.parent / "shards" / s["file"]) for s in info["shards"]]
    return pd.concat(frames, ignore_index=True)


def test_cached_activations_match_direct_forward(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    info = cache_activations(_cfg(), tiny_model_dir, LAYER, corpus, "train", tmp_path / "manifest.json")
    rows = _rows(tmp_path / "manifest.json")
    assert len(rows) == info["tokens"] == sum(s["rows"] for s in info["shards"])
    assert not rows.duplicated(["doc_id", "position"]).any()

    model, tok = load_model(tiny_model_dir)
    docs = pd.read_parquet(corpus).set_index("doc_id")
    hidden_at = {}
    model.model.layers[LAYER].register_forward_hook(lambda m, i, o: hidden_at.__setitem__("h", o))
    for doc_id in rows["doc_id"].unique()[:5]:
        ids = tok(docs.loc[doc_id, "text"], add_special_tokens=False).input_ids
        first_window = [tok.bos_token_id] + ids[:47]  # BOS + context_length - 1 tokens
        with torch.inference_mode():
            model(torch.tensor([first_window]))
        want = hidden_at["h"][0, 1:].numpy()
        got = rows[(rows["doc_id"] == doc_id) & (rows["position"] < 47)].sort_values("position")
        assert got["token_id"].tolist() == ids[:47]
        np.testing.assert_allclose(np.stack(got["activation"].to_numpy()), want, rtol=1e-4, atol=1e-4)

    stats = info["stats"]
    acts = np.stack(rows["activation"].to_numpy()).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], acts.mean(0), rtol=1e-6, atol=1e-6)
    assert stats["norm_mean"] == pytest.approx(np.linalg.norm(acts, axis=1).mean(), rel=1e-6)


def test_token_counts_match_tokenizer(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    _, tok = load_model(tiny_model_dir)
    docs = pd.read_parquet(corpus)
    held = docs[docs["split"] == "heldout"]
    want = sum(len(ids) for ids in tok(held["text"].tolist(), add_special_tokens=False).input_ids)
    info = cache_activations(_cfg(dtype="float16"), tiny_model_dir, LAYER, corpus, "heldout", tmp_path / "m.json")
    assert info["tokens"] == want
    assert info["documents"] == len(held)
    assert set(_rows(tmp_path / "m.json")["doc_id"]) == set(held["doc_id"])


def test_caps_and_exclusion(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    info = cache_activations(_cfg(max_train_tokens=700), tiny_model_dir, LAYER, corpus, "all", tmp_path / "a.json")
    assert 600 < info["tokens"] <= 700  # whole windows of at most 47 tokens
    cache_activations(_cfg(), tiny_model_dir, LAYER, corpus, "all", tmp_path / "b.json", exclude_heldout_of=[corpus])
    docs = pd.read_parquet(corpus)
    assert set(_rows(tmp_path / "b.json")["doc_id"]) == set(docs.loc[docs["split"] == "train", "doc_id"])


def test_windows() -> None:
    windows = make_windows([[1] * 10, [2] * 3], context_length=5, max_tokens=None)
    assert [(w.doc, w.start, len(w.ids)) for w in windows] == [(0, 0, 4), (0, 4, 4), (0, 8, 2), (1, 0, 3)]
    assert len(make_windows([[1] * 10, [2] * 3], 5, max_tokens=9)) == 2


def test_reader_visits_every_token_once_per_epoch(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    info = cache_activations(_cfg(shard_tokens=500), tiny_model_dir, LAYER, corpus, "train", tmp_path / "m.json")
    assert len(info["shards"]) >= 4
    reader = ActivationShardReader(tmp_path / "m.json", batch_size=64, seed=1, buffer_rows=800, with_metadata=True)
    orders = []
    for _ in range(2):
        seen = []
        for batch in reader:
            assert batch["activation"].dtype == torch.float32 and batch["activation"].shape[1] == 64
            seen += list(zip(batch["doc_id"], batch["position"], strict=True))
        assert len(seen) == len(set(seen)) == info["tokens"]
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled per epoch
    assert set(orders[0]) == set(orders[1])
    assert reader.peak_rows <= 3 * 500  # bounded by shards in memory, not corpus size
    assert len(reader) == -(-info["tokens"] // 64)


def test_resume_after_crash_keeps_shards_and_writes_no_duplicates(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssae_steps.model as model_module

    clean = cache_activations(
        _cfg(shard_tokens=300), tiny_model_dir, LAYER, corpus, "train", tmp_path / "clean" / "m.json"
    )
    real = model_module.residual_stream
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt  # killed mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "residual_stream", crashing)
    manifest = tmp_path / "run" / "m.json"
    with pytest.raises(KeyboardInterrupt):
        cache_activations(_cfg(shard_tokens=300), tiny_model_dir, LAYER, corpus, "train", manifest)
    assert not manifest.exists()
    kept = sorted((manifest.parent / "shards").glob("shard-*.arrow"))
    assert kept and not list((manifest.parent / "shards").glob(".*"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in kept}

    monkeypatch.setattr(model_module, "residual_stream", real)
    resumed = cache_activations(_cfg(shard_tokens=300), tiny_model_dir, LAYER, corpus, "train", manifest)
    assert all((manifest.parent / "shards" / n).stat().st_mtime_ns == t for n, t in mtimes.items())
    assert resumed["tokens"] == clean["tokens"]
    a, b = _rows(manifest), _rows(tmp_path / "clean" / "m.json")
    assert not a.duplicated(["doc_id", "position"]).any()
    pd.testing.assert_frame_equal(a.drop(columns="activation"), b.drop(columns="activation"))
    np.testing.assert_allclose(np.stack(a["activation"]), np.stack(b["activation"]), atol=1e-5)
    np.testing.assert_allclose(resumed["stats"]["mean"], clean["stats"]["mean"], atol=1e-6)


class WordTokenizer:
    """Whitespace tokenizer with the Hugging Face call signature the cap code uses."""

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[len(word) for word in text.split()] for text in texts]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_capped_set_keeps_every_topic_near_its_share(seed: int) -> None:
    """A topic-grouped corpus (12 topics in contiguous runs, as the shipped Wikipedia data
    is) capped at 20% of its tokens: every topic's token share in the capped set is within
    0.04 (absolute; shares are ~0.083, with ~700 documents sampled the binomial standard
    deviation is ~0.01) of its share in the whole corpus."""
    rng = np.random.default_rng(100 + seed)
    topics, texts = [], []
    for topic in range(12):
        for _ in range(300):
            topics.append(topic)
            texts.append(" ".join("w" * int(rng.integers(1, 9)) for _ in range(int(rng.integers(20, 100)))))
    lengths = np.array([len(t.split()) for t in texts])
    cap = int(0.2 * lengths.sum())
    windows = tokenize_windows(WordTokenizer(), texts, context_length=32, max_tokens=cap, seed=seed)
    taken = np.zeros(12)
    for w in windows:
        taken[topics[w.doc]] += len(w.ids)
    assert cap - 31 < taken.sum() <= cap
    corpus_share = np.bincount(topics, weights=lengths) / lengths.sum()
    np.testing.assert_allclose(taken / taken.sum(), corpus_share, atol=0.04)


def _topic_corpus(small_corpora: dict[str, Path], root: Path) -> Path:
    """Real Wikipedia summaries of three topics, grouped by topic as the shipped data is."""
    from tests.conftest import wiki_texts

    path = root / "grouped.jsonl"
    with path.open("w") as handle:
        for topic in ("Physical sciences", "History", "Arts"):
            for row in wiki_texts(40, topic):
                handle.write(json.dumps({"text": row["text"], "topic": topic}) + "\n")
    cfg = CorpusConfig.from_dict(
        {"heldout_fraction": 0.1, "sources": [{"kind": "jsonl", "path": str(path), "label_fields": ["topic"]}]}, "c"
    )
    build_corpus("c", cfg, 0, root / "docs.parquet", root / "summary.json")
    return root / "docs.parquet"


def test_manifest_reports_mix_and_shards_mix_topics(tiny_model_dir: Path, small_corpora: dict, tmp_path: Path) -> None:
    """The capped set's topic mix is reported beside the split's, and the first shard -
    written in random window order - already holds every topic."""
    table = _topic_corpus(small_corpora, tmp_path)
    cfg = _cfg(shard_tokens=400, max_train_tokens=2400)
    info = cache_activations(cfg, tiny_model_dir, LAYER, table, "all", tmp_path / "m.json", seed=3)
    topics = {"Physical sciences", "History", "Arts"}
    assert set(info["mix"]["documents"]["topic"]) == set(info["split_mix"]["documents"]["topic"]) == topics
    assert set(info["mix"]["tokens"]["source"]) == {"jsonl:grouped.jsonl"}
    for shares in (info["mix"]["documents"]["topic"], info["split_mix"]["characters"]["topic"]):
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)
    docs = pd.read_parquet(table).set_index("doc_id")
    first = _shard_frame(tmp_path / "shards" / info["shards"][0]["file"])
    assert set(docs.loc[first["doc_id"].unique(), "topic"]) == {"Physical sciences", "History", "Arts"}
    # Windows stay contiguous: within a shard a document's positions of one window follow each other.
    for _, rows in first.groupby("doc_id", sort=False):
        for _, window in rows.groupby(rows["position"] // 47):
            assert np.all(np.diff(window.index.to_numpy()) == 1)
    # Another seed samples other documents under the same cap.
    other = cache_activations(cfg, tiny_model_dir, LAYER, table, "all", tmp_path / "o" / "m.json", seed=4)
    assert set(_rows(tmp_path / "o" / "m.json")["doc_id"]) != set(_rows(tmp_path / "m.json")["doc_id"])
    assert other["run_key"] != info["run_key"]


def test_new_weights_under_the_same_path_are_recached(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    """The run key holds the model directory's content, so replacing the weights in place
    re-caches every shard instead of keeping the complete ones of the old model."""
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    manifest = tmp_path / "acts" / "m.json"
    before = cache_activations(_cfg(shard_tokens=300), model_dir, LAYER, corpus, "train", manifest)
    old = _rows(manifest)
    weights = load_file(model_dir / "model.safetensors")
    name = next(k for k in weights if "layers.0.mlp.down_proj" in k)
    weights[name] = weights[name] * 3.0
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    after = cache_activations(_cfg(shard_tokens=300), model_dir, LAYER, corpus, "train", manifest)
    assert after["run_key"] != before["run_key"] and after["model_digest"] != before["model_digest"]
    new = _rows(manifest)
    pd.testing.assert_frame_equal(old.drop(columns="activation"), new.drop(columns="activation"))
    # Every shard changed, the first (complete) ones included.
    for shard in range(len(after["shards"])):
        rows = slice(shard * 300, (shard + 1) * 300)
        assert not np.allclose(np.stack(old["activation"][rows]), np.stack(new["activation"][rows]))


def test_parts_write_the_single_jobs_shards_and_gather_into_its_manifest(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """Three part jobs (in reverse order, as a cluster may finish them) and the gather give
    byte-identical shards and the same manifest as one job; bad gathers fail by name."""
    from ssae_steps.activations.gather import gather_parts, part_shards

    cfg = _cfg(shard_tokens=700)
    whole = cache_activations(cfg, tiny_model_dir, LAYER, corpus, "train", tmp_path / "one" / "manifest.json")
    assert len(whole["shards"]) >= 5  # parts of more than one shard, and a partial last shard
    part_files = [tmp_path / "set" / "parts" / f"{i}-of-3.json" for i in range(3)]
    stamps: dict[str, int] = {}
    for i in reversed(range(3)):
        part = cache_activations(cfg, tiny_model_dir, LAYER, corpus, "train", part_files[i], part=(i, 3))
        assert part["shard_range"] == list(part_shards(whole["tokens"], 700, i, 3))
        # A part never touches another part's shards.
        assert all((tmp_path / "set" / "shards" / n).stat().st_mtime_ns == t for n, t in stamps.items())
        stamps |= {s["file"]: (tmp_path / "set" / "shards" / s["file"]).stat().st_mtime_ns for s in part["shards"]}
    gathered = gather_parts(part_files, tmp_path / "set" / "manifest.json")
    assert gathered["shards"] == whole["shards"]  # names, rows and SHA-256 of every shard
    for entry in whole["shards"]:
        one, set_ = (tmp_path / d / "shards" / entry["file"] for d in ("one", "set"))
        assert one.read_bytes() == set_.read_bytes()
    assert gathered["run_key"] == whole["run_key"] and gathered["tokens"] == whole["tokens"]
    for key, value in whole["stats"].items():
        np.testing.assert_allclose(gathered["stats"][key], value, rtol=1e-6, atol=1e-7)  # float32 partial sums
    assert gathered["mix"] == whole["mix"]
    reader = ActivationShardReader(tmp_path / "set" / "manifest.json", 256, seed=3)
    assert sum(len(x) for x in reader) == whole["tokens"]

    from ssae_steps.config import ConfigError

    with pytest.raises(ConfigError, match=r"parts \[0, 2\] are not 0..2"):
        gather_parts([part_files[0], part_files[2]], tmp_path / "bad.json")
    broken = json.loads(part_files[1].read_text()) | {"run_key": "other"}
    part_files[1].write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match="different runs"):
        gather_parts(part_files, tmp_path / "bad.json")


def test_a_killed_part_resumes_its_own_shards(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssae_steps.model as model_module

    cfg = _cfg(shard_tokens=300)
    whole = cache_activations(cfg, tiny_model_dir, LAYER, corpus, "train", tmp_path / "one" / "manifest.json")
    real, calls = model_module.residual_stream, {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 25:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    part = tmp_path / "set" / "parts" / "1-of-2.json"
    monkeypatch.setattr(model_module, "residual_stream", crashing)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(cfg, tiny_model_dir, LAYER, corpus, "train", part, part=(1, 2))
    kept = sorted((tmp_path / "set" / "shards").glob("shard-*.arrow"))
    assert kept and not part.exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in kept}
    monkeypatch.setattr(model_module, "residual_stream", real)
    info = cache_activations(cfg, tiny_model_dir, LAYER, corpus, "train", part, part=(1, 2))
    assert all((tmp_path / "set" / "shards" / n).stat().st_mtime_ns == t for n, t in stamps.items())
    first, last = info["shard_range"]
    assert info["shards"] == whole["shards"][first:last] and first > 0

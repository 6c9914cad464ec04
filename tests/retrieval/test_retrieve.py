"""Data selection: planted known answers, budgets, held-out exclusion, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssae_steps.config import ConfigError
from ssae_steps.data.config import CorpusConfig
from ssae_steps.data.corpus import build_corpus
from ssae_steps.retrieval.config import EmbedderConfig, IndexConfig, RetrievalConfig
from ssae_steps.retrieval.embed import embed_corpus, embed_texts, gather_embeddings, load_embedder
from ssae_steps.retrieval.index import build_index, build_pool_index, search
from ssae_steps.retrieval.retrieve import DenseInputs, rank_by_max_score, select, take_within_budget
from tests.conftest import wiki_texts

N_PLANTED = 8


def _drop_first_sentence(text: str) -> str:
    return text.split(". ", 1)[1] if ". " in text else text[len(text) // 3 :]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict:
    """Seed: physics articles. Pool: other topics, plus for each of the first N_PLANTED
    seeds a planted copy without its first sentence - the known right answers."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("retrieval")
    physics = wiki_texts(40, "Physical sciences")
    others = [r for r in wiki_texts(700) if r["topic"] != "Physical sciences"][:300]
    seed_rows = [{"text": r["text"], "topic": r["topic"]} for r in physics]
    planted_rows = [{"text": _drop_first_sentence(r["text"]), "topic": "planted"} for r in physics[:N_PLANTED]]
    pool_rows = [{"text": r["text"], "topic": r["topic"]} for r in others] + planted_rows
    tables = {}
    for name, rows, role, frac in [("sub", seed_rows, "subdomain", 0.2), ("pool", pool_rows, "general", 0.1)]:
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = {
            "role": role,
            "heldout_fraction": frac,
            "min_chars": 50,
            "sources": [{"kind": "jsonl", "path": str(root / f"{name}.jsonl"), "label_fields": ["topic"]}],
        }
        cfg = CorpusConfig.from_dict(spec, f"corpora.{name}")
        build_corpus(name, cfg, 0, root / name / "docs.parquet", root / name / "summary.json")
        tables[name] = root / name / "docs.parquet"
    emb = EmbedderConfig()
    for name in ("sub", "pool"):
        embed_corpus(emb, tables[name], root / f"{name}.npy", root / f"{name}.json")
    build_pool_index(
        IndexConfig(), root / "pool.npy", root / "pool.json", root / "pool.faiss", root / "pool.faiss.json"
    )
    dense = DenseInputs(root / "pool.npy", root / "pool.json", root / "pool.faiss", root / "sub.npy", root / "sub.json")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return {"root": root, "tables": tables, "dense": dense, "tokenizer": tokenizer}


def _run(planted: dict, strategy: str, budget: int, **cfg) -> tuple[pd.DataFrame, dict]:
    root = planted["root"] / strategy / str(budget)
    config = RetrievalConfig.from_dict({"token_budget": budget, **cfg})
    summary = select(
        strategy,
        config,
        planted["tables"]["sub"],
        planted["tables"]["pool"],
        planted["tokenizer"],
        root / "docs.parquet",
        root / "summary.json",
        seed=0,
        dense_inputs=planted["dense"],
    )
    return pd.read_parquet(root / "docs.parquet"), summary


def _planted_answers(planted: dict) -> set[str]:
    pool = pd.read_parquet(planted["tables"]["pool"])
    sub = pd.read_parquet(planted["tables"]["sub"])
    train_seeds = set(sub.loc[sub["split"] == "train", "text"].map(_drop_first_sentence))
    hits = pool[(pool["topic"] == "planted") & (pool["split"] == "train") & pool["text"].isin(train_seeds)]
    return set(hits["doc_id"])


@pytest.mark.parametrize("strategy", ["dense", "bm25"])
def test_planted_documents_come_first(planted: dict, strategy: str) -> None:
    answers = _planted_answers(planted)
    assert len(answers) >= 4
    df, _ = _run(planted, strategy, 4000, include_seed=False)
    assert (df["origin"] == "retrieved").all()
    retrieved = df[df["origin"] == "retrieved"].sort_values("rank")
    assert set(retrieved["doc_id"].iloc[: len(answers)]) == answers
    sub = pd.read_parquet(planted["tables"]["sub"]).set_index("doc_id")
    for row in retrieved.iloc[: len(answers)].itertuples():
        assert _drop_first_sentence(sub.loc[row.seed_doc_id, "text"]) == row.text  # pulled in by its own seed
    assert retrieved["score"].is_monotonic_decreasing


@pytest.mark.parametrize("strategy", ["seed", "dense", "bm25", "random", "seed_random"])
def test_budget_heldout_and_uniqueness(planted: dict, strategy: str) -> None:
    sub = pd.read_parquet(planted["tables"]["sub"])
    train_texts = sub.loc[sub["split"] == "train", "text"].tolist()
    seed_tokens = sum(len(ids) for ids in planted["tokenizer"](train_texts, add_special_tokens=False).input_ids)
    budget = seed_tokens + 3000
    df, summary = _run(planted, strategy, budget)
    assert df["doc_id"].is_unique
    assert summary["tokens"] == df["n_tokens"].sum() <= budget
    counted = [len(planted["tokenizer"](t, add_special_tokens=False).input_ids) for t in df["text"]]
    assert counted == df["n_tokens"].tolist()
    pool = pd.read_parquet(planted["tables"]["pool"])
    heldout = set(pool.loc[pool["split"] == "heldout", "doc_id"]) | set(sub.loc[sub["split"] == "heldout", "doc_id"])
    assert not heldout & set(df["doc_id"])
    seeds = df[df["origin"] == "seed"]
    if strategy == "random":
        # The general-data control: pool text only, not one subdomain document.
        assert seeds.empty and summary["seed_tokens"] == 0 and not set(df["doc_id"]) & set(sub["doc_id"])
    else:
        assert set(seeds["doc_id"]) == set(sub.loc[sub["split"] == "train", "doc_id"])
        assert summary["seed_tokens"] == seed_tokens
    if strategy != "seed":
        # Stopped by the budget: the largest pool document would not have fitted.
        largest = max(
            len(ids) for ids in planted["tokenizer"](pool["text"].tolist(), add_special_tokens=False).input_ids
        )
        assert 0 <= budget - summary["tokens"] < largest
        assert summary["retrieved_tokens"] > 2000
        assert not set(df.loc[df["origin"] == "retrieved", "doc_id"]) & set(sub["doc_id"])


def test_random_is_seeded(planted: dict) -> None:
    a, _ = _run(planted, "random", 5000)
    b, _ = _run(planted, "random", 5000)
    assert a["doc_id"].tolist() == b["doc_id"].tolist()


def test_bad_inputs(planted: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"retrieval.token_budget: 10,000,000 tokens is more than"):
        _run(planted, "dense", 10_000_000)
    tables = planted["tables"]
    cfg = RetrievalConfig()
    with pytest.raises(ConfigError, match=r"retrieval.subdomain: the seed set .* is larger than the retrievable pool"):
        select("bm25", cfg, tables["pool"], tables["sub"], planted["tokenizer"], tmp_path / "a", tmp_path / "b")
    only_heldout = pd.read_parquet(tables["sub"]).assign(split="heldout")
    only_heldout.to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ConfigError, match=r"the seed set has no training documents"):
        select(
            "seed",
            cfg,
            tmp_path / "empty.parquet",
            tables["pool"],
            planted["tokenizer"],
            tmp_path / "a",
            tmp_path / "b",
        )
    with pytest.raises(ConfigError, match=r"file .*missing.parquet: corpus table not found"):
        select(
            "seed",
            cfg,
            tmp_path / "missing.parquet",
            tables["pool"],
            planted["tokenizer"],
            tmp_path / "a",
            tmp_path / "b",
        )
    with pytest.raises(ConfigError, match=r"retrieval.strategies: duplicates"):
        RetrievalConfig.from_dict({"strategies": ["dense", "dense"]})
    with pytest.raises(ConfigError, match=r"retrieval.embedder.name: local embedder directory"):
        load_embedder(EmbedderConfig(source="local", name=str(tmp_path / "nope")))
    assert not (tmp_path / "a").exists()


def test_embedding_parts_gather_to_one_jobs_vectors(planted: dict, tmp_path: Path) -> None:
    """Three parts of the seed table, embedded in reverse order and gathered, give one job's
    doc ids and meta and its vectors up to float rounding (each part batches its documents
    by length on its own); a missing part or a part of another table is refused."""
    root, table, cfg = planted["root"], planted["tables"]["sub"], EmbedderConfig(parts=3)
    whole = json.loads((root / "sub.json").read_text())
    metas = [tmp_path / f"{i}-of-3.json" for i in range(3)]
    for i in reversed(range(3)):
        embed_corpus(cfg, table, metas[i].with_suffix(".npy"), metas[i], part=(i, 3))
    sizes = [len(json.loads(m.read_text())["doc_ids"]) for m in metas]
    assert sum(sizes) == whole["documents"] and min(sizes) > 0
    gathered = gather_embeddings(metas, tmp_path / "vectors.npy", tmp_path / "meta.json")
    assert json.loads((tmp_path / "meta.json").read_text()) == gathered
    assert gathered["doc_ids"] == whole["doc_ids"] and gathered["embedder"] == whole["embedder"]
    assert gathered["table"] == whole["table"] and gathered["dim"] == whole["dim"]
    np.testing.assert_allclose(np.load(tmp_path / "vectors.npy"), np.load(root / "sub.npy"), atol=1e-5)

    with pytest.raises(ConfigError, match=r"parts \[0, 2\] of 3"):
        gather_embeddings([metas[0], metas[2]], tmp_path / "x.npy", tmp_path / "x.json")
    other = tmp_path / "other-1-of-3.json"  # part 1 as if cut from a table with other documents
    other.write_text(json.dumps(json.loads(metas[1].read_text()) | {"table_ids_sha256": "0" * 64}))
    other.with_suffix(".npy").write_bytes(metas[1].with_suffix(".npy").read_bytes())
    with pytest.raises(ConfigError, match=r"other-1-of-3.json: table_ids_sha256 differs"):
        gather_embeddings([metas[0], other, metas[2]], tmp_path / "x.npy", tmp_path / "x.json")
    assert not (tmp_path / "x.npy").exists()


def test_rank_by_max_score_merges_and_dedupes() -> None:
    scores = np.array([[0.9, 0.5, 0.1], [0.95, 0.4, 0.3]], dtype=np.float32)
    positions = np.array([[3, 1, 2], [1, 3, -1]])
    pos, score, seed = rank_by_max_score(scores, positions)
    assert pos.tolist() == [1, 3, 2]
    assert np.allclose(score, [0.95, 0.9, 0.1])
    assert seed.tolist() == [1, 0, 0]
    valid = np.array([True, False, True, True])
    assert rank_by_max_score(scores, positions, valid)[0].tolist() == [3, 2]


def test_take_within_budget() -> None:
    tokens = np.array([5, 3, 4, 2])
    taken, hit = take_within_budget(np.array([2, 0, 1, 3]), tokens, 10)
    assert taken.tolist() == [2, 0] and hit
    taken, hit = take_within_budget(np.array([1, 3]), tokens, 10)
    assert taken.tolist() == [1, 3] and not hit


@pytest.fixture(scope="module")
def wiki_vectors() -> np.ndarray:
    """400 real Wikipedia leads embedded once for both index kinds (embedding dominates)."""
    return embed_texts(load_embedder(EmbedderConfig()), [r["text"] for r in wiki_texts(400)], 64, progress=False)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_exact_neighbours(kind: str, wiki_vectors: np.ndarray) -> None:
    vectors = wiki_vectors
    exact = build_index(vectors, IndexConfig(type="flat"))
    approx = build_index(vectors, IndexConfig(type=kind, nlist=8, nprobe=4))
    _, want = search(exact, vectors[:50], 5)
    _, got = search(approx, vectors[:50], 5)
    recall = np.mean([len(set(w) & set(g)) / 5 for w, g in zip(want, got, strict=True)])
    assert recall > 0.8
    assert (got[:, 0] == np.arange(50)).mean() > 0.95  # each text finds itself

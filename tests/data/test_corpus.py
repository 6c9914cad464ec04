"""Corpus stage: readers, normalisation, de-duplication, held-out split, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssae_steps.config import ConfigError
from ssae_steps.data.config import CorpusConfig, SourceConfig
from ssae_steps.data.corpus import build_corpus, doc_id_for, heldout_ids, normalise_text, read_corpus
from ssae_steps.data.sources import read_source

LONG = "The photon is the quantum of the electromagnetic field, carrying light at speed c. "


def _build(tmp_path: Path, spec: dict, name: str = "c", seed: int = 0):
    cfg = CorpusConfig.from_dict(spec, f"corpora.{name}")
    summary = build_corpus(name, cfg, seed, tmp_path / name / "docs.parquet", tmp_path / name / "summary.json")
    return read_corpus(tmp_path / name / "docs.parquet"), summary


def test_jsonl_corpus_table(small_corpora: dict[str, Path], tmp_path: Path) -> None:
    spec = {"sources": [{"kind": "jsonl", "path": str(small_corpora["general"]), "label_fields": ["title", "topic"]}]}
    df, summary = _build(tmp_path, spec)
    assert list(df.columns[:5]) == ["doc_id", "text", "source", "split", "n_chars"]
    assert {"title", "topic"} <= set(df.columns)
    assert len(df) == summary["documents"] == 240
    assert df["doc_id"].is_unique
    assert (df["doc_id"] == df["text"].map(doc_id_for)).all()
    assert set(df["split"]) == {"train", "heldout"}
    assert summary["heldout_documents"] == (df["split"] == "heldout").sum()
    assert 0.03 < summary["heldout_documents"] / len(df) < 0.2  # default fraction 0.1
    assert (df["n_chars"] == df["text"].str.len()).all()


def test_split_is_deterministic_and_stable_under_additions(small_corpora: dict[str, Path], tmp_path: Path) -> None:
    base = {"sources": [{"kind": "jsonl", "path": str(small_corpora["physics"])}]}
    more = {"sources": [*base["sources"], {"kind": "jsonl", "path": str(small_corpora["general"])}]}
    a, _ = _build(tmp_path / "a", base)
    b, _ = _build(tmp_path / "b", base)
    c, _ = _build(tmp_path / "c", more)
    assert a.equals(b)
    split_c = dict(zip(c["doc_id"], c["split"], strict=True))
    assert all(split_c[d] == s for d, s in zip(a["doc_id"], a["split"], strict=True))
    d, _ = _build(tmp_path / "d", base, seed=1)
    assert list(d["split"]) != list(a["split"])


def test_heldout_ids(small_corpora: dict[str, Path], tmp_path: Path) -> None:
    spec = {"heldout_fraction": 0.3, "sources": [{"kind": "jsonl", "path": str(small_corpora["physics"])}]}
    df, _ = _build(tmp_path, spec, name="sub")
    assert heldout_ids(tmp_path / "sub" / "docs.parquet") == set(df.loc[df["split"] == "heldout", "doc_id"])


def test_txt_parquet_dedupe_and_min_chars(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text(f"{LONG * 3}\r\n\r\n\r\n{LONG * 3}\n\nshort paragraph\n\n{LONG * 4}   \n")
    table = pa.table({"body": [LONG * 5, LONG * 3], "kind": ["x", None]})
    pq.write_table(table, tmp_path / "b.parquet")
    spec = {
        "min_chars": 100,
        "heldout_fraction": 0.5,
        "sources": [
            {"kind": "txt", "path": str(txt), "split_on": "paragraph"},
            {"kind": "parquet", "path": str(tmp_path / "b.parquet"), "text_field": "body", "label_fields": ["kind"]},
        ],
    }
    df, summary = _build(tmp_path, spec, seed=3)
    assert summary["dropped"] == {"too_short": 1, "duplicates": 2}
    assert len(df) == 3
    assert sorted(df["source"]) == ["parquet:b.parquet", "txt:a.txt", "txt:a.txt"]
    assert not df["text"].str.contains("\r").any()


def test_normalise_text() -> None:
    assert normalise_text("  e\u0301 a  \r\n\r\n\r\n\r\nb \n") == "\u00e9 a\n\nb"


def test_shipped_sources_are_real_text() -> None:
    wiki = list(read_source(SourceConfig(kind="wiki_summaries"), "s"))
    assert len(wiki) > 9000
    physics = list(read_source(SourceConfig(kind="wiki_summaries", topics=["Physical sciences"]), "s"))
    assert len(physics) > 500
    assert any("quantum" in text for text, _ in physics)
    recipes = list(read_source(SourceConfig(kind="wikibooks_recipes", max_docs=50), "s"))
    assert len(recipes) == 50 and all("Ingredients:" in t or len(t) > 20 for t, _ in recipes)
    docs = list(read_source(SourceConfig(kind="python_docs"), "s"))
    assert any(labels["title"] == "assignment" for _, labels in docs)


def test_keyword_filters() -> None:
    spec = SourceConfig(kind="wiki_summaries", keywords=["quark"], exclude_keywords=["gluon"])
    records = list(read_source(spec, "s"))
    assert records
    for text, labels in records:
        hay = (text + " ".join(labels.values())).lower()
        assert "quark" in hay and "gluon" not in hay


@pytest.mark.parametrize(
    ("content", "spec_extra", "match"),
    [
        ('{"text": "ok"}\nnot json\n', {}, r"bad.jsonl: line 2 is not valid JSON"),
        ('{"body": "x"}\n', {}, r"bad.jsonl: line 1 has no 'text' field"),
        ('{"text": "x"}\n', {"label_fields": ["topic"]}, r"label_fields: \['topic'\] not found in .*bad.jsonl"),
    ],
)
def test_bad_jsonl_names_file(tmp_path: Path, content: str, spec_extra: dict, match: str) -> None:
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(ConfigError, match=match):
        _build(tmp_path, {"sources": [{"kind": "jsonl", "path": str(tmp_path / "bad.jsonl"), **spec_extra}]})
    assert not (tmp_path / "c" / "docs.parquet").exists()


def test_bad_inputs_name_key_or_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"corpora.c.sources\[0\].path: no file matches"):
        _build(tmp_path, {"sources": [{"kind": "jsonl", "path": str(tmp_path / "missing.jsonl")}]})
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match=r"junk.parquet: not a readable Parquet file"):
        _build(tmp_path, {"sources": [{"kind": "parquet", "path": str(tmp_path / "junk.parquet")}]})
    (tmp_path / "tiny.jsonl").write_text(json.dumps({"text": "too short"}) + "\n")
    with pytest.raises(ConfigError, match=r"corpora.c.sources: no documents of at least min_chars=200"):
        _build(tmp_path, {"sources": [{"kind": "jsonl", "path": str(tmp_path / "tiny.jsonl")}]})
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": LONG * 4}) + "\n")
    with pytest.raises(ConfigError, match=r"corpora.c.heldout_fraction: .* empty"):
        _build(tmp_path, {"sources": [{"kind": "jsonl", "path": str(tmp_path / "one.jsonl")}]})


def test_stage_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssae_steps.data.corpus import main

    params = json.dumps({"sources": [{"kind": "jsonl", "path": str(tmp_path / "missing.jsonl")}]})
    out = ["--out-table", str(tmp_path / "t.parquet"), "--out-summary", str(tmp_path / "s.json")]
    assert main(["--name", "x", "--params", params, *out]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("error: corpora.x.sources[0].path: no file matches " + repr(str(tmp_path / "missing.jsonl")))
    )
    assert not (tmp_path / "t.parquet").exists()

"""The real Snakefile, end to end on the tiny model, in a temporary directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STRATS = ("seed", "dense", "bm25", "random")
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def test_config(tiny_model_dir: Path, small_corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("wf")
    config = {
        "seed": 7,
        "model": {"source": "local", "name": str(tiny_model_dir), "hook_layer": 2},
        "corpora": {
            "general": {
                "role": "general",
                "heldout_fraction": 0.1,
                "sources": [
                    {"kind": "jsonl", "path": str(small_corpora["general"]), "label_fields": ["topic"]},
                    {"kind": "jsonl", "path": str(small_corpora["physics"])},
                    {"kind": "wikibooks_recipes", "max_docs": 40},
                ],
            },
            "physics": {
                "role": "subdomain",
                "heldout_fraction": 0.25,
                "sources": [
                    {"kind": "jsonl", "path": str(small_corpora["physics"]), "label_fields": ["title", "topic"]},
                ],
            },
        },
        "retrieval": {"token_budget": 12000, "neighbours_per_seed": 5, "embedder": {"batch_size": 32}},
        "activations": {
            "context_length": 32,
            "batch_size": 8,
            "shard_tokens": 1500,
            "dtype": "float32",
            "max_train_tokens": 4000,
            "max_heldout_tokens": 1000,
        },
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dry_run_lists_stages_of_default_config(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "--configfile", str(REPO / "config.yaml"), "-n")
    counts = planned_jobs(result)
    assert counts["prepare_model"] == 1
    assert counts["build_corpus"] == 2  # general + physical_sciences
    assert counts["corpus_overview"] == 1
    assert counts["embed_corpus"] == 2  # pool and seed set, each once
    assert counts["build_index"] == 1
    assert counts["select_data"] == 4  # seed, dense, bm25, random
    assert counts["compare_selection"] == 1
    assert counts["cache_corpus_activations"] == 3  # pool train + pool held-out + subdomain held-out
    assert counts["cache_selected_activations"] == 4


def test_end_to_end_on_tiny_model(test_config: Path) -> None:
    workdir = test_config.parent
    result = snakemake(workdir, "--configfile", str(test_config), "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    model = json.loads((workdir / "results/model/model.json").read_text())
    assert model["n_layers"] == 4 and model["hook_layer"] == 2
    assert (workdir / "results/model/hf/model.safetensors").exists()

    general = pq.read_table(workdir / "results/corpora/general/docs.parquet").to_pandas()
    physics = pq.read_table(workdir / "results/corpora/physics/docs.parquet").to_pandas()
    assert {"jsonl:general.jsonl", "jsonl:physics.jsonl", "wikibooks_recipes"} == set(general["source"])
    assert set(physics["split"]) == {"train", "heldout"}
    assert (workdir / "results/corpora/overview.png").stat().st_size > 10_000

    held = set(physics.loc[physics["split"] == "heldout", "doc_id"]) | set(
        general.loc[general["split"] == "heldout", "doc_id"]
    )
    for strategy in STRATS:
        selected = pq.read_table(workdir / f"results/retrieval/physics/{strategy}/docs.parquet").to_pandas()
        summary = json.loads((workdir / f"results/retrieval/physics/{strategy}/summary.json").read_text())
        assert summary["tokens"] <= 12000 and selected["doc_id"].is_unique
        assert not held & set(selected["doc_id"])
        assert (strategy == "seed") == (summary["retrieved_documents"] == 0)
    comparison = json.loads((workdir / "results/retrieval/physics/comparison.json").read_text())
    assert [r["strategy"] for r in comparison["strategies"]] == ["seed", "dense", "bm25", "random"]
    assert (workdir / "results/retrieval/physics/comparison.png").exists()

    acts = workdir / "results/activations"
    general_train = json.loads((acts / "corpus/general/train/manifest.json").read_text())
    assert general_train["d_model"] == 64 and general_train["hook_layer"] == 2
    assert 3000 < general_train["tokens"] <= 4000 and len(general_train["shards"]) == 3
    shard_docs = set()
    for shard in general_train["shards"]:
        shard_docs |= set(pq.read_table(acts / "corpus/general/train/shards" / shard["file"])["doc_id"].to_pylist())
    assert not shard_docs & set(physics.loc[physics["split"] == "heldout", "doc_id"])
    for name in ("corpus/general/heldout", "corpus/physics/heldout", *(f"selected/physics/{s}" for s in STRATS)):
        assert json.loads((acts / name / "manifest.json").read_text())["tokens"] > 0
    for log in ("logs/prepare_model.log", "logs/build_corpus/general.log", "logs/corpus_overview.log"):
        assert (workdir / log).exists(), log
    assert (workdir / "benchmarks/prepare_model.tsv").exists()

    again = snakemake(workdir, "--configfile", str(test_config), "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # Changing the seed set reruns retrieval onward, but never re-embeds the pool.
    config = yaml.safe_load(test_config.read_text())
    config["corpora"]["physics"]["heldout_fraction"] = 0.3
    changed = test_config.with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(workdir, "--configfile", str(changed), "-n"))
    assert jobs["build_corpus"] == 1 and jobs["select_data"] == 4
    assert jobs["embed_corpus"] == 1  # the seed set's own embeddings
    assert "build_index" not in jobs and "prepare_model" not in jobs
    # Subdomain held-out set, every selected set, and the pool's training set (which drops
    # the subdomain's held-out documents); never the pool's held-out set.
    assert jobs["cache_corpus_activations"] == 2 and jobs["cache_selected_activations"] == 4


def planned_jobs(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    table = text[text.index("Job stats:") :].split("\n\n")[0]
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE) if k != "total"}


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {"model": {"source": "local", "name": "x", "hook_layr": 2}},
            "model: Additional properties are not allowed ('hook_layr'",
        ),
        ({"seed": "zero"}, "seed: 'zero' is not of type 'integer'"),
        (
            {"corpora": {"g": {"sources": [{"kind": "jsonl", "path": "/no/such.jsonl"}]}}},
            "corpora.g.sources[0].path: no file matches",
        ),
        (
            {"corpora": {"g": {"role": "subdomain", "sources": [{"kind": "python_docs"}]}}},
            "at least one corpus needs role: general",
        ),
    ],
)
def test_bad_config_stops_before_any_job(test_config: Path, tmp_path: Path, patch: dict, expected: str) -> None:
    config = yaml.safe_load(test_config.read_text())
    config.update(patch)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(bad), "--cores", "1")
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()

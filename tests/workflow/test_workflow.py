"""The real Snakefile, end to end on the tiny model, in a temporary directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ssae_steps.bootstrap import MIN_DOCS
from tests.conftest import REPO, snakemake

# One xdist worker runs every test of the tiny pipeline (and the SLURM test), so the
# session's local run is built once.
pytestmark = pytest.mark.xdist_group("pipeline")
STRATS = ("seed", "dense", "bm25", "random")
# The tiny pipeline's SAEs: GSAE at k=8 and 4; SSAEs per strategy (finetuned, tilt 0), + dense at
# k=4. (Tilted runs are planned by the tilt config-change test and trained in test_train_sae.)
SSAES = 4 + 1
# Downstream of the main SSAE: the evaluation overviews, the debiasing case study and the lineage.
EVAL_REPORTS = {"evaluation_report": 1, "top_latents": 1, "debias": 1, "lineage": 1}
# Per training seed, finetuned from its GSAE: the biography SSAE (real articles + their
# gender-swapped copies), the real-only one and the swap control (the biographies have copies).
FINETUNE_TEXTS = ("bios", "bios_real", "swap")
ALL_TRAINING = {
    "train_gsae": 2,
    "train_ssae": SSAES,
    "training_report": 1,
    "evaluate_sae": 2 + SSAES,
    **EVAL_REPORTS,
    "train_bios_ssae": len(FINETUNE_TEXTS),
}


def test_building_the_dag_does_not_import_torch(tmp_path: Path) -> None:
    """The Snakefile checks config with the torch-free config modules only, so listing the
    jobs stays fast: here importing torch fails, and the dry run must still succeed."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = snakemake(tmp_path, "--configfile", str(REPO / "config.yaml"), "-n", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result)["train_ssae"] > 0
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, **env}, capture_output=True)
    assert blocked.returncode != 0  # the blocker works


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
    # k=32 (no k_sweep by default), three training seeds: seeds 1 and 2 repeat the GSAE,
    # the dense SSAE and the control (training.seed_strategies). The TERM study (on by
    # default) adds its nonzero tilts at k=32 for seeds 0, 1 and 2 (t=0 is the main run);
    # config.yaml turns off its extra k (extra_ks: []), so no second GSAE.
    term = yaml.safe_load((REPO / "config.yaml").read_text())["term_study"]
    tilts = term["tilts"]
    assert 0 in tilts and len(tilts) >= 3 and term.get("seeds", 3) == 3
    assert term["extra_ks"] == []
    term_ssaes = (len(tilts) - 1) * 3
    assert counts["train_gsae"] == 3
    assert counts["train_ssae"] == 4 + 2 * 2 + term_ssaes  # per strategy: finetuned, t=0 (the paper's recipe)
    assert counts["training_report"] == 1
    assert counts["evaluate_sae"] == 3 + 4 + 2 * 2 + term_ssaes
    assert counts["term_study"] == 1
    for rule in ("tail_concepts", "eval_baselines", "evaluation_report", "top_latents", "lineage"):
        assert counts[rule] == 1, rule
    for rule in ("build_bios", "debias"):
        assert counts[rule] == 1, rule
    # The biography SSAE, the real-only one and the swap control: one text and one
    # activation set each, and one SSAE per training seed, from that seed's GSAE.
    assert counts["finetune_text"] == counts["cache_bios_activations"] == 3
    assert counts["train_bios_ssae"] == 3 * 3


def test_end_to_end_on_tiny_model(local_run: Path) -> None:
    workdir = local_run
    test_config = workdir / "config.yaml"

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
        # random is general text only: the general-data control holds no seed document.
        assert (strategy == "random") == (summary["seed_documents"] == 0)
        assert not (strategy == "random" and set(selected["doc_id"]) & set(physics["doc_id"]))
    comparison = json.loads((workdir / "results/retrieval/physics/comparison.json").read_text())
    assert [r["strategy"] for r in comparison["strategies"]] == ["seed", "dense", "bm25", "random"]
    assert (workdir / "results/retrieval/physics/comparison.png").exists()

    acts = workdir / "results/activations"
    general_train = json.loads((acts / "corpus/general/train/manifest.json").read_text())
    assert general_train["d_model"] == 64 and general_train["hook_layer"] == 2
    assert 3000 < general_train["tokens"] <= 4000 and len(general_train["shards"]) == 3
    shard_docs = set()
    for shard in general_train["shards"]:
        with pa.memory_map(str(acts / "corpus/general/train/shards" / shard["file"])) as source:
            shard_docs |= set(pa.ipc.open_file(source).read_all()["doc_id"].to_pylist())
    assert not shard_docs & set(physics.loc[physics["split"] == "heldout", "doc_id"])
    for name in ("corpus/general/heldout", "corpus/physics/heldout", *(f"selected/physics/{s}" for s in STRATS)):
        assert json.loads((acts / name / "manifest.json").read_text())["tokens"] > 0
    sae_dir = workdir / "results/sae"
    gsae = json.loads((sae_dir / "general/k8/summary.json").read_text())
    assert gsae["config"]["init"] == "scratch" and gsae["config"]["sae"]["d_in"] == 64
    assert gsae["steps"] == general_train["tokens"] // 256  # one epoch of full batches
    assert set(general_train["mix"]["documents"]["source"]) <= set(general["source"])
    assert "topic" in general_train["split_mix"]["documents"]
    # Equal budgets: every strategy's SSAE trains the same steps on the same tokens, the
    # seed set (smaller than the budget) by repeating its tokens.
    ssae_runs = {s: json.loads((sae_dir / f"physics/{s}/finetune-t0-k8/summary.json").read_text()) for s in STRATS}
    assert {(r["steps"], r["tokens"]) for r in ssae_runs.values()} == {(4096 // 256, 4096)}
    for run in ssae_runs.values():
        assert run["passes"] == pytest.approx(run["tokens"] / run["set_tokens"], abs=1e-3)
    assert not list(sae_dir.rglob("checkpoint.pt"))  # a finished run leaves nothing to resume
    runs = pd.read_csv(sae_dir / "training_summary.csv").set_index("run")
    assert len(runs) == 2 + SSAES
    assert (runs.filter(like="ssae/", axis=0)["tilt"] == 0.0).all()
    assert runs.loc["gsae/k4", "train_l0"] <= 4 and runs.loc["gsae/k8", "train_l0"] <= 8
    # Finetuning starts where the GSAE ended, not where a random init starts: its first
    # logged FVU is nearer the GSAE's last than the GSAE's first.
    gsae_fvu = pd.read_csv(sae_dir / "general/k8/train_log.csv")["fvu"]
    first = pd.read_csv(sae_dir / "physics/dense/finetune-t0-k8/train_log.csv")["fvu"].iloc[0]
    assert abs(first - gsae_fvu.iloc[-1]) < abs(first - gsae_fvu.iloc[0]), (first, gsae_fvu.tolist())
    assert (sae_dir / "training_curves.png").stat().st_size > 10_000

    evals = workdir / "results/eval"
    metrics = pd.read_csv(evals / "metrics.csv")
    assert len(metrics) == 2 * len(runs) and set(metrics["set"]) == {"general", "subdomain"}
    assert metrics["fvu"].between(0, 2).all() and (metrics["l0"] <= metrics["k"] + 1e-9).all()
    np.testing.assert_allclose(metrics["spliced_perplexity"], np.exp(metrics["spliced_loss"]))
    baselines = json.loads((evals / "baselines.json").read_text())
    for row in metrics.itertuples():
        assert row.clean_loss == baselines[row.set]["clean_loss"]
        assert np.isfinite(row.spliced_loss) and 0 <= row.dead_fraction <= 1
    # Every headline metric has its bootstrap interval over the test documents (none where
    # a set has too few test documents for one).
    enough = metrics["n_docs"] >= MIN_DOCS
    assert enough.any()
    for metric in ("fvu", "delta_ce", "kl", "spliced_loss", "l0"):
        low, high = metrics[f"{metric}_ci_low"], metrics[f"{metric}_ci_high"]
        assert (low[enough] <= metrics[metric][enough] + 1e-12).all(), metric
        assert (metrics[metric][enough] <= high[enough] + 1e-12).all(), metric
        assert low[~enough].isna().all() and high[~enough].isna().all()
    assert (metrics["n_seeds"] == 1).all() and (metrics["n_docs"] >= 1).all()
    np.testing.assert_allclose(metrics["delta_ce"], metrics["spliced_loss"] - metrics["clean_loss"], atol=1e-5)
    assert set(metrics.loc[metrics["strategy"] == "random", "family"]) == {"control"}
    assert (metrics["kl"] >= 0).all() and (metrics["validation_fvu"] > 0).all()
    assert len(list((evals / "runs").rglob("*.per_doc.parquet"))) == len(runs)
    compared = pd.read_csv(evals / "comparisons.csv")
    assert {"GSAE", "control"} <= set(compared["reference"])
    few = compared["n_docs"] < MIN_DOCS
    assert (compared["ci_low"][~few] <= compared["ci_high"][~few]).all() and compared["ci_low"][few].isna().all()
    # Recall against frequency: every SAE at the main k, each bin's share within [0, 1].
    types = pd.read_csv(evals / "token_types.csv")
    assert len(types) > 0 and (types["validation_count"] >= 2).all()  # the test config's min_count
    curves = pd.read_csv(evals / "recall_by_frequency.csv")
    assert set(curves["run"]) == set(metrics.loc[metrics["k"] == 8, "run"])
    assert curves["captured_share"].dropna().between(0, 1).all()
    everything = curves[curves["cumulative"]].groupby("run")["n_types"].max()
    assert (everything <= len(types)).all() and (everything > 0).all()
    assert (evals / "recall_by_frequency.png").stat().st_size > 10_000
    assert len(pd.read_csv(evals / "metrics_by_seed.csv")) == len(metrics)  # one seed per SAE here
    # Dead latents over every held-out token: at most those dead on each set's test part.
    assert (metrics["dead_fraction_heldout"] <= metrics["dead_fraction"] + 1e-12).all()
    assert (metrics["dead_over_tokens"] > metrics["eval_tokens"]).all()
    tail = pd.read_csv(evals / "tail_tokens.csv")
    assert len(tail) > 0 and (tail["ratio"] >= 2.0).all()  # the test config's min_ratio
    assert (metrics["tail_concepts"] == len(tail)).all()
    summary = (evals / "summary.md").read_text()
    assert "FVU = sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2" in summary and "Best SSAE" in summary
    assert "vs control" in summary and "unadjusted; exploratory" in summary
    # The declared comparisons come first, each with its family-wise interval (or "not
    # computed" where the test config lacks a side).
    primary = summary.split("## Primary comparisons")[1].split("## Exploratory")[0]
    assert "family-wise 95% CI" in primary or "not computed" in primary
    assert (evals / "pareto.png").stat().st_size > 10_000 and (evals / "comparison.png").stat().st_size > 10_000
    assert "## Latent" in (evals / "top_latents.md").read_text()

    debias = pd.read_csv(workdir / "results/debias/results.csv")
    assert set(debias["sae"]) == {"-", "gsae", "ssae_bios", "ssae_bios_real", "ssae_swap", "ssae_physics"}
    # The "real" variant has no SAE finetuned on swapped text; its biography SSAE reads real articles only.
    real_variant = set(debias.loc[debias["variant"] == "real", "sae"])
    assert real_variant == {"-", "gsae", "ssae_bios_real", "ssae_physics"}
    assert {"original probe", "oracle probe", "delete gendered words + retrain"} <= set(debias["method"])
    assert debias["worst_group_acc"].between(0, 1).all()
    assert (debias["worst_group_acc"] <= debias["profession_acc"] + 1e-9).all()
    bios = pq.read_table(workdir / "results/debias/bios.parquet").to_pandas()
    test = bios[bios["split"] == "heldout"]
    assert test.groupby(["profession", "gender"]).size().tolist() == [25] * 4 and not test["counterfactual"].any()
    biased = bios[bios["biased_train"]]
    assert set(biased["profession"] + "/" + biased["gender"]) == {"leader/male", "performer/female"}
    # What each finetune read, from its activation shards: the real-only biography SSAE no
    # copy; the swap control no biography, but pool text with its swapped copies.
    read = {}
    for text in FINETUNE_TEXTS:
        manifest = json.loads((acts / "debias" / text / "manifest.json").read_text())
        read[text] = set()
        for shard in manifest["shards"]:
            with pa.memory_map(str(acts / "debias" / text / "shards" / shard["file"])) as source:
                read[text] |= set(pa.ipc.open_file(source).read_all()["doc_id"].to_pylist())
        run = json.loads((sae_dir / text / "ssae/summary.json").read_text())
        assert run["set_tokens"] == manifest["tokens"] and run["steps"] == 4096 // 256  # the same recipe
    train = bios[bios["split"] == "train"]
    copies, real = set(train.loc[train["counterfactual"], "doc_id"]), set(train.loc[~train["counterfactual"], "doc_id"])
    # (Each set a uniform sample of its documents under the test config's token cap.)
    assert read["bios_real"] and read["bios_real"] <= real and not read["bios_real"] & copies
    assert read["bios"] <= real | copies and read["bios"] & copies
    swap = pq.read_table(workdir / "results/debias/finetune/swap.parquet").to_pandas()
    assert read["swap"] <= set(swap["doc_id"]) and not read["swap"] & set(bios["doc_id"])
    originals = swap[~swap["counterfactual"]]
    assert set(originals["doc_id"]) <= set(general.loc[general["split"] == "train", "doc_id"]) - held
    assert not (general.set_index("doc_id").loc[originals["doc_id"], "topic"] == "People").any()
    assert swap["counterfactual"].sum() == len(originals) > 0
    table1 = pd.read_csv(workdir / "results/debias/table1.csv")
    assert set(table1["variant"]) == {"copies", "real"}
    assert {"SHIFT gsae", "SHIFT + retrain ssae_bios", "random latents + retrain ssae_physics"} <= set(table1["method"])
    assert {"SHIFT ssae_swap", "SHIFT + retrain ssae_swap"} <= set(table1.loc[table1["variant"] == "copies", "method"])
    assert "SHIFT + retrain ssae_bios_real" in set(table1.loc[table1["variant"] == "real", "method"])
    assert (table1["worst_group_acc_ci_low"] <= table1["worst_group_acc"] + 1e-9).all()
    compared = pd.read_csv(workdir / "results/debias/comparisons.csv")
    pairs = {v: set(zip(part["sae"], part["reference"], strict=True)) for v, part in compared.groupby("variant")}
    assert pairs == {
        "copies": {("ssae_bios", b) for b in ("gsae", "ssae_bios_real", "ssae_swap", "ssae_physics")},
        "real": {("ssae_bios_real", "gsae"), ("ssae_bios_real", "ssae_physics")},
    }
    sparse = pd.read_csv(workdir / "results/debias/sparse_probing.csv")
    assert set(sparse["k"]) == {1, 2, 5, 20} and set(sparse["target"]) == {"profession", "gender"}
    summary = (workdir / "results/debias/summary.md").read_text()
    assert "## Table 1 layout" in summary and "| ssae_swap | swap control" in summary
    lineage = pd.read_csv(workdir / "results/lineage/latents.csv")
    assert len(lineage) == 128 and set(lineage["class"]) <= {"kept", "drifted", "new", "dead"}
    assert (lineage["gsae_cosine"] <= 1 + 1e-5).all() and "| kept |" in (
        workdir / "results/lineage/summary.md"
    ).read_text()
    browser = (workdir / "results/lineage/browser.html").read_text()
    assert browser.count('"sae":"ssae"') == int((lineage["class"] != "dead").sum())  # every live latent listed
    for log in ("logs/prepare_model.log", "logs/build_corpus/general.log", "logs/corpus_overview.log"):
        assert (workdir / log).exists(), log
    assert (workdir / "benchmarks/prepare_model.tsv").exists()
    # The cost page covers every benchmarked job of the run.
    cost = pd.read_csv(workdir / "results/cost.csv")
    assert len(cost) == len(list((workdir / "benchmarks").rglob("*.tsv")))
    assert {"train_sae", "eval", "cache_activations", "prepare_model"} <= set(cost["stage"])
    assert "summed wall time" in (workdir / "results/cost.md").read_text()

    again = snakemake(workdir, "--configfile", str(test_config), "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    report = snakemake(workdir, "--configfile", str(test_config), "--report", "results/report.html")
    assert report.returncode == 0, report.stderr[-2000:]
    html = (workdir / "results/report.html").read_text(errors="replace")
    figures = ("overview.png", "comparison.png", "training_curves.png", "pareto.png", "worst_group.png", "cost.png")
    figures += ("lineage.png", "browser.html")
    for figure in (*figures, "recall_by_frequency.png"):
        assert figure in html, figure


def _with(config: dict, dotted: str, value: object) -> dict:
    config = json.loads(json.dumps(config))
    *path, last = dotted.split(".")
    node = config
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        # A new seed set: its corpus, embeddings, retrieval onward; the pool's training
        # activations too (they drop the subdomain's held-out documents). Never the model,
        # the pool's embeddings or index, or the pool's held-out activations.
        (
            "corpora.physics.heldout_fraction",
            0.3,
            {
                "build_corpus": 1,
                "corpus_overview": 1,
                "embed_corpus": 1,
                "select_data": 4,
                "compare_selection": 1,
                "cache_corpus_activations": 2,
                "cache_selected_activations": 4,
                # The swap control skips the subdomain's held-out documents, as the GSAE does.
                "finetune_text": 1,
                "cache_bios_activations": 1,
                **ALL_TRAINING,
                "tail_concepts": 1,
                "eval_baselines": 1,
            },
        ),
        # A retrieval parameter: selection onward only (the GSAE and its evaluation stay).
        (
            "retrieval.token_budget",
            11000,
            {
                "select_data": 4,
                "compare_selection": 1,
                "cache_selected_activations": 4,
                "train_ssae": SSAES,
                "training_report": 1,
                "tail_concepts": 1,  # counted on the seed selection
                "evaluate_sae": 2 + SSAES,
                **EVAL_REPORTS,
            },
        ),
        # An index parameter: the index and what reads it (dense selection) only.
        (
            "retrieval.index.type",
            "hnsw",
            {
                "build_index": 1,
                "select_data": 1,
                "compare_selection": 1,
                "cache_selected_activations": 1,
                "train_ssae": 1 + 1,  # the dense SSAE, + the k sweep's
                "training_report": 1,
                "evaluate_sae": 1 + 1,
                **EVAL_REPORTS,
            },
        ),
        # Embedding the pool in parts: its vectors come from the gather (equal up to float
        # rounding), so its index and what reads it rerun; not the seed set's embedding.
        (
            "retrieval.embedder.parts",
            2,
            {
                "embed_corpus_part": 2,
                "gather_embedding_parts": 1,
                "build_index": 1,
                "select_data": 1,
                "compare_selection": 1,
                "cache_selected_activations": 1,
                "train_ssae": 1 + 1,
                "training_report": 1,
                "evaluate_sae": 1 + 1,
                **EVAL_REPORTS,
            },
        ),
        # An activation parameter: the activation sets and everything computed from them.
        (
            "activations.batch_size",
            4,
            {
                "cache_corpus_activations": 3,
                "cache_selected_activations": 4,
                "cache_bios_activations": len(FINETUNE_TEXTS),
                **ALL_TRAINING,
                "tail_concepts": 1,
                "eval_baselines": 1,
            },
        ),
        # The GSAE's TracIn snapshots: only the GSAE that keeps them (first seed, main k) and
        # what is trained from it; not the k sweep's GSAE.
        (
            "training.gsae.snapshots",
            2,
            {
                "train_gsae": 1,
                "train_ssae": len(STRATS),
                "training_report": 1,
                "evaluate_sae": 1 + len(STRATS),
                **EVAL_REPORTS,
                "train_bios_ssae": len(FINETUNE_TEXTS),
            },
        ),
        # Caching the pool's training set in parts: the same shards, but a new manifest,
        # so what trains on it reruns; the other sets are untouched.
        (
            "activations.parts",
            2,
            {
                "cache_activation_part": 2,
                "gather_activation_parts": 1,
                **ALL_TRAINING,
                "tail_concepts": 1,
            },
        ),
        # A new tilt: only the SSAEs with that tilt, their evaluations and the overviews;
        # not the biography SSAE (its tilt is debias.ssae_tilt).
        (
            "training.ssae.tilts",
            [0.0, 3.0],
            {
                "train_ssae": 4,
                "training_report": 1,
                "evaluate_sae": 4,
                **EVAL_REPORTS,
            },
        ),
        # The validation/test split: what is measured on test, and the token types and tail
        # concepts (counted on validation documents); not the top latents.
        (
            "evaluation.validation_fraction",
            0.4,
            {
                "tail_concepts": 1,
                "eval_baselines": 1,
                "evaluate_sae": 2 + SSAES,
                "evaluation_report": 1,
                "lineage": 1,
            },
        ),
        # The bootstrap: the overview only.
        ("evaluation.bootstrap_samples", 200, {"evaluation_report": 1}),
        # A tail-concept parameter: evaluation only, no training.
        (
            "evaluation.tail.min_ratio",
            5.0,
            {"tail_concepts": 1, "evaluate_sae": 2 + SSAES, "evaluation_report": 1, "lineage": 1},
        ),
    ],
)
def test_config_change_reruns_only_dependent_stages(local_run: Path, key: str, value: object, expected: dict) -> None:
    config = _with(yaml.safe_load((local_run / "config.yaml").read_text()), key, value)
    changed = local_run / f"changed-{key}.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(local_run, "--configfile", str(changed), "-n"))
    jobs.pop("all", None)
    assert jobs == {**expected, "cost_report": 1}  # the cost page follows any rerun


def test_local_model_replaced_in_place_reruns_everything(local_run: Path, tiny_model_dir: Path) -> None:
    """A local model is keyed on its content: new weights under the same path rerun the
    model stage and everything that reads the model (its path alone would not change)."""
    weights = tiny_model_dir / "model.safetensors"
    original = weights.read_bytes()
    try:
        changed = bytearray(original)
        changed[-4] ^= 0xFF  # a bit of the last tensor's data
        weights.write_bytes(bytes(changed))
        jobs = planned_jobs(snakemake(local_run, "--configfile", str(local_run / "config.yaml"), "-n"))
    finally:
        weights.write_bytes(original)
    assert jobs["prepare_model"] == 1
    assert jobs["cache_corpus_activations"] == 3 and jobs["train_gsae"] == 2 and jobs["evaluate_sae"] == 2 + SSAES


def test_cores_beyond_the_machine_are_clamped(local_run: Path) -> None:
    """`snakemake --cores 8` on a smaller machine must not run more threads than it has."""
    from snakemake.utils import available_cpu_count

    cores = available_cpu_count()
    result = snakemake(local_run, "--configfile", str(local_run / "config.yaml"), "-n", "--cores", str(cores + 6))
    assert f"using {cores} so concurrent jobs' threads fit the real cores" in result.stdout + result.stderr
    result = snakemake(local_run, "--configfile", str(local_run / "config.yaml"), "-n", "--cores", str(cores))
    assert "exceeds this machine's" not in result.stdout + result.stderr


def test_two_cores_run_two_single_threaded_jobs(local_run: Path) -> None:
    """On two cores each heavy job gets one torch thread, so two run at once; from four
    cores up each gets two (README, "Two commands", has the measurement behind this)."""
    from snakemake.utils import available_cpu_count

    def threads_passed(cores: int) -> set[str]:
        result = snakemake(
            local_run, "--configfile", str(local_run / "config.yaml"), "-n", "-p", "--forceall", "--cores", str(cores)
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return set(re.findall(r"--threads (\d+)", result.stdout + result.stderr))

    assert threads_passed(2) == {"1"}
    assert threads_passed(4) == ({"2"} if available_cpu_count() >= 4 else {"1"})


def test_module_edit_reruns_only_its_rules(local_run: Path, tmp_path: Path) -> None:
    """Snakemake does not track imported modules; the code fingerprint in params does."""
    copy = tmp_path / "workflow_copy"
    copy.mkdir()
    for part in ("Snakefile", "workflow", "ssae_steps", "envs", "config.yaml"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / part)
    config = ["--configfile", str(local_run / "config.yaml")]
    before = snakemake(local_run, "-s", str(copy / "Snakefile"), *config, "-n")
    assert "Nothing to be done" in before.stdout + before.stderr
    module = copy / "ssae_steps" / "retrieval" / "report.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    jobs = planned_jobs(snakemake(local_run, "-s", str(copy / "Snakefile"), *config, "-n"))
    jobs.pop("all", None)
    assert jobs == {"compare_selection": 1, "cost_report": 1}


def test_a_missing_report_output_reruns_its_rule(local_run: Path) -> None:
    """The default target asks for every output of the report rules, so an output missing
    from an existing run (e.g. one a code update added) reruns its rule; Snakemake alone
    would only note "missing metadata" when the rule's other outputs are there."""
    target = local_run / "results/debias/comparisons.csv"
    saved, times = target.read_bytes(), target.stat()
    target.unlink()
    try:
        jobs = planned_jobs(snakemake(local_run, "--configfile", str(local_run / "config.yaml"), "-n"))
    finally:
        target.write_bytes(saved)
        os.utime(target, ns=(times.st_atime_ns, times.st_mtime_ns))
    jobs.pop("all", None)
    assert jobs == {"debias": 1, "cost_report": 1}


def test_an_extra_seed_trains_the_main_comparison_from_its_own_gsae(local_run: Path) -> None:
    """A second training seed adds the GSAE and each strategy's first-recipe SSAE at the
    main k, each SSAE finetuned from its own seed's GSAE; nothing already trained reruns."""
    config = _with(yaml.safe_load((local_run / "config.yaml").read_text()), "training.seeds", [0, 1])
    changed = local_run / "changed-seeds.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(local_run, "--configfile", str(changed), "-n", "-p")
    jobs = planned_jobs(result)
    jobs.pop("all", None)
    assert jobs == {
        "train_gsae": 1,
        "train_ssae": len(STRATS),
        "training_report": 1,
        "evaluate_sae": 1 + len(STRATS),
        "evaluation_report": 1,
        "train_bios_ssae": len(FINETUNE_TEXTS),
        "debias": 1,
        "cost_report": 1,
    }
    text = result.stdout + result.stderr
    assert "--role gsae --k 8 --seed 1 " in text and "results/sae/general/k8-s1" in text
    bios = next(line for line in text.splitlines() if "--out-dir results/sae/bios/ssae-s1 " in line)
    assert "--seed 1 " in bios and "--init-from results/sae/general/k8-s1/sae" in bios
    # Only the named strategies' SSAEs get the extra seed.
    config = _with(config, "training.seed_strategies", ["dense", "random"])
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(local_run, "--configfile", str(changed), "-n"))
    assert jobs["train_ssae"] == 2 and jobs["evaluate_sae"] == 3
    for strategy in STRATS:
        out = f"--out-dir results/sae/physics/{strategy}/finetune-t0-k8-s1"
        command = next(line for line in text.splitlines() if out in line)
        assert "--seed 1 " in command and "--init-from results/sae/general/k8-s1/sae" in command


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
        ({"training": {"seeds": [0, 0]}}, "training.seeds: [0, 0] has non-unique elements"),
        (
            {"training": {"seed_strategies": ["dense", "rand"]}},
            "training.seed_strategies: ['rand'] not in retrieval.strategies",
        ),
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
def test_bad_config_stops_before_any_job(local_run: Path, tmp_path: Path, patch: dict, expected: str) -> None:
    config = yaml.safe_load((local_run / "config.yaml").read_text())
    config.update(patch)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(bad), "--cores", "1")
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_term_study_trains_each_tilt_and_compares_it_with_erm(local_run: Path) -> None:
    """term_study.enabled: the dense SSAE at each tilt and k (reusing the runs the main
    comparison and the k sweep already have), evaluated and compared with ERM."""
    config = yaml.safe_load((local_run / "config.yaml").read_text())
    config["term_study"] = {"enabled": True, "tilts": [0.0, 1.0], "extra_ks": [4], "seeds": 1}
    changed = local_run / "changed-term.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(local_run, "--configfile", str(changed), "-n"))
    jobs.pop("all", None)
    # New: t=1 at k=8 and k=4; t=0 at both k are the main and sweep SSAEs already trained.
    # The declared TERM comparison joins the family (m grows by one), so the reports with
    # declared comparisons recompute their family-wise intervals.
    debias = config["debias"].get("enabled", True)
    family = {"evaluation_report": 1, "debias": 1} if debias else {"evaluation_report": 1}
    assert jobs == {"train_ssae": 2, "evaluate_sae": 2, "term_study": 1, "cost_report": 1, **family}
    result = snakemake(local_run, "--configfile", str(changed), "--cores", "2", "results/eval/term_study.md")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(local_run / "results/eval/term_study.csv")
    assert set(zip(table["tilt"], table["k"], strict=True)) == {(0.0, 8), (1.0, 8), (0.0, 4), (1.0, 4)}
    assert (table.loc[table["tilt"] == 1.0, "tilt_ess"] < 1 - 1e-6).all()
    assert table.loc[table["tilt"] == 0, "tilt_ess"].to_numpy() == pytest.approx(1.0)
    compared = pd.read_csv(local_run / "results/eval/term_comparisons.csv")
    assert set(compared["reference_run"]) == {"ssae/dense/finetune-t0-k8", "ssae/dense/finetune-t0-k4"}
    summary = (local_run / "results/eval/term_study.md").read_text()
    assert "t=1, k=8, subdomain (1 seed)" in summary
    assert (local_run / "results/eval/term_study.png").stat().st_size > 10_000


def test_tracin_strategy_reranks_candidates_under_the_gsae_snapshots(local_run: Path) -> None:
    """dense_tracin: dense candidates (2 x the budget) and their activations, reranked by
    TracIn under the first seed's GSAE snapshots into the same budget; a changed GSAE
    reruns the reranking but not the candidates or their activations."""
    config = yaml.safe_load((local_run / "config.yaml").read_text())
    config["retrieval"]["strategies"] = [*STRATS, "dense_tracin"]
    changed = local_run / "changed-tracin.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(local_run, "--configfile", str(changed), "-n"))
    for rule in ("retrieve_tracin_candidates", "cache_candidate_activations", "rerank_tracin"):
        assert jobs.pop(rule) == 1
    assert jobs.pop("train_ssae") == 1 and jobs.pop("evaluate_sae") == 1 and "train_gsae" not in jobs
    target = "results/retrieval/physics/dense_tracin/docs.parquet"  # training on it is any strategy's path
    result = snakemake(local_run, "--configfile", str(changed), "--cores", "2", target)
    assert result.returncode == 0, result.stderr[-3000:]

    chosen = pq.read_table(local_run / "results/retrieval/physics/dense_tracin/docs.parquet").to_pandas()
    candidates = pq.read_table(local_run / "results/retrieval/physics/tracin_candidates/dense/docs.parquet").to_pandas()
    dense = pq.read_table(local_run / "results/retrieval/physics/dense/docs.parquet").to_pandas()
    seeds = chosen[chosen["origin"] == "seed"]
    assert (
        chosen["origin"].iloc[: len(seeds)].eq("seed").all()
        and seeds["doc_id"].tolist() == dense.loc[dense["origin"] == "seed", "doc_id"].tolist()
    )
    assert chosen["n_tokens"].sum() <= 12000 < candidates["n_tokens"].sum()
    assert set(chosen["doc_id"]) <= set(candidates["doc_id"]) and not chosen["doc_id"].duplicated().any()
    retrieved = chosen[chosen["origin"] == "retrieved"]
    assert (np.diff(retrieved["score"].to_numpy()) <= 0).all()  # TracIn order
    pool = pq.read_table(local_run / "results/corpora/general/docs.parquet").to_pandas()
    assert not set(retrieved["doc_id"]) & set(pool.loc[pool["split"] != "train", "doc_id"])
    summary = json.loads((local_run / "results/retrieval/physics/dense_tracin/summary.json").read_text())
    assert [c["step"] for c in summary["tracin"]["checkpoints"]] == [
        s["step"]
        for s in json.loads((local_run / "results/sae/general/k8/snapshots/manifest.json").read_text())["snapshots"]
    ]
    assert len(summary["tracin"]["checkpoints"]) == 4

    jobs = planned_jobs(snakemake(local_run, "--configfile", str(changed), "-n", "--forcerun", "train_gsae"))
    assert jobs["rerank_tracin"] == 1
    assert "retrieve_tracin_candidates" not in jobs and "cache_candidate_activations" not in jobs

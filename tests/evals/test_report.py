"""The evaluation overview on planted per-document statistics: intervals in the table, the
best SSAE chosen on validation, and a comparison stated as a finding only when its paired
interval excludes zero."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssae_steps.evals.compare import Bootstrap
from ssae_steps.evals.family import Family
from ssae_steps.evals.frequency_report import frequency_bins, in_frequency_bin
from ssae_steps.evals.report import evaluation_report
from tests.evals.planted import N_DOCS, planted_run, planted_types

DENSE_VS_GSAE_FVU = {
    "label": "dense - gsae: fvu (evaluation)",
    "study": "evaluation",
    "run": "ssae/dense/finetune-t0-k8",
    "reference_run": "gsae/k8",
    "metric": "fvu",
    "set": "subdomain",
}


def test_with_one_seed_nothing_is_a_finding_not_even_a_declared_comparison(tmp_path: Path) -> None:
    runs = {
        "gsae/k8": planted_run(tmp_path, "gsae/k8", 1.0, 1, validation_fvu=0.30),
        # 30% less error than the GSAE: its interval excludes zero by far. Lowest validation FVU.
        "ssae/dense/finetune-t0-k8": planted_run(tmp_path, "dense", 0.7, 2, validation_fvu=0.20),
        # Equal to the GSAE but for its own noise.
        "ssae/random/finetune-t0-k8": planted_run(tmp_path, "random", 1.0, 3, validation_fvu=0.29),
        # Lowest test error, but worse on validation: not the chosen "best SSAE".
        "ssae/bm25/finetune-t0-k8": planted_run(tmp_path, "bm25", 0.6, 4, validation_fvu=0.25),
    }
    table, _, compared, summary = _report(tmp_path, runs, [DENSE_VS_GSAE_FVU])
    table = table.set_index(["run", "set"])
    for metric in ("fvu", "delta_ce", "kl", "spliced_loss", "l0"):
        assert (table[f"{metric}_ci_low"] <= table[metric]).all() and (
            table[metric] <= table[f"{metric}_ci_high"]
        ).all()
    assert (table["n_docs"] == N_DOCS).all() and (table["n_seeds"] == 1).all()
    assert table.loc[("ssae/random/finetune-t0-k8", "subdomain"), "family"] == "control"
    assert table.loc[("ssae/random/finetune-t0-k8", "subdomain"), "label"] == "control"
    np.testing.assert_allclose(table["delta_ce"], table["spliced_loss"] - 3.0)

    fvu = compared[(compared["metric"] == "fvu") & (compared["set"] == "subdomain")].set_index(["run", "reference"])
    dense = fvu.loc[("ssae/dense/finetune-t0-k8", "GSAE")]
    assert dense["role"] == "primary" and dense["family_size"] == 1 and dense["family_ci_high"] < 0
    assert not dense["training_variance"] and not dense["finding"]
    assert fvu.loc[("ssae/dense/finetune-t0-k8", "control"), "ci_high"] < 0
    assert fvu.loc[("ssae/dense/finetune-t0-k8", "control"), "role"] == "exploratory"
    assert not compared["finding"].any()
    assert ("ssae/random/finetune-t0-k8", "control") not in fvu.index

    assert "Best SSAE, chosen on subdomain validation FVU (0.2000, first seed): `ssae/dense/finetune-t0-k8`" in summary
    primary = summary.split("## Primary comparisons")[1].split("## Exploratory")[0]
    assert "`ssae/dense/finetune-t0-k8` (SSAE dense) vs GSAE" in primary
    assert "training variance not included (one seed), so exploratory" in primary and "lower by" not in primary
    exploratory = summary.split("## Exploratory")[1]
    dense_line = next(
        line
        for line in exploratory.splitlines()
        if line.startswith("- `ssae/dense/finetune-t0-k8` (SSAE dense) vs GSAE, subdomain")
    )
    # The declared metric is not repeated among the exploratory ones; the others are there.
    assert "FVU" not in dense_line and "ΔCE" in dense_line and "unadjusted; exploratory" in dense_line
    assert "lower by" not in summary and "higher by" not in summary


def _report(
    tmp_path: Path, runs: dict[str, str], primary: list[dict] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    baselines = tmp_path / "baselines.json"
    base = {"clean_loss": 3.0, "zero_ablation_loss": 10.0, "loss_tokens": 100}
    baselines.write_text(json.dumps({"general": base, "subdomain": base}))
    out = tmp_path / "eval"
    evaluation_report(
        runs,
        baselines,
        8,
        {"GSAE": ["gsae/k8"]},
        out / "metrics.csv",
        out / "pareto.png",
        out / "comparison.png",
        out / "summary.md",
        Bootstrap(samples=500, seed=0),
        out / "recall.png",
        family=Family(tuple(primary or ())),
    )
    read = lambda name: pd.read_csv(out / name)  # noqa: E731
    return read("metrics.csv"), read("metrics_by_seed.csv"), read("comparisons.csv"), (out / "summary.md").read_text()


def test_seeds_form_one_row_and_comparisons_pair_them(tmp_path: Path) -> None:
    tags = ["", "-s1", "-s2"]
    gsae_scales = (0.6, 1.0, 1.4)
    runs = {}
    for i, tag in enumerate(tags):
        runs[f"gsae/k8{tag}"] = planted_run(tmp_path, f"gsae{tag}", gsae_scales[i], 10 + i, validation_fvu=0.30)
        # 0.2 below the GSAE of the same seed: a clear gain only when seed s meets seed s
        # (against the GSAE's first seed alone, it would be above it on average).
        runs[f"ssae/dense/finetune-t0-k8{tag}"] = planted_run(
            tmp_path, f"dense{tag}", gsae_scales[i] - 0.2, 20 + i, 0.20
        )
        # The GSAE's seeds in reverse: below it at seed 0, above at seed 2, equal on average.
        runs[f"ssae/bm25/finetune-t0-k8{tag}"] = planted_run(tmp_path, f"bm25{tag}", gsae_scales[2 - i], 30 + i, 0.25)
    # One seed only (a sweep run, and the control): compared at the seed they share.
    runs["ssae/dense/scratch-t0-k8"] = planted_run(tmp_path, "dense-scratch", 0.9, 40, 0.28)
    runs["ssae/random/finetune-t0-k8"] = planted_run(tmp_path, "random", 0.6, 50, 0.29)
    bm25_vs_gsae = {**DENSE_VS_GSAE_FVU, "label": "bm25 - gsae: fvu", "run": "ssae/bm25/finetune-t0-k8"}
    table, by_seed, compared, summary = _report(tmp_path, runs, [DENSE_VS_GSAE_FVU, bm25_vs_gsae])

    assert sorted(table["run"].unique()) == sorted(
        [
            "gsae/k8",
            "ssae/dense/finetune-t0-k8",
            "ssae/bm25/finetune-t0-k8",
            "ssae/dense/scratch-t0-k8",
            "ssae/random/finetune-t0-k8",
        ]
    )
    table, by_seed = table.set_index(["run", "set"]), by_seed.set_index(["run", "set"])
    assert len(by_seed) == 2 * len(runs) and (by_seed["n_seeds"] == 1).all()
    for base in ("gsae/k8", "ssae/dense/finetune-t0-k8", "ssae/bm25/finetune-t0-k8"):
        row = table.loc[(base, "subdomain")]
        seeds = [by_seed.loc[(base + tag, "subdomain")] for tag in tags]
        assert row["n_seeds"] == 3
        np.testing.assert_allclose(row["fvu"], np.mean([s["fvu"] for s in seeds]))
        np.testing.assert_allclose(row["fvu_seed_sd"], np.std([s["fvu"] for s in seeds], ddof=1))
        assert row["fvu_ci_low"] <= row["fvu"] <= row["fvu_ci_high"]
        # The seed spread is in the interval: far wider than the first seed's alone.
        first = seeds[0]
        assert row["fvu_ci_high"] - row["fvu_ci_low"] > 3 * (first["fvu_ci_high"] - first["fvu_ci_low"])
    assert table.loc[("ssae/dense/scratch-t0-k8", "subdomain"), "n_seeds"] == 1
    assert np.isnan(table.loc[("ssae/dense/scratch-t0-k8", "subdomain"), "fvu_seed_sd"])

    fvu = compared[(compared["metric"] == "fvu") & (compared["set"] == "subdomain")].set_index(["run", "reference"])
    dense = fvu.loc[("ssae/dense/finetune-t0-k8", "GSAE")]
    assert dense["n_seeds"] == 3 and dense["finding"] and dense["family_ci_high"] < 0
    # The family-wise interval (m = 2) holds the unadjusted one.
    assert dense["family_ci_low"] < dense["ci_low"] < dense["ci_high"] < dense["family_ci_high"]
    bm25 = fvu.loc[("ssae/bm25/finetune-t0-k8", "GSAE")]
    assert bm25["n_seeds"] == 3 and not bm25["finding"] and bm25["family_ci_low"] < 0 < bm25["family_ci_high"]
    for run, ref in (("ssae/dense/scratch-t0-k8", "GSAE"), ("ssae/dense/finetune-t0-k8", "control")):
        one = fvu.loc[(run, ref)]
        assert one["n_seeds"] == 1 and one["role"] == "exploratory" and not one["finding"], (run, ref)
        assert not one["training_variance"]
    assert set(compared.loc[compared["finding"], "run"]) == {"ssae/dense/finetune-t0-k8"}
    assert "training variance not included (one seed)" in summary
    # The single-seed runs meet the first seed of the other side.
    np.testing.assert_allclose(
        fvu.loc[("ssae/dense/scratch-t0-k8", "GSAE"), "reference_value"], by_seed.loc[("gsae/k8", "subdomain"), "fvu"]
    )
    np.testing.assert_allclose(
        fvu.loc[("ssae/dense/finetune-t0-k8", "control"), "value"],
        by_seed.loc[("ssae/dense/finetune-t0-k8", "subdomain"), "fvu"],
    )
    assert "40 documents, 3 seeds paired)" in summary and "GSAE (3), SSAE dense finetune-t0 (3)" in summary


def test_an_imported_gsae_pairs_with_every_seed(tmp_path: Path) -> None:
    runs = {"gsae/k8": planted_run(tmp_path, "gsae", 1.0, 1, 0.3)}
    for i, tag in enumerate(["", "-s1", "-s2"]):
        runs[f"ssae/dense/finetune-t0-k8{tag}"] = planted_run(tmp_path, f"dense{tag}", 0.7, 2 + i, 0.2)
    _, _, compared, _ = _report(tmp_path, runs)
    row = compared[(compared["metric"] == "fvu") & (compared["set"] == "subdomain")].iloc[0]
    assert row["reference_run"] == "gsae/k8" and row["n_seeds"] == 3 and row["ci_high"] < 0
    # The fixed GSAE has no training variance to include; the SSAE's two seeds carry theirs.
    assert row["training_variance"] and row["role"] == "exploratory" and not row["finding"]


FREQUENCIES = [0.0, 0.0, 3e-6, 5e-6, 2e-5, 4e-5, 6e-5, 0.002]


def _with_types(path: str, captured: list[bool]) -> str:
    result = json.loads(Path(path).read_text())
    result["types"] = planted_types(captured, FREQUENCIES)
    Path(path).write_text(json.dumps(result))
    return path


def test_recall_by_frequency_counts_captured_types_per_decade(tmp_path: Path) -> None:
    assert frequency_bins(np.array(FREQUENCIES)) == [(0.0, 0.0), (1e-6, 1e-5), (1e-5, 1e-4), (1e-4, 1e-3), (1e-3, 1e-2)]
    gsae = [False, False, False, True, False, True, True, True]
    runs = {
        "gsae/k8": _with_types(planted_run(tmp_path, "gsae/k8", 1.0, 1, 0.3), gsae),
        "ssae/dense/finetune-t0-k8": _with_types(
            planted_run(tmp_path, "dense", 0.7, 2, 0.2), [True, False, True, True, True, True, True, True]
        ),
        "ssae/dense/finetune-t0-k8-s1": _with_types(
            planted_run(tmp_path, "dense-s1", 0.7, 3, 0.2), [True, True, False, True, True, True, False, True]
        ),
    }
    _, _, _, summary = _report(tmp_path, runs)
    curves = pd.read_csv(tmp_path / "eval" / "recall_by_frequency.csv")
    per_bin = curves[~curves["cumulative"]].set_index(["run", "frequency_high"])
    # Hand counts. GSAE: unseen 0/2, (1e-6, 1e-5] 1/2, (1e-5, 1e-4] 2/3, (1e-3, 1e-2] 1/1.
    assert per_bin.loc[("gsae/k8", 0.0), "captured_share"] == 0.0
    assert per_bin.loc[("gsae/k8", 1e-5), "captured_share"] == 0.5
    assert per_bin.loc[("gsae/k8", 1e-4), "captured_share"] == pytest.approx(2 / 3)
    assert per_bin.loc[("gsae/k8", 1e-4), "n_types"] == 3
    assert per_bin.loc[("gsae/k8", 1e-3), "n_types"] == 0
    # The SSAE, mean of its two seeds: unseen (2/2 + 1/2) / 2, (1e-5, 1e-4] (3/3 + 2/3) / 2.
    assert per_bin.loc[("ssae/dense/finetune-t0-k8", 0.0), "captured_share"] == pytest.approx(0.75)
    assert per_bin.loc[("ssae/dense/finetune-t0-k8", 1e-4), "captured_share"] == pytest.approx(5 / 6)
    assert per_bin.loc[("ssae/dense/finetune-t0-k8", 1e-4), "n_seeds"] == 2
    cumulative = curves[curves["cumulative"]].set_index(["run", "frequency_high"])
    assert cumulative.loc[("gsae/k8", 1e-4), "captured_share"] == pytest.approx(3 / 7)
    assert cumulative.loc[("gsae/k8", 1e-2), "n_types"] == 8
    assert "Subdomain token types captured on test (8 types" in summary
    assert (tmp_path / "eval" / "recall.png").stat().st_size > 10_000
    # Paired differences per bin, SSAE (seed mean) - GSAE (one run, met by each seed): (1e-5, 1e-4] 5/6 - 2/3.
    differences = pd.read_csv(tmp_path / "eval" / "capture_differences.csv")
    decade = differences[~differences["cumulative"]].set_index(["run", "reference", "frequency_high"])
    row = decade.loc[("ssae/dense/finetune-t0-k8", "GSAE", 1e-4)]
    assert row["difference"] == pytest.approx(5 / 6 - 2 / 3) and row["n_seeds"] == 2
    # Rare-type capture (at most 1e-4: types 0-6): dense (6/7 + 5/7) / 2 against GSAE 3/7.
    compared = pd.read_csv(tmp_path / "eval" / "comparisons.csv")
    rare = compared[compared["metric"] == "rare_capture"].set_index("run").loc["ssae/dense/finetune-t0-k8"]
    assert rare["n_types"] == 7 and rare["value"] == pytest.approx(11 / 14) and rare["reference_value"] == 3 / 7
    assert "Of those, the 7 rare types (general-pool frequency at most 0.0001)" in summary


def test_frequency_bins_put_each_type_in_exactly_one_decade() -> None:
    edge_cases = np.array([0.0, 1e-4, np.nextafter(1e-4, 0), 5e-4, 1e-3, np.nextafter(1e-2, 0)])
    bins = frequency_bins(edge_cases)
    membership = np.array([in_frequency_bin(edge_cases, low, high, cumulative=False) for low, high in bins])
    assert (membership.sum(0) == 1).all()
    assert bins[1:] == [(1e-5, 1e-4), (1e-4, 1e-3), (1e-3, 1e-2)]
    # Decades include their upper edge ("at most", as every rare cutoff): 1e-4 and 1e-3 end theirs.
    assert membership[1].tolist() == [False, True, True, False, False, False]
    assert membership[2].tolist() == [False, False, False, True, True, False]
    # A type just above a power of ten starts the next decade; the top edge covers the commonest.
    assert frequency_bins(np.array([np.nextafter(1e-5, 1.0), 1e-2])) == [(1e-5, 1e-4), (1e-4, 1e-3), (1e-3, 1e-2)]
    # Cumulative shares count exactly the types of the decades up to that edge.
    for i, (low, high) in enumerate(bins):
        assert in_frequency_bin(edge_cases, low, high, cumulative=True).sum() == membership[: i + 1].sum()


def test_intervals_of_non_negative_metrics_stop_at_zero(tmp_path: Path) -> None:
    # Two seeds far apart: the t interval (1 degree of freedom) reaches far below zero.
    runs = {"gsae/k8": planted_run(tmp_path, "gsae", 1.0, 1, 0.3)}
    for tag, scale in (("", 0.05), ("-s1", 3.0)):
        runs[f"ssae/dense/finetune-t0-k8{tag}"] = planted_run(tmp_path, f"dense{tag}", scale, 2, 0.2)
    table, *_ = _report(tmp_path, runs)
    row = table.set_index(["run", "set"]).loc[("ssae/dense/finetune-t0-k8", "subdomain")]
    assert row["n_seeds"] == 2
    for metric in ("fvu", "kl"):
        assert row[f"{metric}_ci_low"] == 0.0 < row[metric] < row[f"{metric}_ci_high"], metric
    # Delta CE may be negative (an SAE can lower the loss), so its interval is left as it is.
    assert row["delta_ce_ci_low"] < 0 < row["delta_ce"]

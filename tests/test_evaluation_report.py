"""The evaluation overview on planted per-document statistics: intervals in the table, the
best SSAE chosen on validation, and a comparison stated as a finding only when its paired
interval excludes zero."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ssae_steps.evaluate import per_doc_path, write_per_doc
from ssae_steps.evaluation_report import Bootstrap, evaluation_report

N_DOCS, D = 40, 4


def _planted_run(out: Path, name: str, error_scale: float, noise_seed: int, validation_fvu: float) -> str:
    """Evaluation files of one SAE whose per-document error is ``error_scale`` times a
    shared per-document difficulty, with a little noise of its own."""
    shared = np.random.default_rng(0)
    tokens = shared.integers(20, 80, N_DOCS)
    difficulty = shared.lognormal(0, 0.5, N_DOCS)
    sum_x = shared.normal(size=(N_DOCS, D)) * tokens[:, None]
    sum_sq = 3.0 * D * tokens + np.square(sum_x).sum(1) / tokens
    own = np.random.default_rng(noise_seed).normal(1, 0.05, N_DOCS)
    per_set, sets = {}, {}
    for set_name in ("general", "subdomain"):
        err = error_scale * difficulty * own * tokens
        clean = 3.0 * tokens
        per_set[set_name] = {
            "doc_id": np.array([f"doc{i:03d}" for i in range(N_DOCS)]),
            "tokens": tokens,
            "sq_err": err,
            "sum_sq": sum_sq,
            "l0_sum": 8.0 * tokens,
            "sum_x": sum_x,
            "loss_tokens": tokens.astype(float),
            "clean_ce": clean,
            "spliced_ce": clean + err / 10,
            "kl": err / 12,
        }
        sets[set_name] = {
            "tokens": int(tokens.sum()),
            "validation": {"fvu": validation_fvu, "l0": 8.0, "docs": N_DOCS},
            "mse_per_dim": 0.1,
            "dead_fraction": 0.0,
            "dense_fraction": 0.0,
            "tail_tokens": 0,
            "tail_fvu": float("nan"),
            "head_fvu": 0.1,
            "loss_tokens": int(tokens.sum()),
            "loss_docs": N_DOCS,
        }
    path = out / "runs" / f"{name.replace('/', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tail = {"recall": 0.0, "mean_best_f1": 0.0, "concepts": 0, "evaluable": 0}
    path.write_text(json.dumps({"sets": sets, "tail": tail}))
    write_per_doc(per_doc_path(path), per_set)
    return str(path)


def test_summary_states_findings_only_where_the_paired_interval_excludes_zero(tmp_path: Path) -> None:
    runs = {
        "gsae/k8": _planted_run(tmp_path, "gsae/k8", 1.0, 1, validation_fvu=0.30),
        # 30% less error than the GSAE: a clear finding. Its validation FVU is the lowest.
        "ssae/dense/finetune-t0-k8": _planted_run(tmp_path, "dense", 0.7, 2, validation_fvu=0.20),
        # Equal to the GSAE but for its own noise: no clear difference.
        "ssae/random/finetune-t0-k8": _planted_run(tmp_path, "random", 1.0, 3, validation_fvu=0.29),
        # Lowest test error, but worse on validation: not the chosen "best SSAE".
        "ssae/bm25/finetune-t0-k8": _planted_run(tmp_path, "bm25", 0.6, 4, validation_fvu=0.25),
    }
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
    )
    table = pd.read_csv(out / "metrics.csv").set_index(["run", "set"])
    for metric in ("fvu", "delta_ce", "kl", "spliced_loss", "l0"):
        assert (table[f"{metric}_ci_low"] <= table[metric]).all() and (
            table[metric] <= table[f"{metric}_ci_high"]
        ).all()
    assert (table["n_docs"] == N_DOCS).all() and (table["n_seeds"] == 1).all()
    assert table.loc[("ssae/random/finetune-t0-k8", "subdomain"), "family"] == "control"
    assert table.loc[("ssae/random/finetune-t0-k8", "subdomain"), "label"] == "control"
    np.testing.assert_allclose(table["delta_ce"], table["spliced_loss"] - 3.0)

    compared = pd.read_csv(out / "comparisons.csv")
    fvu = compared[(compared["metric"] == "fvu") & (compared["set"] == "subdomain")].set_index(["run", "reference"])
    assert fvu.loc[("ssae/dense/finetune-t0-k8", "GSAE"), "ci_high"] < 0
    assert fvu.loc[("ssae/dense/finetune-t0-k8", "control"), "finding"]
    assert (
        fvu.loc[("ssae/random/finetune-t0-k8", "GSAE"), "ci_low"]
        < 0
        < fvu.loc[("ssae/random/finetune-t0-k8", "GSAE"), "ci_high"]
    )
    assert not fvu.loc[("ssae/random/finetune-t0-k8", "GSAE"), "finding"]
    assert ("ssae/random/finetune-t0-k8", "control") not in fvu.index

    summary = (out / "summary.md").read_text()
    assert "Best SSAE, chosen on subdomain validation FVU (0.2000): `ssae/dense/finetune-t0-k8`" in summary
    dense = next(
        line
        for line in summary.splitlines()
        if line.startswith("- `ssae/dense/finetune-t0-k8` (SSAE dense) vs GSAE, subdomain")
    )
    assert "FVU" in dense and "lower by" in dense and "95% CI of the difference" in dense
    control = next(
        line
        for line in summary.splitlines()
        if line.startswith("- `ssae/random/finetune-t0-k8` (control) vs GSAE, subdomain")
    )
    assert control.count("no clear difference") == 3 and "95% CI of the difference" in control

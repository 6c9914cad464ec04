"""The TERM study on planted evaluation files: tilted runs compared with ERM at the same k
(seed s with seed s), captured shares of token types and the tilt diagnostics read from
the training logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssae_steps.config import ConfigError
from ssae_steps.evals.compare import Bootstrap
from ssae_steps.evals.config import TermStudyConfig
from ssae_steps.evals.family import Family
from ssae_steps.evals.term_study import term_study
from tests.evals.planted import planted_run, planted_types

FREQUENCIES = [0.0, 2e-5, 5e-5, 3e-4, 0.002, 0.01]


def _run(tmp_path: Path, name: str, scale: float, noise: int, captured: list[bool], ess: float) -> tuple[str, str]:
    path = planted_run(tmp_path, name, scale, noise, validation_fvu=0.2)
    result = json.loads(Path(path).read_text())
    result["types"] = planted_types(captured, FREQUENCIES)
    Path(path).write_text(json.dumps(result))
    log = tmp_path / "logs" / f"{name.replace('/', '_')}.csv"
    log.parent.mkdir(exist_ok=True)
    # Tilted runs log the rare types' weight: 1% of the tokens, 3% of the tilted weight.
    tail = {"tail_fraction": [0.01, 0.01], "tilt_tail_share": [0.03, 0.03]} if ess < 1 else {}
    frame = {"step": [1, 2], "tilt_ess": [ess, ess], "tilt_top1_share": [0.01, 0.01], **tail}
    pd.DataFrame(frame).to_csv(log, index=False)
    return path, str(log)


def test_tilted_runs_against_erm_at_the_same_k(tmp_path: Path) -> None:
    specs = {
        # ERM at k=8, three seeds; t=10 clearly worse (30% more error) at every seed but
        # capturing more rare types; k=4 one seed, t=10 equal to ERM but for noise.
        "ssae/dense/finetune-t0-k8": (1.0, 1, [False, True, False, True, True, True], 1.0),
        "ssae/dense/finetune-t0-k8-s1": (1.05, 2, [False, False, False, True, True, True], 1.0),
        "ssae/dense/finetune-t0-k8-s2": (0.95, 5, [False, False, False, True, True, True], 1.0),
        "ssae/dense/finetune-t10-k8": (1.3, 3, [True, True, True, True, True, False], 0.4),
        "ssae/dense/finetune-t10-k8-s1": (1.35, 4, [True, True, False, True, True, True], 0.5),
        "ssae/dense/finetune-t10-k8-s2": (1.25, 6, [True] * 6, 0.45),
        "ssae/dense/finetune-t0-k4": (1.5, 1, [False] * 6, 1.0),
        "ssae/dense/finetune-t10-k4": (1.5, 3, [False] * 6, 0.3),
    }
    runs, logs = {}, {}
    for name, (scale, noise, captured, ess) in specs.items():
        runs[name], logs[name] = _run(tmp_path, name, scale, noise, captured, ess)
    baselines = tmp_path / "baselines.json"
    base = {"clean_loss": 3.0, "zero_ablation_loss": 10.0, "loss_tokens": 100}
    baselines.write_text(json.dumps({"general": base, "subdomain": base}))
    out = tmp_path / "eval"
    declared = {
        "label": "largest_tilt - erm: fvu (term)",
        "study": "term",
        "run": "ssae/dense/finetune-t10-k8",
        "reference_run": "ssae/dense/finetune-t0-k8",
        "metric": "fvu",
        "set": "subdomain",
    }
    family = Family((declared, {**declared, "metric": "rare_capture", "label": "rare"}))
    table = term_study(
        runs,
        logs,
        baselines,
        1e-4,
        out / "term_study.csv",
        out / "term.png",
        out / "term.md",
        Bootstrap(400, 0),
        family,
    )
    sub = table[table["set"] == "subdomain"].set_index(["tilt", "k"])
    assert list(sub.index) == [(0.0, 4), (10.0, 4), (0.0, 8), (10.0, 8)]
    assert sub.loc[(10.0, 8), "n_seeds"] == 3 and sub.loc[(10.0, 4), "n_seeds"] == 1
    # Rare = general frequency <= 1e-4: types 0-2. Hand counts, mean over the three seeds.
    assert sub.loc[(0.0, 8), "captured_rare"] == pytest.approx((1 / 3 + 0 + 0) / 3)
    assert sub.loc[(10.0, 8), "captured_rare"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert sub.loc[(10.0, 8), "captured_all"] == pytest.approx((5 / 6 + 5 / 6 + 1) / 3)
    assert sub.loc[(10.0, 8), "n_types_rare"] == 3
    assert sub.loc[(10.0, 8), "tilt_ess"] == pytest.approx(0.45) and sub.loc[(0.0, 4), "tilt_ess"] == 1.0
    assert sub.loc[(10.0, 8), "tail_upweight"] == pytest.approx(3.0) and np.isnan(sub.loc[(0.0, 8), "tail_upweight"])

    compared = pd.read_csv(out / "term_comparisons.csv")
    fvu = compared[(compared["metric"] == "fvu") & (compared["set"] == "subdomain")].set_index("run")
    assert set(fvu.index) == {"ssae/dense/finetune-t10-k8", "ssae/dense/finetune-t10-k4"}
    assert fvu.loc["ssae/dense/finetune-t10-k8", "reference_run"] == "ssae/dense/finetune-t0-k8"
    declared_fvu = fvu.loc["ssae/dense/finetune-t10-k8"]
    assert declared_fvu["role"] == "primary" and declared_fvu["finding"] and declared_fvu["family_ci_low"] > 0
    assert declared_fvu["n_seeds"] == 3
    assert fvu.loc["ssae/dense/finetune-t10-k4", "role"] == "exploratory"
    assert not fvu.loc["ssae/dense/finetune-t10-k4", "finding"]
    # Rare-type capture, declared too: t=10 8/9 against ERM 1/9 over three rare types - too
    # few to resample (fewer than 5), so no interval and no finding, and the summary says why.
    rare = compared[compared["metric"] == "rare_capture"].set_index("run").loc["ssae/dense/finetune-t10-k8"]
    assert rare["value"] == pytest.approx(8 / 9) and rare["reference_value"] == pytest.approx(1 / 9)
    assert rare["role"] == "primary" and not rare["finding"] and np.isnan(rare["ci_low"])
    summary = (out / "term.md").read_text()
    primary = summary.split("## Primary comparison")[1].split("## Against plain ERM")[0]
    assert "`ssae/dense/finetune-t10-k8` vs t=0, subdomain (3 seeds paired): FVU" in primary and "higher" in primary
    assert "no interval (3 rare types, fewer than 5)" in primary
    assert "m = 2" in primary
    exploratory = summary.split("## Against plain ERM")[1]
    assert "t=10, k=4, subdomain (1 seed): FVU" in exploratory and "training variance not included" in exploratory
    assert "higher by" not in exploratory
    assert (out / "term.png").stat().st_size > 10_000
    np.testing.assert_allclose(sub["delta_ce"], sub["spliced_loss"] - 3.0)


def test_term_study_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"term_study.tilts: distinct values >= 0 including 0"):
        TermStudyConfig.from_dict({"tilts": [1.0, 10.0]})
    with pytest.raises(ConfigError, match=r"term_study.seeds: at least 1"):
        TermStudyConfig.from_dict({"seeds": 0})


def test_unequal_seeds_pair_only_the_shared_seed_and_missing_types_give_nan(tmp_path: Path) -> None:
    """The tilted run has two seeds, ERM one: the comparison uses seed 0 of both (not the
    tilted run's mean). A run evaluated without token types has NaN captured shares."""
    specs = {
        "ssae/dense/finetune-t0-k8": (1.0, 1, 1.0),
        "ssae/dense/finetune-t5-k8": (1.0, 3, 0.5),
        "ssae/dense/finetune-t5-k8-s1": (2.0, 4, 0.5),
    }
    runs, logs = {}, {}
    for name, (scale, noise, ess) in specs.items():
        runs[name], logs[name] = _run(tmp_path, name, scale, noise, [True] * 6, ess)
    stripped = json.loads(Path(runs["ssae/dense/finetune-t0-k8"]).read_text())
    del stripped["types"]
    Path(runs["ssae/dense/finetune-t0-k8"]).write_text(json.dumps(stripped))
    baselines = tmp_path / "baselines.json"
    base = {"clean_loss": 3.0, "zero_ablation_loss": 10.0, "loss_tokens": 100}
    baselines.write_text(json.dumps({"general": base, "subdomain": base}))
    out = tmp_path / "eval"
    table = term_study(runs, logs, baselines, 1e-4, out / "t.csv", out / "t.png", out / "t.md", Bootstrap(300, 0))
    sub = table[table["set"] == "subdomain"].set_index("tilt")
    assert np.isnan(sub.loc[0.0, "captured_all"]) and sub.loc[5.0, "captured_all"] == 1.0
    compared = pd.read_csv(out / "term_comparisons.csv")
    row = compared[(compared["metric"] == "fvu") & (compared["set"] == "subdomain")].iloc[0]
    assert row["n_seeds"] == 1
    # Seed 0 alone (error scale 1.0), below the mean over both seeds (scales 1.0 and 2.0).
    assert row["value"] < 0.8 * sub.loc[5.0, "fvu"]
    assert not row["finding"]  # seed 0 of t=5 equals ERM but for noise

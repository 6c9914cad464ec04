"""The declared primary comparisons (``evaluation.primary``): validated with the key named,
resolved to the run names the reports use (the schema's default equals the code's:
tests/test_config.py)."""

from __future__ import annotations

import pytest

from ssae_steps.config import ConfigError
from ssae_steps.evals.config import EvaluationConfig, default_primary, resolve_primary

RUNS = {s: f"ssae/{s}/finetune-t0-k32" for s in ("seed", "dense", "bm25", "random")}


def _resolve(primary: list, **overrides: object) -> list[dict]:
    kwargs = {
        "strategies": list(RUNS),
        "ssae_run_of": RUNS,
        "gsae_run": "gsae/k32",
        "term_runs": ("ssae/dense/finetune-t500-k32", "ssae/dense/finetune-t0-k32"),
        "debias": True,
    } | overrides
    return resolve_primary(primary, **kwargs)  # type: ignore[arg-type]


def test_the_default_family_names_the_papers_claims_with_run_names() -> None:
    family = _resolve(default_primary())
    assert len(family) == 8
    pairs = {(p["run"], p["reference_run"], p["metric"]) for p in family}
    assert ("ssae/dense/finetune-t0-k32", "gsae/k32", "rare_capture") in pairs
    assert ("ssae/dense/finetune-t0-k32", "ssae/random/finetune-t0-k32", "delta_ce") in pairs
    assert ("ssae/dense/finetune-t500-k32", "ssae/dense/finetune-t0-k32", "rare_capture") in pairs
    assert ("ssae_bios", "gsae", "shift_worst_group") in pairs
    # A study that is off leaves the family (which then adjusts for fewer comparisons).
    assert len(_resolve(default_primary(), term_runs=None, debias=False)) == 6


def test_bad_primary_entries_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"evaluation.primary\[0\].metric: 'mse'"):
        EvaluationConfig.from_dict({"primary": [{"study": "evaluation", "sae": "dense", "reference": "gsae",
                                                 "metric": "mse"}]}).validate("evaluation")  # fmt: skip
    with pytest.raises(ConfigError, match=r"evaluation.primary\[1\]: a term comparison"):
        EvaluationConfig.from_dict({"primary": [
            {"study": "evaluation", "sae": "dense", "reference": "control", "metric": "fvu"},
            {"study": "term", "sae": "dense", "reference": "erm", "metric": "rare_capture"},
        ]}).validate("evaluation")  # fmt: skip
    with pytest.raises(ConfigError, match="listed twice"):
        EvaluationConfig(primary=default_primary() + default_primary()[:1]).validate("evaluation")


def test_a_comparison_the_run_does_not_make_leaves_the_family_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    family = _resolve(default_primary(), strategies=["seed", "dense"])
    assert len(family) == 8 - 3 and all(p["reference_run"] != "ssae/random/finetune-t0-k32" for p in family)
    assert "evaluation.primary[3] (dense - control: fvu (evaluation)): strategy 'random'" in caplog.text

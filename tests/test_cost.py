"""The cost page sums Snakemake's benchmark TSVs by stage, using each job's latest line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ssae_steps.cost import cost_report

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _tsv(path: Path, *rows: tuple[float, float, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{s}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n" for s, rss, cpu in rows]
    path.write_text(HEADER + "".join(lines))


def test_cost_page_sums_jobs_by_stage(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    _tsv(bench / "train_sae/general/k32.tsv", (150.0, 900.0, 250.0))
    # Benchmarked twice (a rerun appends): only the latest line counts.
    _tsv(bench / "train_sae/physics/dense/finetune-t0-k32.tsv", (500.0, 9999.0, 900.0), (80.0, 1100.0, 140.0))
    _tsv(bench / "eval/runs/general/k32.tsv", (300.0, 2200.0, 590.0))
    _tsv(bench / "prepare_model.tsv", (130.0, 3000.0, 120.0))
    out = tmp_path / "results"
    stages = cost_report(out / "cost.csv", out / "cost.png", out / "cost.md", benchmarks=bench).set_index("stage")
    assert list(stages.index) == ["eval", "train_sae", "prepare_model"]  # heaviest first
    assert stages.loc["train_sae", "jobs"] == 2
    assert stages.loc["train_sae", "wall_s"] == pytest.approx(230.0)
    assert stages.loc["train_sae", "cpu_s"] == pytest.approx(390.0)
    assert stages.loc["train_sae", "peak_rss_mb"] == pytest.approx(1100.0)
    assert stages["wall_share"].sum() == pytest.approx(1.0)
    jobs = pd.read_csv(out / "cost.csv")
    assert set(jobs["job"]) == {"general/k32", "physics/dense/finetune-t0-k32", "runs/general/k32", "prepare_model"}
    summary = (out / "cost.md").read_text()
    assert "4 jobs with a benchmark; summed wall time 11.0 min" in summary
    assert "| train_sae | 2 | 3.8 |" in summary
    assert (out / "cost.png").stat().st_size > 5_000


def test_cost_page_compares_with_a_reference_run(tmp_path: Path) -> None:
    before = tmp_path / "before"
    _tsv(before / "benchmarks/train_sae/general/k32.tsv", (100.0, 900.0, 200.0))
    _tsv(before / "benchmarks/eval/runs/general/k32.tsv", (60.0, 900.0, 120.0))
    cost_report(before / "cost.csv", before / "cost.png", before / "cost.md", benchmarks=before / "benchmarks")
    now = tmp_path / "now"
    _tsv(now / "benchmarks/train_sae/general/k32.tsv", (110.0, 900.0, 210.0))
    _tsv(now / "benchmarks/train_sae/general/k16.tsv", (40.0, 900.0, 50.0))
    _tsv(now / "benchmarks/debias/debias.tsv", (30.0, 900.0, 60.0))
    cost_report(now / "cost.csv", now / "cost.png", now / "cost.md", now / "benchmarks", before / "cost.csv")
    summary = (now / "cost.md").read_text()
    assert "## Against" in summary
    # train_sae: 100 s -> 150 s wall, 200 -> 260 s CPU; eval gone; debias new.
    assert "| train_sae | 1 → 2 | 1.7 → 2.5 | 1.50 | 3.3 → 4.3 | 1.30 |" in summary
    assert "| eval | 1 → 0 | 1.0 → 0.0 | 0.00 |" in summary
    assert "| debias | 0 → 1 | 0.0 → 0.5 |  |" in summary
    assert "| **all** | 2 → 3 | 2.7 → 3.0 | 1.12 |" in summary

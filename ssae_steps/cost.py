"""What a configuration costs: wall time, CPU time and peak memory of every job, from the
``benchmarks/`` TSVs Snakemake writes for each heavy rule, summed by stage.

A job's TSV is the cost of the last run that produced its current outputs, so a rerun
that reused earlier results still shows what those results took. Stages are the first
folder under ``benchmarks/`` (``train_sae``, ``eval``, ``cache_activations`` ...); the
table lists every job beside them.

With ``reference`` (another run's ``cost.csv``, e.g. the code before a change, run on the
same machine) the page adds a per-stage comparison: jobs, summed wall and CPU time of both
runs and their ratio.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

from ssae_steps.cli import run, save_figure
from ssae_steps.files import atomic_path, write_text

log = logging.getLogger("ssae.cost_report")


def read_benchmarks(root: str | Path) -> Any:
    """One row per job: ``stage``, ``job`` (its path under the stage), ``wall_s``,
    ``cpu_s``, ``peak_rss_mb`` (the last line of each TSV: the latest measurement)."""
    import pandas as pd

    root = Path(root)
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        if frame.empty:
            continue
        last = frame.iloc[-1]
        relative = path.relative_to(root).with_suffix("")
        rows.append(
            {
                "stage": relative.parts[0] if len(relative.parts) > 1 else relative.name,
                "job": "/".join(relative.parts[1:]) or relative.name,
                "wall_s": float(last["s"]),
                "cpu_s": float(last.get("cpu_time", float("nan"))),
                "peak_rss_mb": float(last["max_rss"]),
            }
        )
    return pd.DataFrame(rows, columns=["stage", "job", "wall_s", "cpu_s", "peak_rss_mb"])


def by_stage(jobs: Any) -> Any:
    """Per stage: jobs, summed wall and CPU time, the largest peak RSS, its share of the
    summed wall time; heaviest first."""
    table = (
        jobs.groupby("stage")
        .agg(jobs=("job", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), peak_rss_mb=("peak_rss_mb", "max"))
        .sort_values("wall_s", ascending=False)
        .reset_index()
    )
    total = table["wall_s"].sum()
    table["wall_share"] = table["wall_s"] / total if total else float("nan")
    return table


def against_reference(stages: Any, reference: Any) -> list[str]:
    """Markdown lines comparing this run's stages (:func:`by_stage`) with a reference run's
    jobs table (``cost.csv``): jobs, wall and CPU minutes of both and the ratios."""
    before = by_stage(reference).set_index("stage")
    now = stages.set_index("stage")
    names = list(dict.fromkeys([*now.index, *before.index]))
    before, now = before.reindex(names, fill_value=0), now.reindex(names, fill_value=0)

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b and b == b and a == a else ""

    def line(name: str, jobs: tuple[int, int], wall: tuple[float, float], cpu: tuple[float, float]) -> str:
        return (
            f"| {name} | {jobs[0]} → {jobs[1]} | {wall[0]:.1f} → {wall[1]:.1f} | {ratio(wall[1], wall[0])} | "
            f"{cpu[0]:.1f} → {cpu[1]:.1f} | {ratio(cpu[1], cpu[0])} |"
        )

    lines = [
        "| stage | jobs (before → now) | wall min (before → now) | × | CPU min (before → now) | × |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        b, n = before.loc[name], now.loc[name]
        lines.append(
            line(
                name,
                (int(b["jobs"]), int(n["jobs"])),
                (b["wall_s"] / 60, n["wall_s"] / 60),
                (b["cpu_s"] / 60, n["cpu_s"] / 60),
            )
        )
    wall, cpu = ((reference[key].sum() / 60, stages[key].sum() / 60) for key in ("wall_s", "cpu_s"))
    lines.append(line("**all**", (len(reference), int(stages["jobs"].sum())), wall, cpu))
    return lines


def cost_report(
    out_table: str | Path,
    out_plot: str | Path,
    out_summary: str | Path,
    benchmarks: str | Path = "benchmarks",
    reference: Annotated[Path | None, "another run's cost.csv to compare with, stage by stage"] = None,
) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = read_benchmarks(benchmarks)
    stages = by_stage(jobs)
    with atomic_path(out_table) as tmp:
        jobs.to_csv(tmp, index=False)

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(13, 0.45 * max(len(stages), 3) + 1.5))
    ax_time.barh(stages["stage"], stages["wall_s"] / 60, color="tab:blue", label="wall")
    ax_time.barh(stages["stage"], stages["cpu_s"] / 60, color="none", edgecolor="black", label="CPU")
    ax_time.set_xlabel("minutes, summed over the stage's jobs")
    ax_time.legend(fontsize=8)
    ax_mem.barh(stages["stage"], stages["peak_rss_mb"] / 1024, color="tab:orange")
    ax_mem.set_xlabel("largest peak RSS of a job (GB)")
    for ax in (ax_time, ax_mem):
        ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, out_plot)

    lines = [
        "# What this run cost",
        "",
        f"{len(jobs)} jobs with a benchmark; summed wall time {jobs['wall_s'].sum() / 60:.1f} min "
        f"(jobs that ran side by side overlap), CPU time {jobs['cpu_s'].sum() / 60:.1f} min, largest peak RSS "
        f"{jobs['peak_rss_mb'].max() / 1024 if len(jobs) else float('nan'):.2f} GB.",
        "",
        "| stage | jobs | wall (min) | share | CPU (min) | peak RSS (GB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['stage']} | {r['jobs']} | {r['wall_s'] / 60:.1f} | {r['wall_share']:.0%} | {r['cpu_s'] / 60:.1f} | "
        f"{r['peak_rss_mb'] / 1024:.2f} |"
        for _, r in stages.iterrows()
    ]
    lines += ["", "Every job: `cost.csv` (from `benchmarks/`)."]
    if reference is not None:
        import pandas as pd

        lines += [
            "",
            f"## Against `{reference}`",
            "",
            "Another run's jobs (the code before a change, say, on the same machine); × = now / before.",
            "",
            *against_reference(stages, pd.read_csv(reference)),
        ]
    write_text(out_summary, "\n".join(lines) + "\n")
    log.info("%d jobs, %.1f min summed wall time", len(jobs), jobs["wall_s"].sum() / 60)
    return stages


def main(argv: list[str] | None = None) -> int:
    return run(cost_report, argv)


if __name__ == "__main__":
    sys.exit(main())

"""TERM study: SSAEs with the paper's recipe (finetuned from the GSAE on dense-retrieval
data) at tilts spanning orders of magnitude, at several k, against plain ERM (t = 0).

Per (tilt, k), on the test part of the held-out sets, with the intervals of
``ssae_steps.evals.compare`` (seed mean; document bootstrap, plus the seed spread where a
run has several seeds): FVU, ΔCE and KL; tail-token FVU and tail-concept recall (point
values: they rest on a handful of tokens); the share of subdomain token types captured, over
all types evaluable on test and over the rare ones (general-pool frequency at most
``rare_frequency``: ``ssae_steps.evals.tail.is_rare``), with a bootstrap interval over
types and test documents resampled together (``ssae_steps.evals.capture``); and the tilt's
own diagnostics from training (mean effective sample size of the weights and top-1% weight
share). Each tilted run is compared with the t = 0 run at the same k, seed s with seed s.
The declared comparison (``evaluation.primary``: by default the largest tilt against ERM at
the main k on rare-type capture) gets a family-wise interval and is the only one that can be
a finding; the rest are exploratory (``ssae_steps.evals.compare``).

The tilt applies to the reconstruction term only (``sae.objective.tilted_loss``), scale-free by
default (``training.tilt_scale``), for every architecture.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ssae_steps.cli import run, save_figure
from ssae_steps.evals.capture import share_interval
from ssae_steps.evals.compare import (
    PCT,
    Bootstrap,
    all_comparisons,
    comparison_clause,
    interval_text,
    load_runs,
    metrics_table,
    seed_type_counts,
)
from ssae_steps.evals.family import Family, declared_row, exploratory
from ssae_steps.evals.tail import is_rare
from ssae_steps.files import atomic_path, write_text
from ssae_steps.sae.runs import parse_run, seed_groups

log = logging.getLogger("ssae.term_study")


def captured_type_share(
    results: list[dict[str, Any]], part: str, rare_frequency: float, boot: Bootstrap
) -> dict[str, Any]:
    """The captured share of all evaluated types (``part`` "all") or of the rare ones
    (:func:`~ssae_steps.evals.tail.is_rare`: general-pool frequency at most
    ``rare_frequency``), seed mean, documents and types resampled together."""
    seeds = seed_type_counts(results)
    empty = {f"captured_{part}": math.nan, f"captured_{part}_ci_low": math.nan, f"captured_{part}_ci_high": math.nan}
    if seeds is None:
        return empty
    frequency = seeds[0].frequency
    types = is_rare(frequency, rare_frequency) if part == "rare" else np.ones(len(frequency), dtype=bool)
    if not types.any():
        return empty
    ci = share_interval(seeds, types, boot.samples, boot.seed)
    return {
        f"captured_{part}": ci.estimate,
        f"captured_{part}_ci_low": max(ci.low, 0.0),  # a share lies in [0, 1]
        f"captured_{part}_ci_high": min(ci.high, 1.0),
        f"n_types_{part}": int(types.sum()),
    }


def _tilt_diagnostics(train_logs: list[str]) -> dict[str, float]:
    import pandas as pd

    logs = [pd.read_csv(p) for p in train_logs if Path(p).exists()]
    if not logs or any("tilt_ess" not in frame for frame in logs):
        return {"tilt_ess": math.nan, "tilt_top1_share": math.nan, "tail_upweight": math.nan}
    # Rare types' tokens' share of the tilted weight over their share of the tokens (ERM: 1),
    # from the logged steps of runs that logged it (tilted runs).
    tail = [f for f in logs if "tilt_tail_share" in f and f["tail_fraction"].notna().any()]
    upweight = [f["tilt_tail_share"].mean() / f["tail_fraction"].mean() for f in tail if f["tail_fraction"].mean() > 0]
    return {
        "tilt_ess": float(np.mean([frame["tilt_ess"].mean() for frame in logs])),
        "tilt_top1_share": float(np.mean([frame["tilt_top1_share"].mean() for frame in logs])),
        "tail_upweight": float(np.mean(upweight)) if upweight else math.nan,
    }


def study_table(
    loaded: dict[str, tuple[dict, dict]],
    baselines: dict[str, Any],
    train_logs: dict[str, str],
    rare_frequency: float,
    boot: Bootstrap,
) -> Any:
    """One row per (tilt, k, set): the metrics table's columns for the run (seed mean with
    intervals), the captured shares of token types, and the tilt diagnostics."""
    groups = seed_groups(list(loaded))
    table = metrics_table(loaded, baselines, boot, groups)
    table = table[table["family"] != "GSAE"].copy()
    extra = []
    for _, row in table.iterrows():
        names = groups[row["run"]]
        results = [loaded[n][0] for n in names]
        extra.append(
            {
                **captured_type_share(results, "all", rare_frequency, boot),
                **captured_type_share(results, "rare", rare_frequency, boot),
                **_tilt_diagnostics([train_logs[n] for n in names if n in train_logs]),
            }
        )
    import pandas as pd

    out = pd.concat([table.reset_index(drop=True), pd.DataFrame(extra)], axis=1)
    return out.sort_values(["k", "tilt", "set"]).reset_index(drop=True)


def erm_pairs(table: Any) -> list[tuple[str, str, str]]:
    """Each tilted run with the t = 0 run at the same k."""
    runs = table.drop_duplicates("run")
    reference = {r["k"]: r["run"] for _, r in runs.iterrows() if r["tilt"] == 0}
    return [(r["run"], "t=0", reference[r["k"]]) for _, r in runs.iterrows() if r["tilt"] > 0 and r["k"] in reference]


def _plot(table: Any, out: Path) -> None:
    import matplotlib.pyplot as plt

    sub = table[table["set"] == "subdomain"]
    panels = [
        ("fvu", "FVU, subdomain (test)"),
        ("delta_ce", "ΔCE, subdomain (nats/token)"),
        ("tail_fvu", "FVU on tail-concept tokens (no interval)"),
        ("captured_all", "share of subdomain token types captured"),
        ("captured_rare", "... of rare types (general frequency ≤ tail max)"),
        ("tilt_ess", "tilt ESS (fraction of the batch, training)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (metric, title) in zip(axes.flat, panels, strict=True):
        for k, line in sub.groupby("k"):
            line = line.sort_values("tilt")
            y = line[metric].to_numpy(dtype=float)
            if f"{metric}_ci_low" in line:
                err = np.abs(np.vstack([y - line[f"{metric}_ci_low"], line[f"{metric}_ci_high"] - y]))
                err = np.nan_to_num(err)
            else:
                err = None
            n = int(line["n_seeds"].max())
            ax.errorbar(line["tilt"], y, yerr=err, fmt="o-", capsize=3, label=f"k={k} ({n} seed{'s' * (n > 1)})")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("tilt t (0 = ERM)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def term_study(
    runs: dict[str, str],
    train_logs: dict[str, str],
    baselines_path: str | Path,
    rare_frequency: float,
    out_table: str | Path,
    out_plot: str | Path,
    out_summary: str | Path,
    boot: Bootstrap | None = None,
    family: Family | None = None,
) -> Any:
    """Write the study's table (CSV, with ``term_comparisons.csv`` beside it), figure and
    Markdown summary; return the table. ``family``: the run's primary comparisons, of which
    this study computes those of the ``term`` study."""
    import matplotlib

    matplotlib.use("Agg")
    boot = boot or Bootstrap()
    family = (family or Family()).of_study("term")
    for name in runs:
        if parse_run(name)["family"] == "GSAE":
            raise ValueError(f"{name}: the TERM study takes SSAE runs only")
    loaded = load_runs(runs)
    baselines = json.loads(Path(baselines_path).read_text())
    table = study_table(loaded, baselines, train_logs, rare_frequency, boot)
    groups, pairs = seed_groups(list(loaded)), erm_pairs(table)
    compared = all_comparisons(loaded, pairs, rare_frequency, boot, groups, family)
    out_table = Path(out_table)
    with atomic_path(out_table) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_table.with_name("term_comparisons.csv")) as tmp:
        compared.to_csv(tmp, index=False)
    _plot(table, Path(out_plot))

    lines = [
        "# TERM study",
        "",
        "SSAEs finetuned from the GSAE on dense-retrieval data at each tilt t (0 = plain ERM); tilt on",
        "the reconstruction term only, scale-free (`training.tilt_scale`). Test part of the held-out",
        "sets; intervals as in `summary.md` (document bootstrap, plus the seed spread where a run has",
        f"several seeds; {PCT}%). Tail-token FVU and tail-concept recall are point values. Captured types:",
        "share of subdomain token types with a validation-chosen latent reaching the F1 threshold on test;",
        f"rare = general-pool frequency at most {rare_frequency:g}.",
        "",
        "## Primary comparison (stated in advance)",
        "",
        f"Family-wise {PCT}% interval over the run's {family.size} primary comparisons (Bonferroni; see",
        "`summary.md`): a finding only when it excludes zero and at least two seeds were paired.",
        "",
    ]
    for entry in family.primary:
        r = declared_row(compared, entry)
        if r is None:
            lines.append(f"- {entry['label']}: not computed (no such pair in this run).")
            continue
        lines.append(f"- `{r['run']}` vs t=0, {r['set']} ({int(r['n_seeds'])} seeds paired): {comparison_clause(r)}.")
    if not family.primary:
        lines.append("- None declared for the TERM study.")
    lines += ["", "## Against plain ERM at the same k (exploratory, not findings)", ""]
    others = exploratory(compared)
    if others.empty:
        lines.append("No other tilted run to compare.")
    for (run_name, set_name), part in others.groupby(["run", "set"], sort=False):
        r = table[(table["run"] == run_name) & (table["set"] == set_name)].iloc[0]
        n = int(part["n_seeds"].iloc[0])
        lines.append(
            f"- t={r['tilt']:g}, k={r['k']}, {set_name} ({n} seed{'s' * (n > 1)}): "
            + "; ".join(comparison_clause(row) for _, row in part.iterrows())
            + "."
        )
    lines += ["", "## Every run (subdomain test text)", ""]
    header = (
        "| t | k | seeds | FVU | ΔCE (nats) | tail FVU | tail recall | types captured | rare types captured | ESS "
        "| rare weight × |"
    )
    lines += [header, "|" + " --- |" * 11]
    for _, r in table[table["set"] == "subdomain"].iterrows():
        lines.append(
            f"| {r['tilt']:g} | {r['k']} | {r['n_seeds']} | {interval_text(r, 'fvu')} | "
            f"{interval_text(r, 'delta_ce')} | "
            f"{r['tail_fvu']:.4f} | {r['tail_recall']:.3f} | {interval_text(r, 'captured_all')} | "
            f"{interval_text(r, 'captured_rare')} | {r['tilt_ess']:.3f} | {r['tail_upweight']:.2f} |"
        )
    write_text(out_summary, "\n".join(lines) + "\n")
    log.info("wrote %s", out_summary)
    return table


def term_study_command(
    runs: Annotated[dict[str, str], "JSON object: SSAE run name -> evaluation JSON"],
    train_logs: Annotated[dict[str, str], "JSON object: run name -> train_log.csv"],
    baselines: Path,
    rare_frequency: float,
    out_table: Path,
    out_plot: Path,
    out_summary: Path,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    primary: Annotated[list[dict] | None, "JSON array: the run's primary comparisons (resolve_primary)"] = None,
) -> None:
    """TERM study: tilted SSAEs against plain ERM at the same k (table, plot, summary)."""
    term_study(
        runs,
        train_logs,
        baselines,
        rare_frequency,
        out_table,
        out_plot,
        out_summary,
        Bootstrap(bootstrap_samples, seed),
        Family(tuple(primary or ())),
    )


def main(argv: list[str] | None = None) -> int:
    return run(term_study_command, argv)


if __name__ == "__main__":
    sys.exit(main())

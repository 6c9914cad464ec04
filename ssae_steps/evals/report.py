"""Evaluation overview: the metrics table of every SAE on every held-out set (test part,
with 95% intervals: a bootstrap over test documents, plus the spread between training seeds
where an SAE has several; ``ssae_steps.evals.compare``), paired comparisons (each SSAE vs the
GSAE and vs the matched-compute control), Pareto plots, a comparison plot and a Markdown
summary whose findings are computed from the tables (whichever way they come out).

The tables and comparisons come from ``ssae_steps.evals.compare``: the comparisons stated in
advance (``evaluation.primary``) get family-wise intervals and are the only ones that can be
findings; every other comparison is listed as exploratory. Runs that differ only in their
training seed form one row of ``metrics.csv`` (mean over seeds, ``n_seeds``);
``metrics_by_seed.csv`` keeps every run's own row.

Captured token types against frequency (the paper's Figs. 2 and 6, with their paired
differences: ``capture_differences.csv``) come from ``ssae_steps.evals.frequency_report``.
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
from ssae_steps.evals.compare import (
    INTERVAL_METRICS,
    PCT,
    Bootstrap,
    all_comparisons,
    comparison_clause,
    comparison_pairs,
    comparison_sentences,
    interval_text,
    load_runs,
    metrics_table,
    seeds_text,
)
from ssae_steps.evals.family import Family, declared_row, exploratory
from ssae_steps.evals.frequency_report import (
    capture_differences,
    fig6_curves,
    recall_by_frequency,
    recall_plot,
    recall_sentences,
)
from ssae_steps.files import atomic_path, write_text
from ssae_steps.sae.runs import seed_groups

log = logging.getLogger("ssae.evaluation_report")
FVU_FORMULA = "FVU = sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2"


def findings(table: Any, main_k: int) -> list[str]:
    """The best SSAE (chosen on validation FVU, reported on test) and the data-selection
    strategies side by side, from the table. Runs are chosen on their first seed's
    validation FVU, so a run with one seed has no edge from its noisier value."""
    sub = table[(table["set"] == "subdomain") & (table["k"] == main_k)].set_index("run")
    ssae = sub[sub["family"] == "SSAE"]
    lines = []
    if not ssae.empty:
        best = ssae["validation_fvu_first_seed"].idxmin()
        b = ssae.loc[best]
        lines.append(
            f"Best SSAE, chosen on subdomain validation FVU ({b['validation_fvu_first_seed']:.4f}, first seed): "
            f"`{best}` "
            f"({seeds_text(b['n_seeds']).removesuffix(' paired')}, values their mean). On subdomain "
            f"test text: FVU {interval_text(b, 'fvu')}, ΔCE {interval_text(b, 'delta_ce')} nats, "
            f"KL {interval_text(b, 'kl')} nats "
            f"(clean loss {b['clean_loss']:.4f}); tail-concept recall {b['tail_recall']:.3f} over "
            f"{int(b['tail_evaluable'])} evaluable concepts (no interval)."
        )
    chosen = sub[sub["family"] != "GSAE"].sort_values("validation_fvu_first_seed").groupby("strategy").head(1)
    if not chosen.empty:
        lines.append(
            "Subdomain test FVU per data-selection strategy (each strategy's run chosen on validation FVU, "
            "first seed; n = seeds): "
            + ", ".join(
                f"{r['label']} {interval_text(r, 'fvu')} (n={r['n_seeds']})"
                for _, r in chosen.sort_values("fvu").iterrows()
            )
            + "."
        )
    return lines


def _errors(part: Any, metric: str) -> Any:
    if f"{metric}_ci_low" not in part:
        return None
    return np.abs(np.vstack([part[metric] - part[f"{metric}_ci_low"], part[f"{metric}_ci_high"] - part[metric]]))


def _pareto_plot(table: Any, sweep: dict[str, list[str]], out: Path) -> None:
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(table["set"]))
    fig, axes = plt.subplots(2, len(sets), figsize=(6 * len(sets), 8), squeeze=False)
    for col, set_name in enumerate(sets):
        part = table[table["set"] == set_name]
        for label, names in sweep.items():
            line = part[part["run"].isin(names)].sort_values("l0")
            if line.empty:
                continue
            for row, metric in enumerate(["fvu", "delta_ce"]):
                axes[row, col].errorbar(line["l0"], line[metric], yerr=_errors(line, metric), fmt="o-", label=label)
        axes[0, col].set_title(f"held-out {set_name} text (test part)")
        axes[0, col].set_ylabel("FVU")
        axes[1, col].set_ylabel("ΔCE, SAE spliced in - clean (nats/token)")
        for row in range(2):
            axes[row, col].set_xlabel("L0 (active latents per token)")
            axes[row, col].set_xscale("log")
            axes[row, col].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def _comparison_plot(table: Any, main_k: int, out: Path) -> None:
    import matplotlib.pyplot as plt

    main = table[table["k"] == main_k]
    runs = list(dict.fromkeys(main["run"]))
    panels = [
        ("fvu", "subdomain", "FVU, subdomain"),
        ("fvu", "general", "FVU, general"),
        ("delta_ce", "subdomain", "ΔCE (nats), subdomain"),
        ("kl", "subdomain", "KL(clean ‖ spliced), subdomain"),
        ("tail_fvu", "subdomain", "FVU on tail-concept tokens"),
        ("tail_recall", "subdomain", "tail concepts with a dedicated latent"),
    ]
    colors = {"GSAE": "tab:grey", "control": "tab:orange", "SSAE": "tab:blue"}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.35 * len(runs) + 2), sharey=True)
    for ax, (metric, set_name, title) in zip(axes, panels, strict=True):
        part = main[main["set"] == set_name].set_index("run").reindex(runs)
        ax.barh(part["label"], part[metric], xerr=_errors(part, metric), color=[colors[f] for f in part["family"]])
        ax.set_title(title + " (test)", fontsize=9)
        ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, out)


def _seed_note(table: Any) -> str:
    multi = table[table["n_seeds"] > 1].drop_duplicates("run")
    if multi.empty:
        return "none (one seed per SAE)"
    return ", ".join(f"{r['label']} ({r['n_seeds']})" for _, r in multi.iterrows())


def markdown_table(frame: Any) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _summary_table(table: Any, main_k: int) -> str:
    main = table[table["k"] == main_k].copy()
    for metric in INTERVAL_METRICS:
        main[metric] = [interval_text(row, metric) for _, row in main.iterrows()]
    cols = ["run", "label", "set", "n_docs", "n_seeds", *INTERVAL_METRICS, "loss_recovered", "dead_fraction"]
    cols.append("tail_recall")
    return markdown_table(main[cols])


def primary_section(compared: Any, family: Family, labels: dict[str, str]) -> list[str]:
    """The declared comparisons of this report, each with its family-wise interval and
    verdict; declared ones with no row (a side the run lacks) are said to be missing."""
    lines = []
    for entry in family.primary:
        r = declared_row(compared, entry)
        if r is None:
            lines.append(f"{entry['label']}: not computed (no such pair in this run).")
            continue
        n = int(r["n_types"]) if "n_types" in r and not math.isnan(r["n_types"]) else None
        what = f"{n} rare types, " if n is not None and r["metric"] == "rare_capture" else ""
        lines.append(
            f"`{r['run']}` ({labels.get(r['run'], r['run'])}) vs {r['reference']}, {r['set']} test text "
            f"({what}{int(r['n_docs'])} documents, {seeds_text(int(r['n_seeds']))}): {comparison_clause(r)}."
        )
    return lines


def evaluation_report(
    runs: dict[str, str],
    baselines_path: str | Path,
    main_k: int,
    sweep: dict[str, list[str]],
    out_table: str | Path,
    out_pareto: str | Path,
    out_comparison: str | Path,
    out_summary: str | Path,
    boot: Bootstrap | None = None,
    out_recall: str | Path | None = None,
    rare_frequency: float = 1e-4,
    family: Family | None = None,
) -> Any:
    """Write every table, plot and summary.md of the evaluation; ``family``: the run's primary
    comparisons (``ssae_steps.evals.config.resolve_primary``), of which this report computes
    those of the ``evaluation`` study."""
    import matplotlib

    matplotlib.use("Agg")
    boot = boot or Bootstrap()
    family = family or Family()
    # Only this report's declared comparisons are primary here (a TERM pair the evaluation
    # also makes stays exploratory in it), at the run's family size.
    family = family.of_study("evaluation")
    baselines = json.loads(Path(baselines_path).read_text())
    loaded = load_runs(runs)
    groups = seed_groups(list(loaded))
    table = metrics_table(loaded, baselines, boot, groups)
    by_seed = metrics_table(loaded, baselines, boot, groups={name: [name] for name in loaded})
    pairs = comparison_pairs(table, main_k)
    compared = all_comparisons(loaded, pairs, rare_frequency, boot, groups, family)
    curves = recall_by_frequency(loaded, table, main_k, boot, groups, rare_frequency)
    differences = capture_differences(loaded, pairs, boot, groups)
    out_table = Path(out_table)
    outputs = (
        (out_table, table),
        (out_table.with_name("metrics_by_seed.csv"), by_seed),
        (out_table.with_name("comparisons.csv"), compared),
        (out_table.with_name("recall_by_frequency.csv"), curves),
        (out_table.with_name("capture_differences.csv"), differences),
    )
    for path, frame in outputs:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    with atomic_path(out_table.with_suffix(".parquet")) as tmp:
        table.to_parquet(tmp, index=False)
    _pareto_plot(table, sweep, Path(out_pareto))
    _comparison_plot(table, main_k, Path(out_comparison))
    if out_recall is not None:
        recall_plot(curves, differences, fig6_curves(loaded, table, main_k, groups), Path(out_recall))

    labels = dict(zip(table["run"], table["label"], strict=False))
    lines = [
        "# SAE evaluation",
        "",
        "Every number is measured on the **test** part of each held-out set; the validation part",
        "(a hash of each document's id) serves every choice: the best SSAE, each tail concept's latent.",
        f"Intervals: {PCT}% percentile bootstrap ({boot.samples} resamples) over test documents. Where an SAE",
        "has several training seeds (`n_seeds`) the value is their mean and the interval is",
        "mean ± t·sqrt(seed variance/n + the documents' bootstrap variance of the mean), t with",
        "n - 1 degrees of freedom (conservative; `ssae_steps/bootstrap.py`). A comparison",
        "resamples the same documents for both SAEs and pairs seed s with seed s. Shares of captured",
        "token types resample test documents and token types together.",
        f"SAEs with several seeds here: {_seed_note(table)}.",
        "",
        f"- {FVU_FORMULA} (one mean over the test part of the held-out set).",
        "- L0: mean active latents per token. ΔCE = spliced - clean next-token cross-entropy (nats/token)",
        "  on seeded, uniformly drawn test windows, with the hooked block's output replaced by the SAE",
        "  reconstruction (full model, LM head included); KL = KL(clean ‖ spliced) per token.",
        "- Loss recovered (secondary) = (zero-ablation loss - spliced loss) / (zero-ablation loss - clean loss).",
        "- `control`: the GSAE finetuned for the same steps and tokens on general text only (the `random`",
        "  strategy, no seed documents), so SSAE vs control separates specialising from more training.",
        "- Tail concepts: subdomain-specific rare tokens (docs/evaluation.md); tail recall = share of them whose",
        "  latent, chosen on validation, detects them on test with F1 >= the configured threshold.",
        "  Tail concepts and the token types of the recall curve are chosen on validation counts; one",
        "  with no test occurrence is left out (the same for every SAE). Rare = general-pool frequency at",
        f"  most {rare_frequency:g} (the frequency bins include their upper edge); rare-type capture = the",
        "  captured share of the rare evaluated types.",
        "- ΔCE, KL and every loss cover each window's predictions of its 2nd to last token: the",
        "  prediction of the first token from BOS alone, which no splice changes, is left out.",
        "",
        "Baselines (nats/token): "
        + "; ".join(
            f"{name}: clean {b['clean_loss']:.4f}, zero-ablation {b['zero_ablation_loss']:.4f} "
            f"over {b['loss_tokens']} tokens"
            for name, b in baselines.items()
        ),
        "",
        "## Primary comparisons (stated in advance)",
        "",
        f"Declared in `evaluation.primary`: {family.size} comparison(s) in this run (evaluation, TERM study and",
        f"debias together). Each gets a family-wise {PCT}% interval (Bonferroni: each at "
        f"{100 * family.level:.2f}%), so all of them",
        "cover together with probability at least 95%; a difference is a finding only when that interval",
        "excludes zero and at least two training seeds were paired (seed s with seed s).",
        "",
        *[f"- {line}" for line in primary_section(compared, family, labels)],
        "",
        "## Exploratory (not findings)",
        "",
        f"Unadjusted {PCT}% intervals, listed for orientation: with this many of them some exclude zero by",
        "chance, so none is called a finding.",
        "",
        *[f"- {line}" for line in findings(table, main_k)],
        *[f"- {line}" for line in recall_sentences(curves, rare_frequency)],
        *[f"- {line}" for line in comparison_sentences(table, exploratory(compared))],
        "",
        f"## All SAEs at k={main_k} (estimate [{PCT}% interval])",
        "",
        _summary_table(table, main_k),
        "",
        "Full tables (all k, all columns): `metrics.csv` / `metrics.parquet`; paired differences: `comparisons.csv`",
        "(the `role` column says primary or exploratory); captured shares per frequency bin:",
        "`recall_by_frequency.csv`, their paired differences: `capture_differences.csv`.",
    ]
    write_text(out_summary, "\n".join(lines) + "\n")
    log.info("wrote %s", out_summary)
    return table


def evaluation_report_command(
    runs: Annotated[dict[str, str], "JSON object: run name -> evaluation JSON"],
    baselines: Path,
    main_k: int,
    sweep: Annotated[dict[str, list[str]], "JSON object: curve label -> run names"],
    out_table: Annotated[Path, "metrics.csv; comparisons.csv and .parquet go beside it"],
    out_pareto: Path,
    out_comparison: Path,
    out_summary: Path,
    bootstrap_samples: int = 1000,
    seed: Annotated[int, "seed of the bootstrap resamples"] = 0,
    out_recall: Annotated[Path | None, "PNG of captured token types against general-pool frequency"] = None,
    rare_frequency: Annotated[float, "evaluation.tail.max_general_frequency: rare types are at most this"] = 1e-4,
    primary: Annotated[list[dict] | None, "JSON array: the run's primary comparisons (resolve_primary)"] = None,
) -> None:
    """Evaluation overview: tables, comparisons, plots and summary.md of every SAE."""
    evaluation_report(
        runs,
        baselines,
        main_k,
        sweep,
        out_table,
        out_pareto,
        out_comparison,
        out_summary,
        Bootstrap(bootstrap_samples, seed),
        out_recall,
        rare_frequency,
        Family(tuple(primary or ())),
    )


def main(argv: list[str] | None = None) -> int:
    return run(evaluation_report_command, argv)


if __name__ == "__main__":
    sys.exit(main())

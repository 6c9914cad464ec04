"""Evaluation overview: the metrics table of every SAE on every held-out set (test part,
with 95% intervals: a bootstrap over test documents, plus the spread between training seeds
where an SAE has several; ``ssae_steps.evals.compare``), paired comparisons (each SSAE vs the
GSAE and vs the matched-compute control), Pareto plots, a comparison plot and a Markdown
summary whose findings are computed from the tables (whichever way they come out).

The tables and comparisons come from ``ssae_steps.evals.compare``: a difference is stated
as a finding only when its paired interval excludes zero; otherwise the summary says "no
clear difference", with the interval either way. Runs that differ only in their training
seed form one row of ``metrics.csv`` (mean over seeds, ``n_seeds``);
``metrics_by_seed.csv`` keeps every run's own row.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ssae_steps.bootstrap import ratio, seed_interval
from ssae_steps.cli import run, save_figure
from ssae_steps.evals.compare import (
    INTERVAL_METRICS,
    PCT,
    Bootstrap,
    comparison_pairs,
    comparison_sentences,
    comparisons,
    interval_text,
    load_runs,
    metrics_table,
    seeds_text,
)
from ssae_steps.evals.tail import is_rare
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


def frequency_bins(frequencies: np.ndarray) -> list[tuple[float, float]]:
    """``(low, high]`` general-pool frequency bins: one for types never seen in the pool
    (``[0, 0]``), then one per decade covering the rest. Upper edges are inclusive, so the
    types up to an edge are rare under that cutoff exactly as :func:`~ssae_steps.evals.tail.is_rare`
    (and the TERM study, and the tail concepts' ``max_general_frequency``) define it."""
    bins = [(0.0, 0.0)] if (frequencies == 0).any() else []
    seen = frequencies[frequencies > 0]
    if len(seen):
        # The decade (10^lo, 10^(lo+1)] holding the rarest type, up to (10^(hi-1), 10^hi]
        # holding the commonest; log10 can round a value next to a power of ten across it.
        lo, hi = math.ceil(math.log10(seen.min())) - 1, math.ceil(math.log10(seen.max()))
        lo += int(seen.min() > 10.0 ** (lo + 1)) - int(seen.min() <= 10.0**lo)
        hi += int(seen.max() > 10.0**hi) - int(seen.max() <= 10.0 ** (hi - 1))
        bins += [(10.0**e, 10.0 ** (e + 1)) for e in range(lo, hi)]
    return bins


def in_frequency_bin(frequencies: np.ndarray, low: float, high: float, cumulative: bool) -> np.ndarray:
    """Types in ``(low, high]`` (never seen in the pool: ``high == 0``); cumulatively, every
    type rare under ``high`` (:func:`~ssae_steps.evals.tail.is_rare`: at most it), the unseen
    ones included."""
    if high == 0:
        return frequencies == 0
    rare = is_rare(frequencies, high)
    return rare if cumulative else (frequencies > low) & rare


def recall_by_frequency(
    loaded: dict[str, tuple[dict, dict]], table: Any, main_k: int, boot: Bootstrap, groups: dict[str, list[str]]
) -> Any:
    """Per SAE at the main k and per general-pool frequency bin (and cumulatively, every type
    up to and including the bin's upper edge): the share of subdomain token types captured,
    averaged over seeds, with a bootstrap interval over token types (plus the seed spread
    where there are several seeds). The types are those chosen on validation counts that
    occur in the test part (``n_types``); the ones that do not (``n_not_on_test``, the same
    for every SAE) are left out of every share."""
    import pandas as pd

    runs = table[table["k"] == main_k].drop_duplicates("run")
    rows = []
    for _, r in runs.iterrows():
        results = [loaded[name][0].get("types") for name in groups[r["run"]]]
        if any(t is None for t in results):
            continue
        ids = results[0]["token_id"]
        if any(t["token_id"] != ids for t in results):
            raise ValueError(f"{r['run']}: seeds were scored on different token types")
        frequencies = np.asarray(results[0]["general_frequency"], dtype=np.float64)
        captured = [np.asarray(t["captured"], dtype=np.float64) for t in results]
        for cumulative in (False, True):
            for low, high in frequency_bins(frequencies):
                mask = in_frequency_bin(frequencies, low, high, cumulative)
                ones = np.ones(int(mask.sum()))
                ci = seed_interval([ratio(c[mask], ones) for c in captured], len(ones), boot.samples, boot.seed)
                rows.append(
                    {
                        "run": r["run"],
                        "label": r["label"],
                        "family": r["family"],
                        "n_seeds": len(results),
                        "cumulative": cumulative,
                        "frequency_low": 0.0 if cumulative else low,
                        "frequency_high": high,
                        "n_types": len(ones),
                        "n_not_on_test": len(results[0].get("not_on_test", [])),
                        "captured_share": ci.estimate,
                        # A share lies in [0, 1]; the seed interval's normal form need not.
                        "ci_low": max(ci.low, 0.0),
                        "ci_high": min(ci.high, 1.0),
                    }
                )
    return pd.DataFrame(rows)


def _recall_plot(curves: Any, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, cumulative in zip(axes, (False, True), strict=True):
        if curves.empty:
            ax.text(0.5, 0.5, "no token types evaluated", ha="center", va="center", transform=ax.transAxes)
            continue
        part = curves[curves["cumulative"] == cumulative]
        for (label, family), line in part.groupby(["label", "family"], sort=False):
            line = line.sort_values("frequency_high")
            seen = line["frequency_high"] > 0
            x = np.where(
                seen,
                line["frequency_high"] if cumulative else np.sqrt(line["frequency_low"] * line["frequency_high"]),
                0,
            )
            # Types never seen in the pool are drawn one decade left of the rarest bin.
            if (~seen).any() and seen.any():
                x[~seen.to_numpy()] = x[seen.to_numpy()].min() / 10
            y = line["captured_share"].to_numpy()
            err = np.abs(np.vstack([y - line["ci_low"], line["ci_high"] - y]))
            style = {"GSAE": "s-", "control": "^--"}.get(family, "o-")
            ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt=style, label=label, capsize=2, markersize=4)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("general-pool frequency of the token type" + (", at most" if cumulative else ", decade"))
        ax.set_ylabel("share of subdomain token types captured (test)")
        unseen_note = "per decade (types unseen in the pool, if any: a decade left of the rest)"
        ax.set_title("cumulative" if cumulative else unseen_note, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def recall_sentences(curves: Any) -> list[str]:
    """Captured share of all evaluable types, and of the rarest cumulative bin holding at
    least 20 types, per SAE (values with intervals; no paired comparison is made here)."""
    if curves.empty:
        return []
    cum = curves[curves["cumulative"]]
    lines = []
    every = cum.sort_values("frequency_high").groupby("run", sort=False).tail(1)
    left_out = int(every["n_not_on_test"].iloc[0]) if "n_not_on_test" in every else 0
    lines.append(
        f"Subdomain token types captured on test ({int(every['n_types'].iloc[0])} types, chosen on validation "
        f"counts, with a latent chosen on validation, F1 >= threshold; {left_out} chosen types with no test "
        "occurrence are left out; `recall_by_frequency.png`): "
        + ", ".join(f"{r['label']} {_share(r)}" for _, r in every.iterrows())
        + "."
    )
    rare = cum[cum["n_types"] >= 20].sort_values("frequency_high").groupby("run", sort=False).head(1)
    if not rare.empty and (rare["frequency_high"] < every["frequency_high"].max()).all():
        high = rare["frequency_high"].max()
        part = cum[cum["frequency_high"] == high]
        lines.append(
            f"Of those, the {int(part['n_types'].iloc[0])} types with general-pool frequency at most {high:.0e}: "
            + ", ".join(f"{r['label']} {_share(r)}" for _, r in part.iterrows())
            + "."
        )
    return lines


def _share(row: Any) -> str:
    if math.isnan(row["ci_low"]):
        return f"{row['captured_share']:.3f} [no interval]"
    return f"{row['captured_share']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


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
) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    boot = boot or Bootstrap()
    baselines = json.loads(Path(baselines_path).read_text())
    loaded = load_runs(runs)
    groups = seed_groups(list(loaded))
    table = metrics_table(loaded, baselines, boot, groups)
    by_seed = metrics_table(loaded, baselines, boot, groups={name: [name] for name in loaded})
    compared = comparisons(loaded, comparison_pairs(table, main_k), boot, groups)
    curves = recall_by_frequency(loaded, table, main_k, boot, groups)
    out_table = Path(out_table)
    outputs = (
        (out_table, table),
        (out_table.with_name("metrics_by_seed.csv"), by_seed),
        (out_table.with_name("comparisons.csv"), compared),
        (out_table.with_name("recall_by_frequency.csv"), curves),
    )
    for path, frame in outputs:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    with atomic_path(out_table.with_suffix(".parquet")) as tmp:
        table.to_parquet(tmp, index=False)
    _pareto_plot(table, sweep, Path(out_pareto))
    _comparison_plot(table, main_k, Path(out_comparison))
    if out_recall is not None:
        _recall_plot(curves, Path(out_recall))

    lines = [
        "# SAE evaluation",
        "",
        "Every number is measured on the **test** part of each held-out set; the validation part",
        "(a hash of each document's id) serves every choice: the best SSAE, each tail concept's latent.",
        f"Intervals: {PCT}% percentile bootstrap ({boot.samples} resamples) over test documents. Where an SAE",
        "has several training seeds (`n_seeds`) the value is their mean and the interval is",
        "mean ± t·sqrt(seed variance/n + the documents' bootstrap variance of the mean), t with",
        "Welch-Satterthwaite degrees of freedom (n - 1 when the seeds dominate). A comparison",
        "resamples the same documents for both SAEs and pairs seed s with seed s.",
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
        "  with no test occurrence is left out (the same for every SAE). Rare = general-pool",
        "  frequency at most the cutoff (the frequency bins include their upper edge).",
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
        "## Findings (computed from the tables)",
        "",
        "A difference is a finding only when its paired interval excludes zero.",
        "",
        *[f"- {line}" for line in findings(table, main_k)],
        *[f"- {line}" for line in recall_sentences(curves)],
        *[f"- {line}" for line in comparison_sentences(table, compared)],
        "",
        f"## All SAEs at k={main_k} (estimate [{PCT}% interval])",
        "",
        _summary_table(table, main_k),
        "",
        "Full tables (all k, all columns): `metrics.csv` / `metrics.parquet`; paired differences: `comparisons.csv`.",
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
    )


def main(argv: list[str] | None = None) -> int:
    return run(evaluation_report_command, argv)


if __name__ == "__main__":
    sys.exit(main())

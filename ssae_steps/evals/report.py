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

Captured token types (the paper's Figs. 2 and 6, ``ssae_steps.evals.capture``): per SAE at
the main k, the share captured per general-pool frequency decade and cumulatively, with
documents and types resampled together; the paired differences of each SSAE against the
GSAE and the control per bin (``capture_differences.csv``); and the normalised cumulative
curve of Fig. 6.
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
from ssae_steps.evals.capture import TypeCounts, normalised_cumulative, paired_share_difference, share_interval
from ssae_steps.evals.compare import (
    INTERVAL_METRICS,
    PCT,
    Bootstrap,
    Family,
    capture_comparisons,
    comparison_clause,
    comparison_pairs,
    comparison_sentences,
    comparisons,
    interval_text,
    load_runs,
    metrics_table,
    seeds_text,
    type_counts,
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


def _seed_counts(loaded: dict[str, tuple[dict, dict]], names: list[str]) -> list[TypeCounts] | None:
    counts = [type_counts(loaded[name][0]) for name in names]
    return None if any(c is None for c in counts) else counts  # type: ignore[return-value]


def _bins(frequencies: np.ndarray, rare_frequency: float | None) -> list[tuple[bool, float, float, np.ndarray]]:
    """``(cumulative, low, high, types in it)`` for every bin, per decade then cumulative;
    cumulatively also up to ``rare_frequency`` (the rare types) where that is no decade edge."""
    bins = frequency_bins(frequencies)
    edges = [high for _, high in bins]
    if rare_frequency is not None and not np.isclose(edges, rare_frequency, rtol=1e-9, atol=0).any():
        edges = sorted([*edges, rare_frequency])
    return [(False, low, high, in_frequency_bin(frequencies, low, high, False)) for low, high in bins] + [
        (True, 0.0, high, in_frequency_bin(frequencies, 0.0, high, True)) for high in edges
    ]


def recall_by_frequency(
    loaded: dict[str, tuple[dict, dict]],
    table: Any,
    main_k: int,
    boot: Bootstrap,
    groups: dict[str, list[str]],
    rare_frequency: float | None = None,
) -> Any:
    """Per SAE at the main k and per general-pool frequency bin (and cumulatively, every type
    up to and including the bin's upper edge): the share of subdomain token types captured,
    averaged over seeds, with an interval that resamples test documents and token types
    together (plus the seed spread where there are several seeds;
    ``ssae_steps.evals.capture``). The types are those chosen on validation counts that
    occur in the test part (``n_types``); the ones that do not (``n_not_on_test``, the same
    for every SAE) are left out of every share."""
    import pandas as pd

    runs = table[table["k"] == main_k].drop_duplicates("run")
    rows = []
    for _, r in runs.iterrows():
        seeds = _seed_counts(loaded, groups[r["run"]])
        if seeds is None:
            continue
        first = loaded[groups[r["run"]][0]][0]["types"]
        for cumulative, low, high, mask in _bins(seeds[0].frequency, rare_frequency):
            ci = share_interval(seeds, mask, boot.samples, boot.seed)
            rows.append(
                {
                    "run": r["run"],
                    "label": r["label"],
                    "family": r["family"],
                    "n_seeds": len(seeds),
                    "cumulative": cumulative,
                    "frequency_low": 0.0 if cumulative else low,
                    "frequency_high": high,
                    "n_types": int(mask.sum()),
                    "n_not_on_test": len(first.get("not_on_test", [])),
                    "n_docs": len(seeds[0].docs),
                    "captured_share": ci.estimate,
                    # A share lies in [0, 1]; the seed interval's normal form need not.
                    "ci_low": max(ci.low, 0.0),
                    "ci_high": min(ci.high, 1.0),
                }
            )
    return pd.DataFrame(rows)


def capture_differences(
    loaded: dict[str, tuple[dict, dict]], pairs: list[tuple[str, str, str]], boot: Bootstrap, groups: dict
) -> Any:
    """Per SSAE vs GSAE or control pair and per frequency bin: the paired difference of
    captured shares, documents and types resampled together for both sides (exploratory:
    unadjusted intervals; the declared rare-type comparison is in ``comparisons.csv``)."""
    import pandas as pd

    from ssae_steps.evals.compare import seed_pairs

    rows = []
    for name, ref_label, ref in pairs:
        if ref_label not in ("GSAE", "control"):
            continue
        matched = seed_pairs(groups[name], groups[ref])
        counts = [(type_counts(loaded[a][0]), type_counts(loaded[b][0])) for a, b in matched]
        if not matched or any(a is None or b is None for a, b in counts):
            continue
        for cumulative, low, high, mask in _bins(counts[0][0].frequency, None):  # type: ignore[union-attr]
            diff = paired_share_difference(counts, mask, boot.samples, boot.seed)  # type: ignore[arg-type]
            rows.append(
                {
                    "run": name,
                    "reference": ref_label,
                    "reference_run": ref,
                    "n_seeds": len(matched),
                    "cumulative": cumulative,
                    "frequency_low": 0.0 if cumulative else low,
                    "frequency_high": high,
                    "n_types": int(mask.sum()),
                    "difference": diff.estimate,
                    "ci_low": diff.low,
                    "ci_high": diff.high,
                }
            )
    return pd.DataFrame(rows)


def fig6_curves(
    loaded: dict[str, tuple[dict, dict]], table: Any, main_k: int, groups: dict[str, list[str]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Label -> the paper's Fig. 6 curve (``capture.normalised_cumulative``) per SAE at the main k."""
    out = {}
    for _, r in table[table["k"] == main_k].drop_duplicates("run").iterrows():
        seeds = _seed_counts(loaded, groups[r["run"]])
        if seeds is not None:
            out[r["label"]] = normalised_cumulative(seeds)
    return out


def _x_positions(line: Any, cumulative: bool) -> np.ndarray:
    seen = line["frequency_high"] > 0
    x = np.where(
        seen, line["frequency_high"] if cumulative else np.sqrt(line["frequency_low"] * line["frequency_high"]), 0
    )
    # Types never seen in the pool are drawn one decade left of the rarest bin.
    if (~seen).any() and seen.any():
        x[~seen.to_numpy()] = x[seen.to_numpy()].min() / 10
    return x


def _recall_plot(curves: Any, differences: Any, fig6: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for ax, cumulative in zip(axes[0], (False, True), strict=True):
        if curves.empty:
            ax.text(0.5, 0.5, "no token types evaluated", ha="center", va="center", transform=ax.transAxes)
            continue
        part = curves[curves["cumulative"] == cumulative]
        for (label, family), line in part.groupby(["label", "family"], sort=False):
            line = line.sort_values("frequency_high")
            y = line["captured_share"].to_numpy()
            err = np.abs(np.vstack([y - line["ci_low"], line["ci_high"] - y]))
            style = {"GSAE": "s-", "control": "^--"}.get(family, "o-")
            ax.errorbar(_x_positions(line, cumulative), y, yerr=np.nan_to_num(err), fmt=style, label=label, capsize=2)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("general-pool frequency of the token type" + (", at most" if cumulative else ", decade"))
        ax.set_ylabel("share of subdomain token types captured (test)")
        ax.set_title("cumulative (Fig. 2, cumulative)" if cumulative else "per decade (Fig. 2)", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    for label, (x, y) in fig6.items():
        ax.plot(100 * x, y, label=label, drawstyle="steps-post")
    ax.plot([0, 100], [0, 1], color="lightgrey", lw=1, ls=":", label="captured tokens spread evenly")
    ax.set_xlabel("cumulative % of the evaluated types' test tokens (both held-out sets), rarest types first")
    ax.set_ylabel("cumulative share of tokens with a captured type (normalised)")
    ax.set_title("Fig. 6 form: normalised per SAE to end at 1", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    if not differences.empty:
        part = differences[~differences["cumulative"]]
        for (run, reference), line in part.groupby(["run", "reference"], sort=False):
            line = line.sort_values("frequency_high")
            y = line["difference"].to_numpy()
            err = np.nan_to_num(np.abs(np.vstack([y - line["ci_low"], line["ci_high"] - y])))
            ax.errorbar(_x_positions(line, False), y, yerr=err, fmt="o-", capsize=2, label=f"{run} - {reference}")
        ax.axhline(0, color="grey", lw=1)
        ax.set_xscale("log")
    ax.set_xlabel("general-pool frequency of the token type, decade")
    ax.set_ylabel("paired difference of captured share")
    ax.set_title(f"paired differences of captured share, per decade ({PCT}% intervals, unadjusted)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)


def recall_sentences(curves: Any, rare_frequency: float) -> list[str]:
    """Captured share of all evaluable types, and of the rare ones (general-pool frequency
    at most ``rare_frequency``), per SAE (values with intervals; comparisons are elsewhere)."""
    if curves.empty:
        return []
    cum = curves[curves["cumulative"]]
    lines = []
    every = cum.sort_values("frequency_high").groupby("run", sort=False).tail(1)
    left_out = int(every["n_not_on_test"].iloc[0]) if "n_not_on_test" in every else 0
    lines.append(
        f"Subdomain token types captured on test ({int(every['n_types'].iloc[0])} types, chosen on validation "
        f"counts, with a latent chosen on validation, F1 >= threshold; {left_out} chosen types with no test "
        f"occurrence are left out; {int(every['n_docs'].iloc[0])} test documents; intervals resample documents "
        "and types together; `recall_by_frequency.png`): "
        + ", ".join(f"{r['label']} {_share(r)}" for _, r in every.iterrows())
        + "."
    )
    rare = cum[np.isclose(cum["frequency_high"], rare_frequency, rtol=1e-9, atol=0)]
    if not rare.empty:
        lines.append(
            f"Of those, the {int(rare['n_types'].iloc[0])} rare types (general-pool frequency at most "
            f"{rare_frequency:g}): " + ", ".join(f"{r['label']} {_share(r)}" for _, r in rare.iterrows()) + "."
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


def primary_section(compared: Any, family: Family, labels: dict[str, str]) -> list[str]:
    """The declared comparisons of this report, each with its family-wise interval and
    verdict; declared ones with no row (a side the run lacks) are said to be missing."""
    lines = []
    for entry in family.primary:
        if compared.empty:
            lines.append(f"{entry['label']}: not computed (no such pair in this run).")
            continue
        rows = compared[
            (compared["run"] == entry["run"])
            & (compared["reference_run"] == entry["reference_run"])
            & (compared["metric"] == entry["metric"])
            & (compared["set"] == entry["set"])
        ]
        if rows.empty:
            lines.append(f"{entry['label']}: not computed (no such pair in this run).")
            continue
        r = rows.iloc[0]
        n = int(r["n_types"]) if "n_types" in r and not math.isnan(r["n_types"]) else None
        what = f"{n} rare types, " if n is not None and r["metric"] == "rare_capture" else ""
        lines.append(
            f"`{r['run']}` ({labels.get(r['run'], r['run'])}) vs {r['reference']}, {r['set']} test text "
            f"({what}{int(r['n_docs'])} documents, {seeds_text(int(r['n_seeds']))}): {comparison_clause(r)}."
        )
    return lines


def _exploratory(compared: Any) -> Any:
    return compared[compared["role"] != "primary"] if "role" in compared else compared


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
    import pandas as pd

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
    compared = pd.concat(
        [
            comparisons(loaded, pairs, boot, groups, family),
            capture_comparisons(loaded, pairs, rare_frequency, boot, groups, family),
        ],
        ignore_index=True,
    )
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
        _recall_plot(curves, differences, fig6_curves(loaded, table, main_k, groups), Path(out_recall))

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
        *[f"- {line}" for line in comparison_sentences(table, _exploratory(compared))],
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

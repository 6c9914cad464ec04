"""Evaluation overview: the metrics table of every SAE on every held-out set (test part,
with 95% bootstrap intervals over test documents and training seeds), paired comparisons (each SSAE vs the
GSAE and vs the matched-compute control), Pareto plots, a comparison plot and a Markdown
summary whose findings are computed from the tables (whichever way they come out).

The ``random`` strategy's SSAE - the GSAE finetuned for the same steps and tokens on
general pool text with no seed documents - is the matched-compute control, labelled
``control``. A difference is stated as a finding only when its paired interval excludes
zero; otherwise the summary says "no clear difference", with the interval either way.

Runs that differ only in their training seed (``gsae/k32``, ``gsae/k32-s1``, ...) form one
row of ``metrics.csv``: the mean over seeds, a two-level bootstrap interval (seeds and test
documents resampled) and ``n_seeds``; ``metrics_by_seed.csv`` keeps every run's own row.
Comparisons pair seed s of one SAE with seed s of the other.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps.bootstrap import LEVEL, MIN_DOCS, paired_seed_difference, ratio, seed_interval
from ssae_steps.cli import save_figure
from ssae_steps.config import run_stage
from ssae_steps.evals.evaluate import doc_metrics, per_doc_path, read_per_doc
from ssae_steps.files import atomic_path, write_text
from ssae_steps.sae.runs import parse_run, seed_groups, suffix_of

log = logging.getLogger("ssae.evaluation_report")
FVU_FORMULA = "FVU = sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2"
INTERVAL_METRICS = ["fvu", "delta_ce", "kl", "spliced_loss", "l0"]
NON_NEGATIVE = {"fvu", "kl", "spliced_loss", "l0"}
"""Metrics that cannot fall below zero: a few seeds that disagree give a t interval reaching
below it, which is clipped (delta CE can be negative and is not)."""
COMPARED = {"fvu": ("FVU", ""), "delta_ce": ("ΔCE", " nats"), "kl": ("KL", " nats")}
PCT = round(100 * LEVEL)


@dataclass
class Bootstrap:
    samples: int = 1000
    seed: int = 0


def _labels(parts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Short names for tables and plots: GSAE, control, SSAE <strategy>; init, tilt and k
    added only where runs differ in them."""
    recipes = {(p["init"], p["tilt"]) for p in parts.values() if p["family"] != "GSAE"}
    ks = {p["k"] for p in parts.values()}
    out = {}
    for name, p in parts.items():
        label = {"GSAE": "GSAE", "control": "control"}.get(p["family"], f"SSAE {p['strategy']}")
        if p["family"] != "GSAE" and len(recipes) > 1:
            label += f" {p['init']}-t{p['tilt']:g}"
        out[name] = label + (f" k{p['k']}" if len(ks) > 1 else "")
    return out


def load_runs(runs: dict[str, str]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """``run -> (evaluation JSON, per-set per-document tables)``."""
    return {name: (json.loads(Path(p).read_text()), read_per_doc(per_doc_path(p))) for name, p in runs.items()}


def _same_documents(loaded: dict[str, tuple[dict, dict]], names: list[str], set_name: str) -> None:
    first = loaded[names[0]][1][set_name]["doc_id"].to_numpy()
    for other in names[1:]:
        if not np.array_equal(first, loaded[other][1][set_name]["doc_id"].to_numpy()):
            raise ValueError(f"{names[0]} and {other} were evaluated on different {set_name} documents")


def _mean(values: list[Any]) -> Any:
    """Mean of numbers; the first value of anything else (the same for every seed)."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return float(np.mean(values)) if len(values) > 1 else values[0]
    return values[0]


def metrics_table(
    loaded: dict[str, tuple[dict, dict]],
    baselines: dict[str, Any],
    boot: Bootstrap,
    groups: dict[str, list[str]] | None = None,
) -> Any:
    """One row per (SAE, set): each interval metric's mean over the SAE's seeds with its
    two-level bootstrap interval, ``n_seeds``, ``<metric>_seed_sd`` (NaN for one seed), and
    the other columns averaged over seeds. ``groups`` defaults to :func:`seed_groups`."""
    import pandas as pd

    groups = groups if groups is not None else seed_groups(list(loaded))
    parts = {base: parse_run(base) for base in groups}
    labels = _labels(parts)
    rows = []
    for base, names in groups.items():
        for set_name in loaded[names[0]][0]["sets"]:
            _same_documents(loaded, names, set_name)
            frames = [loaded[n][1][set_name] for n in names]
            metric_fns = [doc_metrics(f) for f in frames]
            cis: dict[str, float] = {}
            for metric in metric_fns[0]:
                ci = seed_interval([fns[metric] for fns in metric_fns], len(frames[0]), boot.samples, boot.seed)
                per_seed = [float(fns[metric](np.ones((1, len(frames[0]))))[0]) for fns in metric_fns]
                cis |= {
                    metric: ci.estimate,
                    f"{metric}_ci_low": max(ci.low, 0.0) if metric in NON_NEGATIVE else ci.low,
                    f"{metric}_ci_high": ci.high,
                    f"{metric}_seed_sd": float(np.std(per_seed, ddof=1)) if len(names) > 1 else math.nan,
                }
            base_loss = baselines[set_name]
            gap = base_loss["zero_ablation_loss"] - base_loss["clean_loss"]
            results = [loaded[n][0] for n in names]
            sets = [r["sets"][set_name] for r in results]
            per_seed_columns = {
                "validation_fvu": [m["validation"]["fvu"] for m in sets],
                "validation_fvu_first_seed": [sets[0]["validation"]["fvu"]] * len(sets),
                "validation_l0": [m["validation"]["l0"] for m in sets],
                **{key: [m[key] for m in sets] for key in ("mse_per_dim", "dead_fraction", "dense_fraction")},
                **{key: [m[key] for m in sets] for key in ("tail_tokens", "tail_fvu", "head_fvu")},
                "dead_fraction_heldout": [r["dead"]["fraction"] for r in results],
                "dead_over_tokens": [r["dead"]["tokens"] for r in results],
                "tail_recall": [r["tail"]["recall"] for r in results],
                "tail_mean_best_f1": [r["tail"]["mean_best_f1"] for r in results],
                "tail_concepts": [r["tail"]["concepts"] for r in results],
                "tail_evaluable": [r["tail"]["evaluable"] for r in results],
                "eval_tokens": [m["tokens"] for m in sets],
                "validation_docs": [m["validation"]["docs"] for m in sets],
                "loss_tokens": [m["loss_tokens"] for m in sets],
                "loss_docs": [m["loss_docs"] for m in sets],
            }
            rows.append(
                {
                    "run": base,
                    "label": labels[base],
                    **parts[base],
                    "set": set_name,
                    "n_docs": len(frames[0]),
                    "n_seeds": len(names),
                    "seed_runs": " ".join(names),
                    **{
                        key: cis[key]
                        for name_ in INTERVAL_METRICS
                        for key in (name_, f"{name_}_ci_low", f"{name_}_ci_high", f"{name_}_seed_sd")
                    },
                    "clean_loss": base_loss["clean_loss"],
                    "zero_ablation_loss": base_loss["zero_ablation_loss"],
                    "loss_recovered": (base_loss["zero_ablation_loss"] - cis["spliced_loss"]) / gap
                    if gap
                    else math.nan,
                    "spliced_perplexity": math.exp(cis["spliced_loss"]),
                    "clean_perplexity": math.exp(base_loss["clean_loss"]),
                    **{key: _mean(values) for key, values in per_seed_columns.items()},
                }
            )
    return pd.DataFrame(rows)


def comparison_pairs(table: Any, main_k: int) -> list[tuple[str, str, str]]:
    """``(run, reference label, reference run)`` at the main k: each SSAE vs the GSAE and vs
    the control of the same recipe, a TracIn strategy's SSAE vs its base strategy's, the
    control vs the GSAE, the largest tilt vs the smallest and scratch vs finetune."""
    runs = table[table["k"] == main_k].drop_duplicates("run").set_index("run")
    gsae = f"gsae/k{main_k}"
    pairs = []
    for run, r in runs[runs["family"] != "GSAE"].iterrows():
        if gsae in runs.index:
            pairs.append((run, "GSAE", gsae))
        same = runs[(runs["family"] == "control") & (runs["init"] == r["init"]) & (runs["tilt"] == r["tilt"])]
        if r["family"] == "SSAE" and not same.empty:
            pairs.append((run, "control", same.index[0]))
        # A reranked strategy against the retrieval it reranks (dense_tracin vs dense).
        base = str(r["strategy"]).removesuffix("_tracin")
        if base != r["strategy"]:
            same = runs[(runs["strategy"] == base) & (runs["init"] == r["init"]) & (runs["tilt"] == r["tilt"])]
            if not same.empty:
                pairs.append((run, f"SSAE {base}", same.index[0]))
    for (_strategy, _init), part in runs[runs["family"] != "GSAE"].groupby(["strategy", "init"]):
        tilts = part.sort_values("tilt")
        if len(tilts) > 1:
            pairs.append((tilts.index[-1], f"t={tilts['tilt'].iloc[0]:g}", tilts.index[0]))
    for (_strategy, _tilt), part in runs[runs["family"] != "GSAE"].groupby(["strategy", "tilt"]):
        by_init = dict(zip(part["init"], part.index, strict=True))
        if {"finetune", "scratch"} <= set(by_init):
            pairs.append((by_init["scratch"], "finetune", by_init["finetune"]))
    return pairs


def seed_pairs(runs: list[str], references: list[str]) -> list[tuple[str, str]]:
    """Seed s of one SAE with seed s of the other. A GSAE with a single run (an imported
    one, shared by every seed's SSAEs) pairs with every seed."""
    if len(references) == 1 and parse_run(references[0])["family"] == "GSAE":
        return [(run, references[0]) for run in runs]
    by_tag = {suffix_of(ref): ref for ref in references}
    return [(run, by_tag[suffix_of(run)]) for run in runs if suffix_of(run) in by_tag]


def comparisons(
    loaded: dict[str, tuple[dict, dict]],
    pairs: list[tuple[str, str, str]],
    boot: Bootstrap,
    groups: dict[str, list[str]] | None = None,
) -> Any:
    """One row per (pair, set, metric): both values (means over the paired seeds) and the
    two-level bootstrap interval of their difference, seeds paired and documents shared."""
    import pandas as pd

    groups = groups if groups is not None else seed_groups(list(loaded))
    rows = []
    for run, ref_label, ref in pairs:
        matched = seed_pairs(groups[run], groups[ref])
        if not matched:
            log.warning("%s vs %s: no training seed in common, not compared", run, ref)
            continue
        for set_name in loaded[run][1]:
            _same_documents(loaded, [n for pair in matched for n in pair], set_name)
            n_docs = len(loaded[run][1][set_name])
            fns = [(doc_metrics(loaded[a][1][set_name]), doc_metrics(loaded[b][1][set_name])) for a, b in matched]
            ones = np.ones((1, n_docs))
            for metric in COMPARED:
                diff = paired_seed_difference([(a[metric], b[metric]) for a, b in fns], n_docs, boot.samples, boot.seed)
                value = float(np.mean([a[metric](ones)[0] for a, _ in fns]))
                ref_value = float(np.mean([b[metric](ones)[0] for _, b in fns]))
                rows.append(
                    {
                        "run": run,
                        "reference": ref_label,
                        "reference_run": ref,
                        "set": set_name,
                        "metric": metric,
                        "value": value,
                        "reference_value": ref_value,
                        "difference": diff.estimate,
                        "ci_low": diff.low,
                        "ci_high": diff.high,
                        "n_docs": n_docs,
                        "n_seeds": len(matched),
                        "finding": diff.excludes_zero(),
                    }
                )
    return pd.DataFrame(rows)


def _clause(row: Any) -> str:
    name, unit = COMPARED[row["metric"]]
    ci = f"{PCT}% CI of the difference {row['ci_low']:+.4f} to {row['ci_high']:+.4f}"
    values = f"{row['value']:.4f} vs {row['reference_value']:.4f}{unit}"
    if math.isnan(row["ci_low"]):
        return f"{name} {values}: no interval ({row['n_docs']} test documents, fewer than {MIN_DOCS})"
    if row["finding"]:
        direction = "lower" if row["difference"] < 0 else "higher"
        return f"{name} {values}, {direction} by {abs(row['difference']):.4f} ({ci})"
    return f"{name} {values}: no clear difference ({row['difference']:+.4f}, {ci})"


def comparison_sentences(table: Any, compared: Any) -> list[str]:
    """One sentence per (run, reference, set), each metric a finding or "no clear difference"."""
    labels = dict(zip(table["run"], table["label"], strict=False))
    lines = []
    for (run, ref, set_name), part in compared.groupby(["run", "reference", "set"], sort=False):
        clauses = "; ".join(_clause(row) for _, row in part.iterrows())
        n, seeds = int(part["n_docs"].iloc[0]), int(part["n_seeds"].iloc[0])
        lines.append(
            f"`{run}` ({labels[run]}) vs {ref}, {set_name} test text ({n} documents, {_seeds(seeds)}): {clauses}."
        )
    return lines


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds paired"


def _ci(row: Any, metric: str) -> str:
    if math.isnan(row[f"{metric}_ci_low"]):
        return f"{row[metric]:.4f} [no interval]"
    return f"{row[metric]:.4f} [{row[f'{metric}_ci_low']:.4f}, {row[f'{metric}_ci_high']:.4f}]"


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
            f"({_seeds(b['n_seeds']).removesuffix(' paired')}, values their mean). On subdomain "
            f"test text: FVU {_ci(b, 'fvu')}, ΔCE {_ci(b, 'delta_ce')} nats, KL {_ci(b, 'kl')} nats "
            f"(clean loss {b['clean_loss']:.4f}); tail-concept recall {b['tail_recall']:.3f} over "
            f"{b['tail_evaluable']} evaluable concepts (no interval)."
        )
    chosen = sub[sub["family"] != "GSAE"].sort_values("validation_fvu_first_seed").groupby("strategy").head(1)
    if not chosen.empty:
        lines.append(
            "Subdomain test FVU per data-selection strategy (each strategy's run chosen on validation FVU, "
            "first seed; n = seeds): "
            + ", ".join(
                f"{r['label']} {_ci(r, 'fvu')} (n={r['n_seeds']})" for _, r in chosen.sort_values("fvu").iterrows()
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
    """``[low, high)`` general-pool frequency bins: one for types never seen in the pool
    (``[0, 0]``), then one per decade covering the rest."""
    bins = [(0.0, 0.0)] if (frequencies == 0).any() else []
    seen = frequencies[frequencies > 0]
    if len(seen):
        lo, hi = math.floor(math.log10(seen.min())), math.floor(math.log10(seen.max())) + 1
        # log10 rounds a value just below a power of ten up to it.
        lo -= seen.min() < 10.0**lo
        hi -= seen.max() < 10.0 ** (hi - 1)
        bins += [(10.0**e, 10.0 ** (e + 1)) for e in range(lo, hi)]
    return bins


def _in_bin(frequencies: np.ndarray, low: float, high: float, cumulative: bool) -> np.ndarray:
    """Types in ``[low, high)`` (never seen in the pool: ``high == 0``); cumulatively,
    every type below ``high``, the unseen ones included."""
    if high == 0:
        return frequencies == 0
    return frequencies < high if cumulative else (frequencies >= low) & (frequencies < high)


def recall_by_frequency(
    loaded: dict[str, tuple[dict, dict]], table: Any, main_k: int, boot: Bootstrap, groups: dict[str, list[str]]
) -> Any:
    """Per SAE at the main k and per general-pool frequency bin (and cumulatively, every type
    up to the bin's upper edge): the share of subdomain token types captured, averaged over
    seeds, with a bootstrap interval over token types (and seeds)."""
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
                mask = _in_bin(frequencies, low, high, cumulative)
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
    lines.append(
        f"Subdomain token types captured on test ({int(every['n_types'].iloc[0])} types with a latent chosen on "
        "validation, F1 >= threshold; `recall_by_frequency.png`): "
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
        main[metric] = [_ci(row, metric) for _, row in main.iterrows()]
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
        "- Tail concepts: subdomain-specific rare tokens (see README); tail recall = share of them whose",
        "  latent, chosen on validation, detects them on test with F1 >= the configured threshold.",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="JSON object: run name -> evaluation JSON")
    parser.add_argument("--baselines", required=True)
    parser.add_argument("--main-k", type=int, required=True)
    parser.add_argument("--sweep", required=True, help="JSON object: curve label -> run names")
    parser.add_argument("--bootstrap-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    parser.add_argument("--out-table", required=True, help="metrics.csv; comparisons.csv and .parquet go beside it")
    parser.add_argument("--out-pareto", required=True)
    parser.add_argument("--out-comparison", required=True)
    parser.add_argument("--out-summary", required=True)
    parser.add_argument("--out-recall", help="PNG of captured token types against general-pool frequency")
    args = parser.parse_args(argv)
    return run_stage(
        lambda: evaluation_report(
            json.loads(args.runs),
            args.baselines,
            args.main_k,
            json.loads(args.sweep),
            args.out_table,
            args.out_pareto,
            args.out_comparison,
            args.out_summary,
            Bootstrap(args.bootstrap_samples, args.seed),
            args.out_recall,
        )
    )


if __name__ == "__main__":
    sys.exit(main())

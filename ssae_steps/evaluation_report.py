"""Evaluation overview: the metrics table of every SAE on every held-out set (test part,
with 95% bootstrap intervals over test documents), paired comparisons (each SSAE vs the
GSAE and vs the matched-compute control), Pareto plots, a comparison plot and a Markdown
summary whose findings are computed from the tables (whichever way they come out).

The ``random`` strategy's SSAE - the GSAE finetuned for the same steps and tokens on
general pool text with no seed documents - is the matched-compute control, labelled
``control``. A difference is stated as a finding only when its paired interval excludes
zero; otherwise the summary says "no clear difference", with the interval either way.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps._cli import save_figure
from ssae_steps._config import run_stage
from ssae_steps._io import atomic_path, write_text
from ssae_steps.bootstrap import LEVEL, MIN_DOCS, interval, paired_difference
from ssae_steps.evaluate import doc_metrics, per_doc_path, read_per_doc

log = logging.getLogger("ssae.evaluation_report")
RUN_NAME = re.compile(r"^(?:gsae/k(?P<gk>\d+)|ssae/(?P<strategy>\w+)/(?P<init>\w+)-t(?P<tilt>[0-9.e+-]+)-k(?P<k>\d+))$")
FVU_FORMULA = "FVU = sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2"
CONTROL_STRATEGY = "random"
INTERVAL_METRICS = ["fvu", "delta_ce", "kl", "spliced_loss", "l0"]
COMPARED = {"fvu": ("FVU", ""), "delta_ce": ("ΔCE", " nats"), "kl": ("KL", " nats")}
PCT = round(100 * LEVEL)


@dataclass
class Bootstrap:
    samples: int = 1000
    seed: int = 0


def parse_run(name: str) -> dict[str, Any]:
    """``gsae/k32`` or ``ssae/dense/finetune-t2-k32`` -> its parts; the ``random`` strategy's
    SSAE is the ``control`` family."""
    m = RUN_NAME.match(name)
    if m is None:
        raise ValueError(f"unrecognised SAE run name {name!r}")
    if m["gk"]:
        return {"family": "GSAE", "strategy": "-", "init": "-", "tilt": math.nan, "k": int(m["gk"])}
    family = "control" if m["strategy"] == CONTROL_STRATEGY else "SSAE"
    return {"family": family, "strategy": m["strategy"], "init": m["init"], "tilt": float(m["tilt"]), "k": int(m["k"])}


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


def metrics_table(loaded: dict[str, tuple[dict, dict]], baselines: dict[str, Any], boot: Bootstrap) -> Any:
    import pandas as pd

    parts = {name: parse_run(name) for name in loaded}
    labels = _labels(parts)
    rows = []
    for name, (result, per_doc) in loaded.items():
        for set_name, m in result["sets"].items():
            frame, base = per_doc[set_name], baselines[set_name]
            cis: dict[str, float] = {}
            for metric, fn in doc_metrics(frame).items():
                ci = interval(fn, len(frame), boot.samples, boot.seed)
                cis |= {metric: ci.estimate, f"{metric}_ci_low": ci.low, f"{metric}_ci_high": ci.high}
            gap = base["zero_ablation_loss"] - base["clean_loss"]
            rows.append(
                {
                    "run": name,
                    "label": labels[name],
                    **parts[name],
                    "set": set_name,
                    "n_docs": len(frame),
                    "n_seeds": 1,
                    **{
                        key: cis[key]
                        for name_ in INTERVAL_METRICS
                        for key in (name_, f"{name_}_ci_low", f"{name_}_ci_high")
                    },
                    "clean_loss": base["clean_loss"],
                    "zero_ablation_loss": base["zero_ablation_loss"],
                    "loss_recovered": (base["zero_ablation_loss"] - cis["spliced_loss"]) / gap if gap else math.nan,
                    "spliced_perplexity": math.exp(cis["spliced_loss"]),
                    "clean_perplexity": math.exp(base["clean_loss"]),
                    "validation_fvu": m["validation"]["fvu"],
                    "validation_l0": m["validation"]["l0"],
                    **{key: m[key] for key in ("mse_per_dim", "dead_fraction", "dense_fraction")},
                    **{key: m[key] for key in ("tail_tokens", "tail_fvu", "head_fvu")},
                    "tail_recall": result["tail"]["recall"],
                    "tail_mean_best_f1": result["tail"]["mean_best_f1"],
                    "tail_concepts": result["tail"]["concepts"],
                    "tail_evaluable": result["tail"]["evaluable"],
                    "eval_tokens": m["tokens"],
                    "validation_docs": m["validation"]["docs"],
                    "loss_tokens": m["loss_tokens"],
                    "loss_docs": m["loss_docs"],
                }
            )
    return pd.DataFrame(rows)


def comparison_pairs(table: Any, main_k: int) -> list[tuple[str, str, str]]:
    """``(run, reference label, reference run)`` at the main k: each SSAE vs the GSAE and vs
    the control of the same recipe, the control vs the GSAE, the largest tilt vs the
    smallest and scratch vs finetune."""
    runs = table[table["k"] == main_k].drop_duplicates("run").set_index("run")
    gsae = f"gsae/k{main_k}"
    pairs = []
    for run, r in runs[runs["family"] != "GSAE"].iterrows():
        if gsae in runs.index:
            pairs.append((run, "GSAE", gsae))
        same = runs[(runs["family"] == "control") & (runs["init"] == r["init"]) & (runs["tilt"] == r["tilt"])]
        if r["family"] == "SSAE" and not same.empty:
            pairs.append((run, "control", same.index[0]))
    for (_strategy, _init), part in runs[runs["family"] != "GSAE"].groupby(["strategy", "init"]):
        tilts = part.sort_values("tilt")
        if len(tilts) > 1:
            pairs.append((tilts.index[-1], f"t={tilts['tilt'].iloc[0]:g}", tilts.index[0]))
    for (_strategy, _tilt), part in runs[runs["family"] != "GSAE"].groupby(["strategy", "tilt"]):
        by_init = dict(zip(part["init"], part.index, strict=True))
        if {"finetune", "scratch"} <= set(by_init):
            pairs.append((by_init["scratch"], "finetune", by_init["finetune"]))
    return pairs


def comparisons(loaded: dict[str, tuple[dict, dict]], pairs: list[tuple[str, str, str]], boot: Bootstrap) -> Any:
    """One row per (pair, set, metric): both values and the paired bootstrap interval of
    their difference over the test documents they share."""
    import pandas as pd

    rows = []
    for run, ref_label, ref in pairs:
        for set_name, frame in loaded[run][1].items():
            ref_frame = loaded[ref][1][set_name]
            if not np.array_equal(frame["doc_id"].to_numpy(), ref_frame["doc_id"].to_numpy()):
                raise ValueError(f"{run} and {ref} were evaluated on different {set_name} documents")
            ours, theirs = doc_metrics(frame), doc_metrics(ref_frame)
            for metric in COMPARED:
                diff = paired_difference(ours[metric], theirs[metric], len(frame), boot.samples, boot.seed)
                value, ref_value = (float(m[metric](np.ones((1, len(frame))))[0]) for m in (ours, theirs))
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
                        "n_docs": len(frame),
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
        n = int(part["n_docs"].iloc[0])
        lines.append(f"`{run}` ({labels[run]}) vs {ref}, {set_name} test text ({n} documents): {clauses}.")
    return lines


def _ci(row: Any, metric: str) -> str:
    if math.isnan(row[f"{metric}_ci_low"]):
        return f"{row[metric]:.4f} [no interval]"
    return f"{row[metric]:.4f} [{row[f'{metric}_ci_low']:.4f}, {row[f'{metric}_ci_high']:.4f}]"


def findings(table: Any, main_k: int) -> list[str]:
    """The best SSAE (chosen on validation FVU, reported on test) and the data-selection
    strategies side by side, from the table."""
    sub = table[(table["set"] == "subdomain") & (table["k"] == main_k)].set_index("run")
    ssae = sub[sub["family"] == "SSAE"]
    lines = []
    if not ssae.empty:
        best = ssae["validation_fvu"].idxmin()
        b = ssae.loc[best]
        lines.append(
            f"Best SSAE, chosen on subdomain validation FVU ({b['validation_fvu']:.4f}): `{best}`. On subdomain "
            f"test text: FVU {_ci(b, 'fvu')}, ΔCE {_ci(b, 'delta_ce')} nats, KL {_ci(b, 'kl')} nats "
            f"(clean loss {b['clean_loss']:.4f}); tail-concept recall {b['tail_recall']:.3f} over "
            f"{b['tail_evaluable']} evaluable concepts (no interval)."
        )
    chosen = sub[sub["family"] != "GSAE"].sort_values("validation_fvu").groupby("strategy").head(1)
    if not chosen.empty:
        lines.append(
            "Subdomain test FVU per data-selection strategy (each strategy's run chosen on validation FVU): "
            + ", ".join(f"{r['label']} {_ci(r, 'fvu')}" for _, r in chosen.sort_values("fvu").iterrows())
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
    cols = ["run", "label", "set", "n_docs", *INTERVAL_METRICS, "loss_recovered", "dead_fraction", "tail_recall"]
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
) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    boot = boot or Bootstrap()
    baselines = json.loads(Path(baselines_path).read_text())
    loaded = load_runs(runs)
    table = metrics_table(loaded, baselines, boot)
    compared = comparisons(loaded, comparison_pairs(table, main_k), boot)
    out_table = Path(out_table)
    for path, frame in ((out_table, table), (out_table.with_name("comparisons.csv"), compared)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    with atomic_path(out_table.with_suffix(".parquet")) as tmp:
        table.to_parquet(tmp, index=False)
    _pareto_plot(table, sweep, Path(out_pareto))
    _comparison_plot(table, main_k, Path(out_comparison))

    lines = [
        "# SAE evaluation",
        "",
        "Every number is measured on the **test** part of each held-out set; the validation part",
        "(a hash of each document's id) serves every choice: the best SSAE, each tail concept's latent.",
        f"Intervals: {PCT}% percentile bootstrap over test documents ({boot.samples} resamples); a",
        "comparison of two SAEs resamples the same documents for both (paired). One seed per SAE (`n_seeds` 1).",
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
        )
    )


if __name__ == "__main__":
    sys.exit(main())

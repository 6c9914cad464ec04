"""Evaluation overview: the metrics table of every SAE on every held-out set, Pareto
plots (FVU and spliced loss against L0), a GSAE-vs-SSAE comparison plot and a Markdown
summary whose findings are computed from the table (whichever way they come out)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

from ssae_steps._cli import save_figure
from ssae_steps._config import run_stage
from ssae_steps._io import atomic_path, write_text

log = logging.getLogger("ssae.evaluation_report")
RUN_NAME = re.compile(r"^(?:gsae/k(?P<gk>\d+)|ssae/(?P<strategy>\w+)/(?P<init>\w+)-t(?P<tilt>[0-9.e+-]+)-k(?P<k>\d+))$")
FVU_FORMULA = "FVU = sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2"


def parse_run(name: str) -> dict[str, Any]:
    """``gsae/k32`` or ``ssae/dense/finetune-t2-k32`` -> its parts."""
    m = RUN_NAME.match(name)
    if m is None:
        raise ValueError(f"unrecognised SAE run name {name!r}")
    if m["gk"]:
        return {"family": "GSAE", "strategy": "-", "init": "-", "tilt": math.nan, "k": int(m["gk"])}
    return {"family": "SSAE", "strategy": m["strategy"], "init": m["init"], "tilt": float(m["tilt"]), "k": int(m["k"])}


def metrics_table(runs: dict[str, str], baselines: dict[str, Any]) -> Any:
    import pandas as pd

    rows = []
    for name, path in runs.items():
        result = json.loads(Path(path).read_text())
        for set_name, m in result["sets"].items():
            base = baselines[set_name]
            gap = base["zero_ablation_loss"] - base["clean_loss"]
            rows.append(
                {
                    "run": name,
                    **parse_run(name),
                    "set": set_name,
                    **{k: v for k, v in m.items() if k not in ("tokens", "loss_tokens")},
                    "clean_loss": base["clean_loss"],
                    "zero_ablation_loss": base["zero_ablation_loss"],
                    "delta_loss": m["spliced_loss"] - base["clean_loss"],
                    "spliced_perplexity": math.exp(m["spliced_loss"]),
                    "clean_perplexity": math.exp(base["clean_loss"]),
                    "loss_recovered": (base["zero_ablation_loss"] - m["spliced_loss"]) / gap if gap else math.nan,
                    "tail_recall": result["tail"]["recall"],
                    "tail_mean_best_f1": result["tail"]["mean_best_f1"],
                    "tail_concepts": result["tail"]["concepts"],
                    "eval_tokens": m["tokens"],
                }
            )
    return pd.DataFrame(rows)


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
            for row, metric in enumerate(["fvu", "spliced_loss"]):
                axes[row, col].plot(line["l0"], line[metric], "o-", label=label)
        clean = part["clean_loss"].iloc[0]
        axes[1, col].axhline(clean, color="grey", linestyle=":", label="clean model")
        axes[0, col].set_title(f"held-out {set_name} text")
        axes[0, col].set_ylabel("FVU")
        axes[1, col].set_ylabel("next-token loss, SAE spliced in (nats)")
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
        ("fvu", "subdomain", "FVU, held-out subdomain"),
        ("fvu", "general", "FVU, held-out general"),
        ("loss_recovered", "subdomain", "loss recovered, subdomain"),
        ("tail_fvu", "subdomain", "FVU on tail-concept tokens"),
        ("tail_recall", "subdomain", "tail concepts with a dedicated latent"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.35 * len(runs) + 2), sharey=True)
    for ax, (metric, set_name, title) in zip(axes, panels, strict=True):
        part = main[main["set"] == set_name].set_index("run").reindex(runs)
        colors = ["tab:grey" if r.startswith("gsae") else "tab:blue" for r in runs]
        ax.barh(runs, part[metric], color=colors)
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, out)


def markdown_table(frame: Any) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _pct(new: float, old: float) -> str:
    return f"{100 * (new - old) / old:+.1f}%" if old else "n/a"


def findings(table: Any, main_k: int) -> list[str]:
    """Plain statements comparing the SSAEs with the GSAE at the main k, from the numbers."""
    sub = table[(table["set"] == "subdomain") & (table["k"] == main_k)].set_index("run")
    gen = table[(table["set"] == "general") & (table["k"] == main_k)].set_index("run")
    gsae = f"gsae/k{main_k}"
    if gsae not in sub.index:
        return []
    g = sub.loc[gsae]
    ssae = sub[sub["family"] == "SSAE"]
    lines = []
    if not ssae.empty:
        best = ssae["fvu"].idxmin()
        b = ssae.loc[best]
        lines.append(
            f"Best SSAE on held-out subdomain text: `{best}`, FVU {b['fvu']:.4f} vs GSAE {g['fvu']:.4f} "
            f"({_pct(b['fvu'], g['fvu'])}); spliced loss {b['spliced_loss']:.4f} vs {g['spliced_loss']:.4f} nats "
            f"(clean {g['clean_loss']:.4f}); tail-token FVU {b['tail_fvu']:.4f} vs {g['tail_fvu']:.4f}; "
            f"tail-concept recall {b['tail_recall']:.3f} vs {g['tail_recall']:.3f}."
        )
        general_change = gen.loc[best, "fvu"] - gen.loc[gsae, "fvu"]
        lines.append(
            f"On held-out general text the same SSAE has FVU {gen.loc[best, 'fvu']:.4f} vs GSAE "
            f"{gen.loc[gsae, 'fvu']:.4f} ({_pct(gen.loc[best, 'fvu'], gen.loc[gsae, 'fvu'])}): "
            + ("specialising cost general fidelity." if general_change > 0 else "no cost to general fidelity here")
            + (
                " (a finetuned SSAE has trained on the GSAE's tokens and then its own, a larger budget)."
                if b["init"] == "finetune"
                else "."
            )
        )
        for (strategy, init), part in ssae.groupby(["strategy", "init"]):
            tilts = part.sort_values("tilt")
            if len(tilts) > 1:
                erm, top = tilts.iloc[0], tilts.iloc[-1]
                lines.append(
                    f"Tilt, {strategy}/{init}: t={top['tilt']:g} vs t={erm['tilt']:g}: tail-token FVU "
                    f"{top['tail_fvu']:.4f} vs {erm['tail_fvu']:.4f} ({_pct(top['tail_fvu'], erm['tail_fvu'])}), "
                    f"overall FVU {top['fvu']:.4f} vs {erm['fvu']:.4f}."
                )
        inits = ssae.groupby("init")["fvu"].mean()
        if {"finetune", "scratch"} <= set(inits.index):
            lines.append(
                f"Mean subdomain FVU over strategies and tilts: finetuned {inits['finetune']:.4f}, "
                f"from scratch {inits['scratch']:.4f}."
            )
        by_strategy = ssae.groupby("strategy")["fvu"].min().sort_values()
        lines.append(
            "Best subdomain FVU per data-selection strategy: "
            + ", ".join(f"{s} {v:.4f}" for s, v in by_strategy.items())
            + "."
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
) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    baselines = json.loads(Path(baselines_path).read_text())
    table = metrics_table(runs, baselines)
    out_table = Path(out_table)
    with atomic_path(out_table) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_table.with_suffix(".parquet")) as tmp:
        table.to_parquet(tmp, index=False)
    _pareto_plot(table, sweep, Path(out_pareto))
    _comparison_plot(table, main_k, Path(out_comparison))

    cols = ["run", "set", "l0", "fvu", "tail_fvu", "spliced_loss", "spliced_perplexity", "loss_recovered"]
    cols += ["dead_fraction", "tail_recall"]
    main = table[table["k"] == main_k][cols]
    lines = [
        "# SAE evaluation",
        "",
        f"- {FVU_FORMULA} (one mean over the held-out set).",
        "- L0: mean active latents per token. Spliced loss: next-token cross-entropy (nats) with the",
        "  hooked block's output replaced by the SAE reconstruction (full model, LM head included);",
        "  spliced perplexity = exp(spliced loss).",
        "- Loss recovered = (zero-ablation loss - spliced loss) / (zero-ablation loss - clean loss).",
        "- Tail concepts: subdomain-specific rare tokens (see README); tail recall = share of them",
        "  with a latent that detects them with F1 >= the configured threshold.",
        "",
        "Baselines (nats/token): "
        + "; ".join(
            f"{name}: clean {b['clean_loss']:.4f}, zero-ablation {b['zero_ablation_loss']:.4f} "
            f"over {b['loss_tokens']} tokens"
            for name, b in baselines.items()
        ),
        "",
        "## Findings (computed from the table)",
        "",
        "One seed per SAE and no intervals: a difference of a few percent between two SAEs is not",
        "a finding, and the 'best' SSAE is picked on the same held-out text it is reported on.",
        "",
        *[f"- {line}" for line in findings(table, main_k)],
        "",
        f"## All SAEs at k={main_k}",
        "",
        markdown_table(main),
        "",
        "Full table (all k, all columns): `metrics.csv` / `metrics.parquet`.",
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
    parser.add_argument("--out-table", required=True)
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
        )
    )


if __name__ == "__main__":
    sys.exit(main())

"""Training overview: one table of every SAE run's final numbers and one figure of the
training curves (FVU, dead-latent fraction and, for Tilted ERM runs, the effective sample
size of the tilted token weights, against tokens seen)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

from ssae_steps.cli import run, save_figure
from ssae_steps.files import atomic_path

log = logging.getLogger("ssae.training_report")


def training_report(
    runs: Annotated[dict[str, str], "JSON object: run name -> run directory"], out_table: Path, out_plot: Path
) -> None:
    """Write the table of every SAE run's final numbers and the figure of their training curves.

    ``runs`` maps a run name (``gsae/k32``, ``ssae/dense/finetune-t2-k32``) to its directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    rows, curves = [], {}
    for name, directory in runs.items():
        summary = json.loads((Path(directory) / "summary.json").read_text())
        curve = pd.read_csv(Path(directory) / "train_log.csv")
        curves[name] = curve
        final = summary.get("final", {})
        run_cfg = summary["config"]
        rows.append(
            {
                "run": name,
                "init": run_cfg.get("init"),
                "tilt": run_cfg.get("tilt"),
                "k": run_cfg["sae"].get("k"),
                "steps": summary.get("steps", 0),
                "tokens": summary.get("tokens", 0),
                "tokens_per_second": summary.get("tokens_per_second"),
                "train_fvu": final.get("fvu"),
                "train_l0": final.get("l0"),
                "dead_fraction": final.get("dead_fraction"),
                "tilt_scale": run_cfg.get("tilt_scale"),
                # Means over the logged steps: how concentrated the tilted weights were.
                "tilt_ess": curve["tilt_ess"].mean() if "tilt_ess" in curve else None,
                "tilt_top1_share": curve["tilt_top1_share"].mean() if "tilt_top1_share" in curve else None,
                # Tail-concept tokens' share of the tilted weight over their share of tokens.
                "tail_upweight": (summary.get("tail_weight") or {}).get("upweight"),
            }
        )
    table = pd.DataFrame(rows)
    with atomic_path(out_table) as tmp:
        table.to_csv(tmp, index=False)

    fig, (ax_fvu, ax_dead, ax_ess) = plt.subplots(1, 3, figsize=(18, 4.8))
    tilted = {row["run"] for row in rows if row["tilt"]}
    for name, curve in curves.items():
        if curve.empty:  # an imported (pretrained) GSAE has no curve
            continue
        style = "-" if name.startswith("gsae") else "--" if "scratch" in name else ":"
        ax_fvu.plot(curve["tokens"], curve["fvu"], style, label=name, linewidth=1.3)
        ax_dead.plot(curve["tokens"], curve["dead_fraction"], style, label=name, linewidth=1.3)
        if name in tilted and "tilt_ess" in curve:
            ax_ess.plot(curve["tokens"], curve["tilt_ess"], style, label=name, linewidth=1.3)
    ax_ess.set_xlabel("tokens seen")
    ax_ess.set_ylabel("effective sample size / batch")
    ax_ess.set_title("Tilted ERM: ESS of the token weights (1 = plain ERM)", fontsize=9)
    if tilted:
        ax_ess.set_yscale("log")
        ax_ess.legend(fontsize=6, loc="lower right")
    else:
        ax_ess.text(
            0.5, 0.5, "no tilted runs (training.ssae.tilts)", ha="center", va="center", transform=ax_ess.transAxes
        )
    ax_fvu.set_yscale("log")
    ax_fvu.set_xlabel("tokens seen")
    ax_fvu.set_ylabel("training-batch FVU")
    ax_fvu.set_title("Reconstruction (solid: GSAE, dotted: finetuned SSAE, dashed: scratch SSAE)", fontsize=9)
    ax_dead.set_xlabel("tokens seen")
    ax_dead.set_ylabel("dead-latent fraction")
    ax_dead.set_title("Latents not fired in the last dead_after_tokens tokens", fontsize=9)
    ax_dead.legend(fontsize=6, ncol=2, loc="upper right")
    fig.tight_layout()
    save_figure(fig, out_plot)
    log.info("wrote %s and %s (%d runs)", out_table, out_plot, len(rows))


def main(argv: list[str] | None = None) -> int:
    return run(training_report, argv)


if __name__ == "__main__":
    sys.exit(main())

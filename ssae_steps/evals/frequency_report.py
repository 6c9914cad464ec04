"""Captured token types against general-pool frequency, as the paper plots them (its Figs.
2 and 6), for the evaluation overview (``ssae_steps.evals.report``): per SAE at the main k
the share of subdomain token types captured per frequency decade and cumulatively, with
test documents and types resampled together (``ssae_steps.evals.capture``); the paired
differences of each SSAE against the GSAE and the control per bin; the normalised
cumulative curve of Fig. 6; and the figure and summary sentences.

Frequency bins are ``(low, high]`` decades, so a type exactly at a decade edge counts up to
that edge, as :func:`~ssae_steps.evals.tail.is_rare` defines "rare" everywhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps.cli import save_figure
from ssae_steps.evals.capture import normalised_cumulative, paired_share_difference, share_interval
from ssae_steps.evals.compare import PCT, Bootstrap, paired_type_counts, seed_type_counts
from ssae_steps.evals.tail import is_rare


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
        seeds = seed_type_counts([loaded[name][0] for name in groups[r["run"]]])
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

    rows = []
    for name, ref_label, ref in pairs:
        if ref_label not in ("GSAE", "control"):
            continue
        counts = paired_type_counts(loaded, name, ref, groups)
        if counts is None:
            continue
        for cumulative, low, high, mask in _bins(counts[0][0].frequency, None):
            diff = paired_share_difference(counts, mask, boot.samples, boot.seed)
            rows.append(
                {
                    "run": name,
                    "reference": ref_label,
                    "reference_run": ref,
                    "n_seeds": len(counts),
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
        seeds = seed_type_counts([loaded[name][0] for name in groups[r["run"]]])
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


def recall_plot(curves: Any, differences: Any, fig6: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> None:
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

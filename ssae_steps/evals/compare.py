"""The numbers behind the evaluation overview and the TERM study: one row per (SAE, set)
with 95% intervals, and paired comparisons of two SAEs on the same documents. Intervals are
those of ``ssae_steps.bootstrap``: with one training seed, a percentile bootstrap over test
documents; with several, mean ± t·sqrt(s²/n + v) - the seeds' spread ``s²`` (not
resampled) plus the document bootstrap's variance ``v`` of the seed mean, t with n - 1
degrees of freedom.

Runs that differ only in their training seed (``gsae/k32``, ``gsae/k32-s1``, ...) form one
row: the mean over seeds, that interval and ``n_seeds``. A comparison pairs seed s of one
SAE with seed s of the other and takes the same interval of the per-seed differences, the
same resampled documents on both sides.

The ``random`` strategy's SSAE - the GSAE finetuned for the same steps and tokens on
general pool text with no seed documents - is the matched-compute control, labelled
``control`` (run names are parsed by ``ssae_steps.sae.runs``).

Each row is judged primary or exploratory by ``ssae_steps.evals.family``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps.bootstrap import LEVEL, MIN_DOCS, Interval, paired_seed_difference, seed_interval
from ssae_steps.evals.capture import TypeCounts, captured_share, paired_share_difference
from ssae_steps.evals.family import Family, judged
from ssae_steps.evals.per_doc import doc_metrics, per_doc_path, read_per_doc
from ssae_steps.evals.tail import is_rare
from ssae_steps.sae.runs import parse_run, seed_groups, suffix_of

log = logging.getLogger("ssae.compare")
INTERVAL_METRICS = ["fvu", "delta_ce", "kl", "spliced_loss", "l0"]
NON_NEGATIVE = {"fvu", "kl", "spliced_loss", "l0"}
"""Metrics that cannot fall below zero: a few seeds that disagree give a t interval reaching
below it, which is clipped (delta CE can be negative and is not)."""
COMPARED = {"fvu": ("FVU", ""), "delta_ce": ("ΔCE", " nats"), "kl": ("KL", " nats")}
"""Metrics of a paired comparison over test documents: ``metric -> (name in sentences, unit)``."""
METRIC_NAMES = {**COMPARED, "rare_capture": ("rare-type capture", "")}
"""Every metric a comparison row may hold (``rare_capture``: :func:`capture_comparisons`)."""
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
    interval (``ssae_steps.bootstrap.seed_interval``: document bootstrap, plus the seed
    spread where there are several seeds), ``n_seeds``, ``<metric>_seed_sd`` (NaN for one
    seed), and the other columns averaged over seeds. ``groups`` defaults to
    :func:`seed_groups`."""
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


def _judged_row(
    pair: tuple[str, str, str],
    set_name: str,
    metric: str,
    values: tuple[float, float],
    interval_at: Callable[[float], Interval],
    n_docs: int,
    n_seeds: int,
    family: Family,
    **extra: Any,
) -> dict[str, Any]:
    """One comparison row: both values, the difference's interval (``interval_at(level)``)
    at 95% and, for a declared comparison, at the family's level (:func:`judged`)."""
    run, ref_label, ref = pair
    diff = interval_at(LEVEL)
    wide = interval_at(family.level) if family.entry(run, ref, set_name, metric) else None
    row = {
        "run": run,
        "reference": ref_label,
        "reference_run": ref,
        "set": set_name,
        "metric": metric,
        "value": values[0],
        "reference_value": values[1],
        "difference": diff.estimate,
        "ci_low": diff.low,
        "ci_high": diff.high,
        "n_docs": n_docs,
        "n_seeds": n_seeds,
        **extra,
    }
    return judged(row, family, n_seeds, wide)


def comparisons(
    loaded: dict[str, tuple[dict, dict]],
    pairs: list[tuple[str, str, str]],
    boot: Bootstrap,
    groups: dict[str, list[str]] | None = None,
    family: Family | None = None,
) -> Any:
    """One row per (pair, set, metric): both values (means over the paired seeds) and the
    interval of their difference (``ssae_steps.bootstrap.paired_seed_difference``: the
    per-seed-pair differences on jointly resampled documents, plus their seed spread where
    several seeds are paired), judged primary or exploratory (:func:`judged`)."""
    import pandas as pd

    groups = groups if groups is not None else seed_groups(list(loaded))
    family = family or Family()
    rows = []
    for pair in pairs:
        run, _, ref = pair
        matched = seed_pairs(groups[run], groups[ref])
        if not matched:
            log.warning("%s vs %s: no training seed in common, not compared", run, ref)
            continue
        for set_name in loaded[run][1]:
            _same_documents(loaded, [n for names in matched for n in names], set_name)
            n_docs = len(loaded[run][1][set_name])
            fns = [(doc_metrics(loaded[a][1][set_name]), doc_metrics(loaded[b][1][set_name])) for a, b in matched]
            ones = np.ones((1, n_docs))
            for metric in COMPARED:
                pair_fns = [(a[metric], b[metric]) for a, b in fns]
                values = (
                    float(np.mean([a(ones)[0] for a, _ in pair_fns])),
                    float(np.mean([b(ones)[0] for _, b in pair_fns])),
                )
                interval_at = partial(paired_seed_difference, pair_fns, n_docs, boot.samples, boot.seed)
                rows.append(_judged_row(pair, set_name, metric, values, interval_at, n_docs, len(matched), family))
    return pd.DataFrame(rows)


def type_counts(result: dict[str, Any]) -> TypeCounts | None:
    """The per-document type counts of a loaded evaluation JSON (None for an older one),
    built once and kept in ``result`` under ``_type_counts``."""
    types = result.get("types")
    if not types or "test_counts" not in types:
        return None
    if "_type_counts" not in result:
        result["_type_counts"] = TypeCounts.from_result(types)
    return result["_type_counts"]


def seed_type_counts(results: list[dict[str, Any]]) -> list[TypeCounts] | None:
    """:func:`type_counts` of each seed's evaluation JSON; None if any lacks them."""
    counts = [type_counts(r) for r in results]
    return None if any(c is None for c in counts) else counts  # type: ignore[return-value]


def paired_type_counts(
    loaded: dict[str, tuple[dict, dict]], run: str, reference: str, groups: dict[str, list[str]]
) -> list[tuple[TypeCounts, TypeCounts]] | None:
    """:func:`type_counts` of each seed pair (:func:`seed_pairs`) of two SAEs; None when no
    seed is shared or a side lacks them."""
    matched = seed_pairs(groups[run], groups[reference])
    sides = [seed_type_counts([loaded[a][0], loaded[b][0]]) for a, b in matched]
    if not matched or any(side is None for side in sides):
        return None
    return [(a, b) for a, b in sides]  # type: ignore[misc]


def capture_comparisons(
    loaded: dict[str, tuple[dict, dict]],
    pairs: list[tuple[str, str, str]],
    rare_frequency: float,
    boot: Bootstrap,
    groups: dict[str, list[str]] | None = None,
    family: Family | None = None,
) -> Any:
    """Rows like :func:`comparisons` for ``rare_capture``: the captured share of the rare
    evaluated types (general-pool frequency at most ``rare_frequency``), documents and types
    resampled together (``ssae_steps.evals.capture``; documents within each held-out set,
    as detection pools both), seed s paired with seed s. ``set`` is ``subdomain`` (the
    types are the subdomain's); ``n_docs`` counts the test documents of both held-out sets,
    ``n_types`` the rare types."""
    import pandas as pd

    groups = groups if groups is not None else seed_groups(list(loaded))
    family = family or Family()
    rows = []
    for pair in pairs:
        counts = paired_type_counts(loaded, pair[0], pair[2], groups)
        if counts is None:
            continue
        rare = is_rare(counts[0][0].frequency, rare_frequency)
        values = (
            float(np.mean([captured_share(a, rare) for a, _ in counts])),
            float(np.mean([captured_share(b, rare) for _, b in counts])),
        )
        interval_at = partial(paired_share_difference, counts, rare, boot.samples, boot.seed)
        n_docs, n_types = len(counts[0][0].docs), int(rare.sum())
        row = _judged_row(
            pair, "subdomain", "rare_capture", values, interval_at, n_docs, len(counts), family, n_types=n_types
        )
        rows.append(row)
    return pd.DataFrame(rows)


def all_comparisons(
    loaded: dict[str, tuple[dict, dict]],
    pairs: list[tuple[str, str, str]],
    rare_frequency: float,
    boot: Bootstrap,
    groups: dict[str, list[str]] | None = None,
    family: Family | None = None,
) -> Any:
    """Every comparison row of ``pairs``: :func:`comparisons` (metrics over test documents),
    then :func:`capture_comparisons` (rare-type capture)."""
    import pandas as pd

    groups = groups if groups is not None else seed_groups(list(loaded))
    return pd.concat(
        [
            comparisons(loaded, pairs, boot, groups, family),
            capture_comparisons(loaded, pairs, rare_frequency, boot, groups, family),
        ],
        ignore_index=True,
    )


def interval_text(row: Any, metric: str) -> str:
    """``row[metric]`` with its interval from the ``<metric>_ci_low/high`` columns:
    ``0.1234 [0.1200, 0.1270]``, or ``0.1234 [no interval]``."""
    if math.isnan(row[f"{metric}_ci_low"]):
        return f"{row[metric]:.4f} [no interval]"
    return f"{row[metric]:.4f} [{row[f'{metric}_ci_low']:.4f}, {row[f'{metric}_ci_high']:.4f}]"


def seeds_text(n: int) -> str:
    """How many seeds a comparison paired: ``1 seed``, ``3 seeds paired``."""
    return "1 seed" if n == 1 else f"{n} seeds paired"


def comparison_clause(row: Any) -> str:
    """One metric of one comparison row in words. Primary: a finding (lower or higher, by
    how much) when its family-wise interval excludes zero, else "no clear difference", with
    both intervals. Exploratory: the difference and its unadjusted interval, never a
    finding. Either way "training variance not included" where a side has one seed."""
    name, unit = METRIC_NAMES[row["metric"]]
    values = f"{row['value']:.4f} vs {row['reference_value']:.4f}{unit}"
    seeds = "" if row.get("training_variance", True) else "; training variance not included (one seed)"
    if math.isnan(row["ci_low"]):
        few = (
            f"{int(row['n_types'])} rare types"
            if row["metric"] == "rare_capture" and row.get("n_types", MIN_DOCS) < MIN_DOCS
            else f"{row['n_docs']} test documents"
        )
        return f"{name} {values}: no interval ({few}, fewer than {MIN_DOCS}){seeds}"
    ci = f"{PCT}% CI {row['ci_low']:+.4f} to {row['ci_high']:+.4f}"
    if row.get("role") != "primary":
        return f"{name} {values}, difference {row['difference']:+.4f} ({ci}, unadjusted; exploratory{seeds})"
    wide = (
        f"family-wise {PCT}% CI {row['family_ci_low']:+.4f} to {row['family_ci_high']:+.4f} "
        f"(Bonferroni, m = {int(row['family_size'])}); unadjusted {ci}"
    )
    if not row["training_variance"]:
        return f"{name} {values}, difference {row['difference']:+.4f} ({wide}){seeds}, so exploratory"
    if row["finding"]:
        direction = "lower" if row["difference"] < 0 else "higher"
        return f"{name} {values}, {direction} by {abs(row['difference']):.4f} ({wide})"
    return f"{name} {values}: no clear difference ({row['difference']:+.4f}, {wide})"


def comparison_sentences(table: Any, compared: Any) -> list[str]:
    """One sentence per (run, reference, set), each metric's clause (:func:`comparison_clause`)."""
    labels = dict(zip(table["run"], table["label"], strict=False))
    lines = []
    for (run, ref, set_name), part in compared.groupby(["run", "reference", "set"], sort=False):
        clauses = "; ".join(comparison_clause(row) for _, row in part.iterrows())
        n, seeds = int(part["n_docs"].iloc[0]), int(part["n_seeds"].iloc[0])
        lines.append(
            f"`{run}` ({labels.get(run, run)}) vs {ref}, {set_name} test text ({n} documents, "
            f"{seeds_text(seeds)}): {clauses}."
        )
    return lines

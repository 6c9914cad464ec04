"""The debiasing case study's tables, plot and summary: every method at the N chosen on the
validation documents, laid out as Table 1 of the SSAE paper with intervals over test
documents and seeds; paired comparisons of SAEs; k-sparse probing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps.bootstrap import Interval, paired_seed_difference, seed_interval
from ssae_steps.cli import save_figure
from ssae_steps.debias.config import DebiasConfig
from ssae_steps.debias.probes import CaseData, Outcome, accuracy_metric, worst_group_metric
from ssae_steps.evals.family import Family, judged

# The SSAE paper's Table 1 (Pythia-70M, Bias in Bios professor vs nurse): profession, gender,
# worst-group accuracy in %, for reference beside ours (a different model and data).
PAPER_TABLE_1 = {
    "original probe": (61.9, 87.4, 24.4),
    "SHIFT gsae": (88.5, 54.0, 76.0),
    "SHIFT ssae_bios": (90.2, 53.4, 88.5),
    "SHIFT + retrain gsae": (93.1, 52.0, 89.0),
    "SHIFT + retrain ssae_bios": (93.4, 51.9, 89.5),
    "oracle probe": (93.0, 49.4, 91.9),
}
SAE_METHODS = ("SHIFT", "SHIFT + retrain", "random latents", "random latents + retrain")
BIOGRAPHY_SSAES = ("ssae_bios", "ssae_bios_real")
"""The biography SSAE of a variant: the first of these it has (``ssae_bios``, trained on the
training biographies with their copies, in ``copies``; ``ssae_bios_real`` in ``real``)."""
SAE_TRAINING = {
    "gsae": "the general pool (the GSAE every SSAE here is finetuned from)",
    "ssae_bios": "the training biographies, real articles and their gender-swapped copies",
    "ssae_bios_real": "the training biographies, real articles only",
    "ssae_swap": "swap control: non-biography pool text, each document with its gender-swapped copy",
}
"""What each SAE of the case study was trained on; any other is the main subdomain SSAE."""


def sae_training(name: str) -> str:
    if name == "-":
        return ""
    return SAE_TRAINING.get(name, f"the {name.removeprefix('ssae_')} subdomain's selected text (off-domain control)")


def choose_n(outcomes: list[Outcome], data: CaseData) -> dict[tuple[str, str], int]:
    """Per (SAE, method): the N with the best validation worst-group accuracy, mean over
    seeds (ties: the smaller N)."""
    lv, gv = data.label[data.validation], data.gender[data.validation]
    one = np.ones((1, len(lv)))
    scores: dict[tuple[str, str, int], list[float]] = {}
    for o in outcomes:
        if o.sae != "-":
            wg = float(worst_group_metric(o.validation, lv, gv)(one)[0])
            scores.setdefault((o.sae, o.method, o.n_latents), []).append(wg)
    best: dict[tuple[str, str], tuple[float, int]] = {}
    for (sae, method, n), values in sorted(scores.items(), key=lambda kv: kv[0][2]):
        mean = float(np.nanmean(values))
        if (sae, method) not in best or mean > best[(sae, method)][0] + 1e-12:
            best[(sae, method)] = (mean, n)
    return {key: n for key, (_, n) in best.items()}


def table_1(outcomes: list[Outcome], data: CaseData, cfg: DebiasConfig, seed: int) -> list[dict[str, Any]]:
    """Table-1 rows: each baseline, and each SAE method at its validation-chosen N, with
    intervals over test documents (and seeds)."""
    lt, gt = data.label[data.test], data.gender[data.test]
    n_docs = int(data.test.sum())
    chosen = choose_n(outcomes, data)
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        if o.sae == "-" or chosen.get((o.sae, o.method)) == o.n_latents:
            groups.setdefault((o.sae, o.method), []).append(o)

    def ci(metrics: list[Any]) -> Interval:
        return seed_interval(metrics, n_docs, cfg.bootstrap_samples, seed)

    # The variant's biography SSAE, as paired_comparisons picks it.
    biography = next((n for n in BIOGRAPHY_SSAES if n in {sae for sae, _ in groups}), None)
    rows = []
    for (sae, method), runs in groups.items():
        label = method if sae == "-" else f"{method} {sae}"
        row: dict[str, Any] = {"method": label, "n_latents": runs[0].n_latents, "seeds": len(runs)}
        for key, metrics in (
            ("profession_acc", [accuracy_metric(r.test) for r in runs]),
            ("gender_acc_frozen", [accuracy_metric(r.gender_frozen) for r in runs]),
            ("gender_acc_retrained", [accuracy_metric(r.gender_retrained) for r in runs]),
            ("worst_group_acc", [worst_group_metric(r.test, lt, gt) for r in runs]),
        ):
            value = ci(metrics)
            # Accuracies live in [0, 1]; the seed t interval can overshoot it.
            low, high = (float(np.clip(v, 0, 1)) if not np.isnan(v) else v for v in (value.low, value.high))
            row |= {key: value.estimate, f"{key}_ci_low": low, f"{key}_ci_high": high}
        # The paper's biography SSAE sits beside the variant's biography SSAE only.
        paper = PAPER_TABLE_1.get(f"{method} ssae_bios" if sae == biography else label)
        rows.append(row | {"sae": sae, "base_method": method, "paper": paper, "sae_training": sae_training(sae)})
    order = {m: i for i, m in enumerate(SAE_METHODS)}
    saes = list(dict.fromkeys(r["sae"] for r in rows if r["sae"] != "-"))
    return sorted(rows, key=lambda r: (r["sae"] != "-", saes.index(r["sae"]) if r["sae"] in saes else -1,
                                       order.get(r["base_method"], -1)))  # fmt: skip


def compared_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Paired comparisons of a variant: its biography SSAE (:data:`BIOGRAPHY_SSAES`) against
    every other SAE it has - the GSAE, the off-domain SSAE, the swap control (biography
    text, both finetuned on swapped pairs) and, in ``copies``, the real-only biography
    SSAE (swapped pairs, both finetuned on biographies)."""
    biography = next((n for n in BIOGRAPHY_SSAES if n in names), None)
    if biography is None:
        return []
    others = [n for n in names if n != biography]
    return [(biography, b) for b in sorted(others, key=lambda n: n != "gsae")]


PRIMARY_METRIC = {"SHIFT": "shift_worst_group", "SHIFT + retrain": "shift_retrain_worst_group"}
"""The ``evaluation.primary`` metric name of each method's worst-group accuracy."""


def paired_comparisons(
    outcomes: list[Outcome], data: CaseData, cfg: DebiasConfig, seed: int, family: Family | None = None
) -> list[dict]:
    """Worst-group accuracy of SAE a minus SAE b (:func:`compared_pairs`) for SHIFT and
    SHIFT + retrain, each at its validation-chosen N, paired over test documents and
    training seeds (seed s with seed s). ``family``: the primary comparisons that apply to
    this variant (``ssae_steps.evals.family.judged``); every other row is exploratory."""
    family = family or Family()
    lt, gt = data.label[data.test], data.gender[data.test]
    chosen = choose_n(outcomes, data)
    names = list(dict.fromkeys(o.sae for o in outcomes if o.sae != "-"))
    n_docs = int(data.test.sum())
    rows = []
    for a, b in compared_pairs(names):
        for method in ("SHIFT", "SHIFT + retrain"):
            runs = {
                name: {o.seed: o for o in outcomes if o.sae == name and o.method == method
                       and o.n_latents == chosen[(name, method)]}
                for name in (a, b)
            }  # fmt: skip
            seeds = sorted(set(runs[a]) & set(runs[b]))
            pairs = [
                (worst_group_metric(runs[a][s].test, lt, gt), worst_group_metric(runs[b][s].test, lt, gt))
                for s in seeds
            ]
            value = paired_seed_difference(pairs, n_docs, cfg.bootstrap_samples, seed)
            primary = family.entry(a, b, "main variant", PRIMARY_METRIC[method])
            wide = paired_seed_difference(pairs, n_docs, cfg.bootstrap_samples, seed, family.level) if primary else None
            row = {"method": method, "sae": a, "reference": b, "seeds": len(seeds), "difference": value.estimate,
                   "ci_low": value.low, "ci_high": value.high,
                   "sae_training": sae_training(a), "reference_training": sae_training(b)}  # fmt: skip
            rows.append(judged(row, family, len(seeds), wide))
    return rows


def comparison_line(r: dict[str, Any]) -> str:
    """One debias comparison in words (points): primary with its family-wise interval and
    verdict, or exploratory with its unadjusted interval."""
    head = f"{r['method']}: {r['sae']} - {r['reference']} {100 * r['difference']:+.1f}"
    ci = f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
    seeds = f"{r['seeds']} seeds" + ("" if r["training_variance"] else ", training variance not included")
    if r["role"] != "primary":
        return f"{head} {ci} ({seeds}; unadjusted, exploratory)"
    wide = f"[{100 * r['family_ci_low']:+.1f}, {100 * r['family_ci_high']:+.1f}]"
    verdict = "a finding" if r["finding"] else "no clear difference"
    return (
        f"**primary**: {head}, family-wise {wide} (Bonferroni, m = {r['family_size']}; unadjusted {ci}) "
        f"({seeds}): {verdict}"
    )


def sparse_table(rows: list[dict[str, Any]], data: CaseData, cfg: DebiasConfig, seed: int) -> list[dict[str, Any]]:
    """Mean test accuracy of each (SAE, target, k) over seeds, with its interval."""
    grouped: dict[tuple[str, str, int], list[np.ndarray]] = {}
    for r in rows:
        grouped.setdefault((r["sae"], r["target"], r["k"]), []).append(r["correct"])
    out = []
    for (sae, target, k), runs in grouped.items():
        value = seed_interval([accuracy_metric(c) for c in runs], int(data.test.sum()), cfg.bootstrap_samples, seed)
        out.append(
            {"sae": sae, "target": target, "k": k, "seeds": len(runs), "accuracy": value.estimate,
             "accuracy_ci_low": max(value.low, 0.0), "accuracy_ci_high": min(value.high, 1.0)}
        )  # fmt: skip
    return out


def _cell(row: dict[str, Any], key: str) -> str:
    if np.isnan(row[f"{key}_ci_low"]):
        return f"{100 * row[key]:.1f}"
    return f"{100 * row[key]:.1f} [{100 * row[f'{key}_ci_low']:.1f}, {100 * row[f'{key}_ci_high']:.1f}]"


def plot_results(tables: dict[str, list[dict]], points: list[dict], sparse: list[dict], main: str, out: Path) -> None:
    """``worst_group.png``: the main variant's Table-1 worst-group accuracies, worst-group
    accuracy against N per SAE and method, and k-sparse probing accuracy against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bar, ax_n, ax_k) = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.4, 1, 1]})
    rows = tables[main]
    ys = np.arange(len(rows))
    wg = np.array([r["worst_group_acc"] for r in rows])
    err = np.array(
        [
            [r["worst_group_acc"] - r["worst_group_acc_ci_low"], r["worst_group_acc_ci_high"] - r["worst_group_acc"]]
            for r in rows
        ]
    ).T
    ax_bar.barh(ys, wg, xerr=np.nan_to_num(err), color="tab:blue", alpha=0.7, capsize=2)
    ax_bar.set_yticks(
        ys, [f"{r['method']}" + (f" (N={r['n_latents']})" if r["n_latents"] else "") for r in rows], fontsize=7
    )
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel(f"worst-group accuracy, test (95% CI) - {main}")
    styles = {"SHIFT": "o-", "SHIFT + retrain": "s--", "random latents": "x:", "random latents + retrain": "+:"}
    part = [p for p in points if p["variant"] == main and p["sae"] != "-"]
    for sae in dict.fromkeys(p["sae"] for p in part):
        for method, style in styles.items():
            by_n: dict[int, list[float]] = {}
            for p in part:
                if p["sae"] == sae and p["method"] == method:
                    by_n.setdefault(p["n_latents"], []).append(p["worst_group_acc"])
            ns = sorted(by_n)
            ax_n.plot(ns, [np.mean(by_n[n]) for n in ns], style, label=f"{sae}: {method}", markersize=4)
    for r in (r for r in rows if r["n_latents"] == 0):
        ax_n.axhline(r["worst_group_acc"], linestyle=":", color="grey")
        ax_n.annotate(r["method"], (1, r["worst_group_acc"]), fontsize=7, color="grey")
    ax_n.set_xscale("log")
    ax_n.set_xlabel("latents ablated (N)")
    ax_n.set_ylabel("worst-group accuracy, test (mean over seeds)")
    ax_n.legend(fontsize=5)
    for target, style in (("profession", "o-"), ("gender", "s--")):
        for sae in dict.fromkeys(r["sae"] for r in sparse):
            part_k = sorted((r for r in sparse if r["sae"] == sae and r["target"] == target), key=lambda r: r["k"])
            ks = [r["k"] for r in part_k]
            acc = [r["accuracy"] for r in part_k]
            low = [r["accuracy_ci_low"] for r in part_k]
            high = [r["accuracy_ci_high"] for r in part_k]
            line = ax_k.plot(ks, acc, style, label=f"{sae}: {target}", markersize=4)[0]
            ax_k.fill_between(ks, low, high, color=line.get_color(), alpha=0.12)
    ax_k.set_xscale("log")
    ax_k.set_xlabel("k (latents in the sparse probe)")
    ax_k.set_ylabel("test accuracy (95% CI)")
    ax_k.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out)


def summary_markdown(
    tables: dict[str, list[dict]],
    comparisons: dict[str, list[dict]],
    sparse: list[dict],
    counts: dict[str, dict[str, int]],
    main: str,
    training: dict[str, dict[str, Any]] | None = None,
    family: Family | None = None,
) -> str:
    """``summary.md``: documents per group, the SAEs and their training text (``training``:
    SAE name -> the summary of its finetuning text), the Table-1 layout of each variant, the
    paired comparisons and k-sparse probing."""
    lines = [
        "# Debiasing case study (SHIFT latent ablation)",
        "",
        "A = first profession, B = second; the biased probe saw only A-male and B-female training documents.",
        "Worst-group accuracy is the lowest profession accuracy over the four (profession, gender) test groups.",
        "Every SAE method is reported at the N chosen on the validation documents; all numbers are on the",
        "test documents (real articles only), in % with a 95% interval (document bootstrap; with several",
        "training seeds, seed spread plus document variance). Gender accuracy: of a gender probe trained on",
        "unablated documents (frozen) and of one retrained on the ablated training documents (50 = no gender",
        "information left).",
        "",
        "Documents per (profession/gender) group:",
        "",
        "| part | " + " | ".join(next(iter(counts.values()))) + " |",
        "|---|" + "---|" * len(next(iter(counts.values()))),
    ]
    lines += [f"| {part} | " + " | ".join(str(n) for n in row.values()) + " |" for part, row in counts.items()]
    in_variants = {
        sae: [v for v, rows in tables.items() if any(r["sae"] == sae for r in rows)]
        for sae in dict.fromkeys(r["sae"] for rows in tables.values() for r in rows if r["sae"] != "-")
    }
    lines += [
        "",
        "## SAEs",
        "",
        "The biography SSAEs and the swap control are each training seed's GSAE finetuned by one recipe (the",
        "same steps, tokens and tilt) on the text named; the swap control separates finetuning on biographies",
        "from finetuning on gender-swapped pairs. Their text: documents (real + gender-swapped copies),",
        "characters, and gendered words (those the swap changes) per 1,000 characters.",
        "",
        "| SAE | trained on | variants | documents | characters | gendered words / 1k chars |",
        "|---|---|---|---|---|---|",
    ]
    for sae, variants in in_variants.items():
        info = (training or {}).get(sae)
        text = (
            f"{info['real']} + {info['copies']} | {info['characters']:,} | {info['gendered_words_per_1000_characters']}"
            if info
            else " | | "
        )
        lines.append(f"| {sae} | {sae_training(sae)} | {', '.join(variants)} | {text} |")
    for variant, rows in tables.items():
        title = "with counterfactual copies in training" if variant == "copies" else "real documents only in training"
        saes = [s for s in in_variants if variant in in_variants[s]]
        biography = next((n for n in BIOGRAPHY_SSAES if n in saes), None)
        lines += [
            "",
            f"## Table 1 layout - {title}" + (" (main)" if variant == main else ""),
            "",
            f"SAEs: {', '.join(saes)}" + (f"; the biography SSAE is {biography}." if biography else "."),
            "",
            "| method | N | seeds | profession | gender (frozen) | gender (retrained) | worst group "
            "| paper: prof / gen / worst |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            paper = " / ".join(f"{v:.1f}" for v in r["paper"]) if r["paper"] else ""
            lines.append(
                f"| {r['method']} | {r['n_latents'] or ''} | {r['seeds']} | {_cell(r, 'profession_acc')} | "
                f"{_cell(r, 'gender_acc_frozen')} | {_cell(r, 'gender_acc_retrained')} | "
                f"{_cell(r, 'worst_group_acc')} | {paper} |"
            )
    for variant, rows in comparisons.items():
        lines += [
            "",
            f"Paired comparisons ({variant}; worst-group accuracy, points, test documents and seeds paired; the",
            "declared comparison of `evaluation.primary` first, the rest exploratory and never called findings):",
            "",
        ]
        if variant == main:
            made = {(r["sae"], r["reference"], PRIMARY_METRIC[r["method"]]) for r in rows}
            for entry in (family or Family()).primary:
                if (entry["run"], entry["reference_run"], entry["metric"]) not in made:
                    lines.append(f"- **primary** {entry['label']}: not computed (no such SAE in this run)")
        for r in sorted(rows, key=lambda r: r["role"] != "primary"):
            lines.append(f"- {comparison_line(r)}")
    lines += [
        "",
        "Paper: Pythia-70M on Bias in Bios (professor vs nurse, ~thousands of biographies); a different",
        "model and data, shown for orientation only.",
        "",
        f"## k-sparse probing ({main})",
        "",
        "| SAE | target | k | seeds | test accuracy |",
        "|---|---|---|---|---|",
    ]
    for r in sparse:
        lines.append(f"| {r['sae']} | {r['target']} | {r['k']} | {r['seeds']} | {_cell(r, 'accuracy')} |")
    return "\n".join(lines) + "\n"

"""Debiasing case study (SHIFT, Marks et al.; scored as in SAEBench SCR; laid out as Table 1
of the SSAE paper): remove gender information from a profession probe by zero-ablating SAE
latents, with the general SAE, the biography SSAE and an off-domain SSAE, every SAE at each
training seed.

Per document: the hooked layer's residual stream over its first window (BOS excluded),
mean-pooled (``x``), and each SAE's latent activations mean-pooled the same way (``a``).
Splits and the biased training set come from :mod:`ssae_steps.debias.bios`; every method is run
twice, with and without the counterfactual copies in its training data (test set: real
documents only, the same for both).

1. Biased probe: logistic regression for profession on ``x`` of the biased training set
   (profession A always male, B always female).
2. Gender latents: ``effect_f = delta_f * (w . d_f)`` with ``w`` the biased probe's weight
   (raw units), ``d_f`` latent f's decoder row and ``delta_f`` the male-minus-female
   difference of mean ``a_f`` *within each profession*, averaged over the professions, on
   the training documents (so profession does not masquerade as gender). The top N by
   ``|effect_f|`` are chosen.
3. Ablation: ``x' = x - sum_{f in S} a_f d_f``. The probe reads the hooked layer itself and
   mean-pooling is linear, so this equals pooling ``decode(z with S zeroed) + (x - x_hat)``
   token by token: the SAE error term is kept.
4. Methods per SAE and N: SHIFT (the frozen biased probe on ablated inputs), SHIFT +
   retrain (probe retrained on the ablated biased training set), N random live latents,
   frozen and retrained (per-document correctness averaged over draws). Baselines: the
   original probe, an oracle probe trained on group-balanced training documents, and
   deleting gendered words from the text before the model runs, then retraining.
5. Gender information left: a gender probe trained on unablated group-balanced training
   documents (frozen) and one **retrained on the ablated training documents** - a frozen
   probe can fall to 0.5 because ablation shifts its logit while the information is still
   there; only the retrained probe measures what is left.
6. N is chosen per SAE and method on the validation documents (worst-group accuracy, mean
   over seeds); every reported number is on the test documents, with a 95% interval: the
   document bootstrap for one seed, seed spread plus document variance for several
   (:func:`ssae_steps.bootstrap.seed_interval`).
7. k-sparse probing (SAEBench): for profession and for gender, the k latents with the
   largest class difference of mean activation on the training documents, a probe on those
   k latents alone, accuracy on test.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssae_steps.bootstrap import Interval, paired_seed_difference, ratio, seed_interval
from ssae_steps.cli import add_device_arguments, device_from, save_figure
from ssae_steps.config import ConfigError, run_stage, to_mapping
from ssae_steps.debias.config import DebiasConfig
from ssae_steps.files import atomic_path, write_text

log = logging.getLogger("ssae.debias")
GENDERED = re.compile(
    r"\b(he|she|his|her|hers|him|himself|herself|mr|mrs|ms|miss|sir|madam|lady|lord|man|woman|men|women|"
    r"boy|girl|husband|wife|son|daughter|father|mother|brother|sister|grandfather|grandmother)\b",
    re.IGNORECASE,
)
NEUTRAL = {"actress": "actor", "queen": "monarch", "king": "monarch", "empress": "monarch", "emperor": "monarch"}
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


def delete_gendered_words(text: str) -> str:
    """The text-editing baseline: drop pronouns and gendered nouns, neutralise gendered titles."""
    text = re.sub(r"\b(" + "|".join(NEUTRAL) + r")\b", lambda m: NEUTRAL[m.group(0).lower()], text, flags=re.I)
    return re.sub(r"\s{2,}", " ", GENDERED.sub("", text)).strip()


@torch.no_grad()
def pooled_activations(
    model: Any, tokenizer: Any, texts: list[str], layer: int, context_length: int, batch_size: int, saes: dict
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean-pooled residuals ``[docs, d_model]`` and, per SAE, mean-pooled latents ``[docs, d_sae]``."""
    from tqdm import tqdm

    from ssae_steps.model import padded_batch, residual_stream

    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    offset = 1 if bos is not None else 0
    device = next(model.parameters()).device
    pooled, latents = [], {name: [] for name in saes}
    for start in tqdm(range(0, len(texts), batch_size), desc="pool", unit="batch", file=sys.stderr, mininterval=5):
        ids = tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]
        input_ids, mask = padded_batch([x[: context_length - offset] for x in ids], bos, pad)
        hidden = residual_stream(model, input_ids.to(device), mask.to(device), layer).float().cpu()
        for i, n in enumerate(mask.sum(1).tolist()):
            tokens = hidden[i, offset:n]
            pooled.append(tokens.mean(0).numpy())
            # Per document: encoding the whole batch at once was faster but peaked at 6.9 GB
            # (vs 2.6 GB) in the default run.
            for name, sae in saes.items():
                latents[name].append(sae.encode(tokens).mean(0).numpy())
    return np.stack(pooled), {name: np.stack(v) for name, v in latents.items()}


@dataclass
class Probe:
    """Logistic regression on standardised inputs; ``raw_weight`` is its weight on raw inputs."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def raw_weight(self) -> np.ndarray:
        return (self.weight / self.std).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (torch.from_numpy(x).float() - self.mean) / self.std
        return ((z @ self.weight + self.bias) > 0).numpy().astype(int)


def train_probe(x: np.ndarray, y: np.ndarray, l2: float, sample_weight: np.ndarray | None = None) -> Probe:
    """Deterministic full-batch L-BFGS fit of a weighted, L2-penalised logistic regression."""
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y).double()
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    z = (xt - mean) / std
    sw = torch.ones(len(y), dtype=torch.float64) if sample_weight is None else torch.from_numpy(sample_weight).double()
    sw = sw / sw.sum()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (sw * torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, yt, reduction="none")).sum()
        loss = loss + l2 * w.square().sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return Probe(mean.float(), std.float(), w.detach().float(), b.detach().float())


def balanced_weights(label: np.ndarray, gender: np.ndarray) -> np.ndarray:
    """Per-sample weights giving each (profession, gender) group the same total weight."""
    groups = label * 2 + gender
    counts = np.bincount(groups, minlength=4).astype(float)
    return 1.0 / counts[groups]


def gender_effects(
    a: np.ndarray, label: np.ndarray, gender: np.ndarray, decoder: np.ndarray, probe_weight: np.ndarray
) -> np.ndarray:
    """``delta_f * (w . d_f)``: within-profession male-minus-female mean latent activation,
    times the latent's direct effect on the probe logit."""
    deltas = [
        a[(label == p) & (gender == 0)].mean(0) - a[(label == p) & (gender == 1)].mean(0)
        for p in (0, 1)
        if ((label == p) & (gender == 0)).any() and ((label == p) & (gender == 1)).any()
    ]
    return np.mean(deltas, axis=0) * (decoder @ probe_weight)


def ablate(x: np.ndarray, a: np.ndarray, decoder: np.ndarray, latents: np.ndarray) -> np.ndarray:
    return x - a[:, latents] @ decoder[latents]


def worst_group_metric(correct: np.ndarray, label: np.ndarray, gender: np.ndarray) -> Any:
    """Bootstrap metric (see :mod:`ssae_steps.bootstrap`): the lowest per-group mean of
    per-document correctness over the four (profession, gender) groups."""
    masks = [((label == p) & (gender == g)).astype(np.float64) for p in (0, 1) for g in (0, 1)]
    groups = [ratio(correct * mask, mask) for mask in masks]
    return lambda weights: np.min([group(weights) for group in groups], axis=0)


def accuracy_metric(correct: np.ndarray) -> Any:
    return ratio(correct, np.ones(len(correct)))


@dataclass
class CaseData:
    """Pooled inputs of the case study; boolean masks select the splits."""

    x: np.ndarray
    label: np.ndarray
    gender: np.ndarray
    test: np.ndarray
    validation: np.ndarray
    train: np.ndarray
    biased: np.ndarray
    x_deleted: np.ndarray | None = None


@dataclass
class Outcome:
    """One method's per-document results: profession correctness on validation and test
    (means over draws for random latents) and gender correctness on test of the frozen
    and the retrained gender probe."""

    sae: str
    seed: int
    method: str
    n_latents: int
    validation: np.ndarray
    test: np.ndarray
    gender_frozen: np.ndarray
    gender_retrained: np.ndarray
    latents: list[int] = field(default_factory=list)

    def point(self, data: CaseData) -> dict[str, Any]:
        lt, gt = data.label[data.test], data.gender[data.test]
        lv, gv = data.label[data.validation], data.gender[data.validation]
        one = np.ones((1, int(data.test.sum())))
        out = {"sae": self.sae, "seed": self.seed, "method": self.method, "n_latents": self.n_latents}
        out["profession_acc"] = float(self.test.mean())
        for p in (0, 1):
            for g in (0, 1):
                out[f"acc_{'AB'[p]}_{'mf'[g]}"] = float(self.test[(lt == p) & (gt == g)].mean())
        out["worst_group_acc"] = float(worst_group_metric(self.test, lt, gt)(one)[0])
        out["gender_acc_frozen"] = float(self.gender_frozen.mean())
        out["gender_acc_retrained"] = float(self.gender_retrained.mean())
        out["validation_worst_group_acc"] = float(worst_group_metric(self.validation, lv, gv)(np.ones((1, len(lv))))[0])
        return out | {"latents": self.latents}


def run_case_study(
    data: CaseData, saes: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]], cfg: DebiasConfig, seed: int
) -> list[Outcome]:
    """Every method's outcome: baselines once (seed -1), then per SAE run (``(name, seed) ->
    (a, decoder)``), method and N."""
    train, biased, test, val = data.train, data.biased, data.test, data.validation
    y, g = data.label, data.gender
    balanced = balanced_weights(y[train], g[train])

    def fit_gender(x: np.ndarray) -> Probe:
        return train_probe(x[train], g[train], cfg.probe_l2, balanced)

    probe = train_probe(data.x[biased], y[biased], cfg.probe_l2)
    gender_probe = fit_gender(data.x)

    def outcome(sae: str, run_seed: int, method: str, n: int, p: Probe, x: np.ndarray, retrained: Probe) -> Outcome:
        return Outcome(
            sae, run_seed, method, n,
            validation=(p.predict(x[val]) == y[val]).astype(float),
            test=(p.predict(x[test]) == y[test]).astype(float),
            gender_frozen=(gender_probe.predict(x[test]) == g[test]).astype(float),
            gender_retrained=(retrained.predict(x[test]) == g[test]).astype(float),
        )  # fmt: skip

    oracle = train_probe(data.x[train], y[train], cfg.probe_l2, balanced)
    out = [
        outcome("-", -1, "original probe", 0, probe, data.x, gender_probe),
        outcome("-", -1, "oracle probe", 0, oracle, data.x, gender_probe),
    ]
    if data.x_deleted is not None:
        xd = data.x_deleted
        deleted = train_probe(xd[biased], y[biased], cfg.probe_l2)
        out.append(outcome("-", -1, "delete gendered words + retrain", 0, deleted, xd, fit_gender(xd)))
    rng = np.random.default_rng(seed)
    for (name, run_seed), (a, decoder) in saes.items():
        effects = gender_effects(a[train], y[train], g[train], decoder, probe.raw_weight)
        ranked = np.argsort(-np.abs(effects), kind="stable")
        alive = np.flatnonzero((a > 0).any(0))
        for n in cfg.n_latents:
            xa = ablate(data.x, a, decoder, ranked[:n])
            gender_after = fit_gender(xa)
            retrained = train_probe(xa[biased], y[biased], cfg.probe_l2)
            for method, p in (("SHIFT", probe), ("SHIFT + retrain", retrained)):
                out.append(outcome(name, run_seed, method, n, p, xa, gender_after))
                out[-1].latents = ranked[:n].tolist()
            draws: dict[str, list[Outcome]] = {"random latents": [], "random latents + retrain": []}
            for _ in range(cfg.random_repeats):
                xr = ablate(data.x, a, decoder, rng.choice(alive, min(n, len(alive)), replace=False))
                gender_r = fit_gender(xr)
                draws["random latents"].append(outcome(name, run_seed, "random latents", n, probe, xr, gender_r))
                refit = train_probe(xr[biased], y[biased], cfg.probe_l2)
                draws["random latents + retrain"].append(
                    outcome(name, run_seed, "random latents + retrain", n, refit, xr, gender_r)
                )
            for method, rows in draws.items():
                out.append(
                    Outcome(
                        name, run_seed, method, n,
                        **{k: np.mean([getattr(r, k) for r in rows], axis=0)
                           for k in ("validation", "test", "gender_frozen", "gender_retrained")},
                    )
                )  # fmt: skip
    return out


def sparse_probe(a: np.ndarray, target: np.ndarray, data: CaseData, k: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` latents with the largest class difference of mean activation on the
    training documents, and the per-document test correctness of a group-balanced probe on
    them alone."""
    train = data.train
    diff = a[train][target[train] == 1].mean(0) - a[train][target[train] == 0].mean(0)
    top = np.argsort(-np.abs(diff), kind="stable")[:k]
    probe = train_probe(a[train][:, top], target[train], l2, balanced_weights(data.label[train], data.gender[train]))
    return top, (probe.predict(a[data.test][:, top]) == target[data.test]).astype(float)


def sparse_probing(
    data: CaseData, saes: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]], cfg: DebiasConfig
) -> list[dict[str, Any]]:
    """k-sparse probing rows: per SAE run, target (profession, gender) and k."""
    rows = []
    for (name, run_seed), (a, _) in saes.items():
        for target_name, target in (("profession", data.label), ("gender", data.gender)):
            for k in cfg.sparse_probing_k:
                top, correct = sparse_probe(a, target, data, k, cfg.probe_l2)
                rows.append(
                    {"sae": name, "seed": run_seed, "target": target_name, "k": k,
                     "correct": correct, "latents": top.tolist()}
                )  # fmt: skip
    return rows


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
        rows.append(row | {"sae": sae, "base_method": method, "paper": PAPER_TABLE_1.get(label)})
    order = {m: i for i, m in enumerate(SAE_METHODS)}
    saes = list(dict.fromkeys(r["sae"] for r in rows if r["sae"] != "-"))
    return sorted(rows, key=lambda r: (r["sae"] != "-", saes.index(r["sae"]) if r["sae"] in saes else -1,
                                       order.get(r["base_method"], -1)))  # fmt: skip


COMPARED = (("ssae_bios", "gsae"), ("ssae_bios", None))
"""Paired comparisons: the biography SSAE against the GSAE and against the off-domain SSAE
(``None``: whichever other SSAE the run has)."""


def paired_comparisons(outcomes: list[Outcome], data: CaseData, cfg: DebiasConfig, seed: int) -> list[dict]:
    """Worst-group accuracy of SAE a minus SAE b for SHIFT and SHIFT + retrain, each at its
    validation-chosen N, paired over test documents and training seeds (seed s with seed s)."""
    lt, gt = data.label[data.test], data.gender[data.test]
    chosen = choose_n(outcomes, data)
    names = list(dict.fromkeys(o.sae for o in outcomes if o.sae != "-"))
    rows = []
    for a, b in COMPARED:
        b = b or next((n for n in names if n.startswith("ssae_") and n != a), None)
        if a not in names or b not in names:
            continue
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
            value = paired_seed_difference(pairs, int(data.test.sum()), cfg.bootstrap_samples, seed)
            rows.append(
                {"method": method, "sae": a, "reference": b, "seeds": len(seeds), "difference": value.estimate,
                 "ci_low": value.low, "ci_high": value.high,
                 "finding": bool(not np.isnan(value.low) and (value.low > 0 or value.high < 0))}
            )  # fmt: skip
    return rows


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


def _plot(tables: dict[str, list[dict]], points: list[dict], sparse: list[dict], main: str, out: Path) -> None:
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


def _summary(
    tables: dict[str, list[dict]],
    comparisons: dict[str, list[dict]],
    sparse: list[dict],
    counts: dict[str, dict[str, int]],
    main: str,
) -> str:
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
    for variant, rows in tables.items():
        title = "with counterfactual copies in training" if variant == "copies" else "real documents only in training"
        lines += [
            "",
            f"## Table 1 layout - {title}" + (" (main)" if variant == main else ""),
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
            f"Paired comparisons ({variant}; worst-group accuracy, points, test documents and seeds paired):",
            "",
        ]
        for r in rows:
            verdict = "" if r["finding"] else ": no clear difference"
            lines.append(
                f"- {r['method']}: {r['sae']} - {r['reference']} {100 * r['difference']:+.1f} "
                f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] ({r['seeds']} seeds){verdict}"
            )
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


def case_data(docs: Any, x: np.ndarray, x_deleted: np.ndarray | None, real_only: bool) -> CaseData:
    """The case study's inputs from the biographies table; ``real_only`` drops the
    counterfactual copies from every training set."""
    copy = docs["counterfactual"].to_numpy() if "counterfactual" in docs else np.zeros(len(docs), bool)
    keep = ~copy if real_only else np.ones(len(docs), bool)
    column = "biased_train_real" if real_only and "biased_train_real" in docs else "biased_train"
    return CaseData(
        x=x,
        label=docs["label"].to_numpy().astype(int),
        gender=(docs["gender"] == "female").to_numpy().astype(int),
        test=(docs["split"] == "heldout").to_numpy() & ~copy,
        validation=(docs["split"] == "validation").to_numpy(),
        train=(docs["split"] == "train").to_numpy() & keep,
        biased=docs[column].to_numpy() & keep,
        x_deleted=x_deleted,
    )


def debias(
    cfg: DebiasConfig,
    table: str | Path,
    sae_dirs: dict[tuple[str, int], str],
    model_dir: str | Path,
    layer: int,
    context_length: int,
    seed: int,
    out_dir: str | Path,
    device: str = "cpu",
) -> dict[str, list[dict[str, Any]]]:
    import pandas as pd
    import pyarrow.parquet as pq

    from ssae_steps.model import load_model
    from ssae_steps.sae.autoencoder import load_sae

    out_dir = Path(out_dir)
    docs = pq.read_table(table).to_pandas()
    model, tokenizer = load_model(model_dir, device)
    saes = {key: load_sae(path) for key, path in sae_dirs.items()}
    texts = docs["text"].tolist()
    named = {f"{name}:{s}": sae for (name, s), sae in saes.items()}
    x, latents = pooled_activations(model, tokenizer, texts, layer, context_length, cfg.batch_size, named)
    x_deleted, _ = pooled_activations(
        model, tokenizer, [delete_gendered_words(t) for t in texts], layer, context_length, cfg.batch_size, {}
    )
    inputs = {
        key: (latents[f"{key[0]}:{key[1]}"], (sae.W_dec / sae.input_scale).detach().numpy())
        for key, sae in saes.items()
    }
    variants = ["copies", "real"] if "counterfactual" in docs and docs["counterfactual"].any() else ["real"]
    tables, comparisons, points, sparse_rows = {}, {}, [], []
    for variant in variants:
        data = case_data(docs, x, x_deleted, real_only=variant == "real")
        log.info("%s: %d biased training, %d training, %d validation, %d test documents", variant,
                 data.biased.sum(), data.train.sum(), data.validation.sum(), data.test.sum())  # fmt: skip
        outcomes = run_case_study(data, inputs, cfg, seed)
        points += [o.point(data) | {"variant": variant} for o in outcomes]
        tables[variant] = table_1(outcomes, data, cfg, seed)
        comparisons[variant] = paired_comparisons(outcomes, data, cfg, seed)
        if variant == variants[0]:
            sparse_rows = sparse_probing(data, inputs, cfg)
            sparse = sparse_table(sparse_rows, data, cfg, seed)
    main = variants[0]
    frames = {
        "results.csv": pd.DataFrame(points),
        "table1.csv": pd.DataFrame([r | {"variant": v} for v, rows in tables.items() for r in rows]),
        "comparisons.csv": pd.DataFrame([r | {"variant": v} for v, rows in comparisons.items() for r in rows]),
        "sparse_probing.csv": pd.DataFrame(
            [
                {k: v for k, v in r.items() if k != "correct"} | {"accuracy": float(r["correct"].mean())}
                for r in sparse_rows
            ]
        ),
    }
    for name, frame in frames.items():
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    _plot(tables, points, sparse, main, out_dir / "worst_group.png")
    counts = {}
    copy = docs["counterfactual"].to_numpy() if "counterfactual" in docs else np.zeros(len(docs), bool)
    split = docs["split"].to_numpy()
    for part, mask in (
        ("test (real)", split == "heldout"),
        ("validation", split == "validation"),
        ("training, real", (split == "train") & ~copy),
        ("training, copies", (split == "train") & copy),
        ("biased training", docs["biased_train"].to_numpy()),
    ):
        sub = docs[mask]
        counts[part] = {
            f"{p}/{g}": int(((sub["profession"] == p) & (sub["gender"] == g)).sum())
            for p in cfg.data.professions for g in ("male", "female")
        }  # fmt: skip
    write_text(
        out_dir / "summary.md",
        _summary(tables, comparisons, sparse, counts, main) + f"\nConfig: `{json.dumps(to_mapping(cfg))}`\n",
    )
    return tables


def parse_sae_args(pairs: list[str]) -> dict[tuple[str, int], str]:
    """``NAME:SEED=DIR`` (or ``NAME=DIR`` for seed 0) -> ``{(NAME, SEED): DIR}``."""
    out = {}
    for pair in pairs:
        key, _, path = pair.partition("=")
        name, _, run_seed = key.partition(":")
        if not path or not name:
            raise ConfigError(f"--saes: expected NAME:SEED=DIR, got {pair!r}")
        out[(name, int(run_seed or 0))] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="JSON object of the debias config section")
    parser.add_argument("--table", required=True)
    parser.add_argument("--saes", nargs="+", required=True, help="NAME:SEED=sae_dir")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--hook-layer", type=int, required=True)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", required=True)
    add_device_arguments(parser)
    args = parser.parse_args(argv)

    def body() -> None:
        device = device_from(args)
        debias(
            DebiasConfig.from_dict(json.loads(args.params)),
            args.table,
            parse_sae_args(args.saes),
            args.model_dir,
            args.hook_layer,
            args.context_length,
            args.seed,
            args.out_dir,
            device,
        )

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())

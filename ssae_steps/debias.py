"""Debiasing case study (SHIFT-style, Marks et al.; scored as in SAEBench SCR): remove
gender information from a profession probe by zero-ablating SAE latents, and compare
worst-group accuracy with the general SAE and with the biography SSAE.

Per document: the hooked layer's residual stream over its first window (BOS excluded),
mean-pooled (``x``), and each SAE's latent activations mean-pooled the same way (``a``).

1. Biased probe: logistic regression for profession on ``x`` of the biased training set
   (profession A always male, B always female).
2. Gender latents: ``effect_f = delta_f * (w . d_f)`` with ``w`` the biased probe's weight
   (raw units), ``d_f`` latent f's decoder row and ``delta_f`` the male-minus-female
   difference of mean ``a_f`` *within each profession*, averaged over the two professions,
   on all non-test documents (so profession does not masquerade as gender). The top N by
   ``|effect_f|`` are chosen.
3. Ablation: ``x' = x - sum_{f in S} a_f d_f``. The probe reads the hooked layer itself and
   mean-pooling is linear, so this equals pooling ``decode(z with S zeroed) + (x - x_hat)``
   token by token: the SAE error term is kept.
4. Scores on the balanced test set: profession accuracy, accuracy per (profession,
   gender) group and the worst of them, and gender accuracy of a gender probe (trained on
   group-balanced non-test documents) on the same ablated activations (0.5 = no gender
   information left). Methods per SAE and N: ablate (frozen probe), ablate + retrain (probe
   retrained on ablated biased training data), random N latents (frozen, mean over
   repeats). Baselines: the original probe, an oracle probe trained on group-balanced
   non-test documents, and deleting gendered words from the text before the model runs,
   then retraining.
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

from ssae_steps._cli import add_device_arguments, device_from, save_figure
from ssae_steps._config import ConfigError, from_mapping, require_at_least, run_stage, to_mapping
from ssae_steps._io import atomic_path, write_text
from ssae_steps.bios import BiosConfig

log = logging.getLogger("ssae.debias")
GENDERED = re.compile(
    r"\b(he|she|his|her|hers|him|himself|herself|mr|mrs|ms|miss|sir|madam|lady|lord|man|woman|men|women|"
    r"boy|girl|husband|wife|son|daughter|father|mother|brother|sister|grandfather|grandmother)\b",
    re.IGNORECASE,
)
NEUTRAL = {"actress": "actor", "queen": "monarch", "king": "monarch", "empress": "monarch", "emperor": "monarch"}


@dataclass
class DebiasConfig:
    data: BiosConfig = field(default_factory=BiosConfig)
    n_latents: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100])
    """Numbers of gender latents ablated."""
    random_repeats: int = 5
    """Random-latent baseline: draws per N."""
    probe_l2: float = 0.01
    """L2 penalty of the logistic-regression probes (on standardised inputs)."""
    batch_size: int = 16
    """Documents per forward pass."""
    ssae_tilt: float = 0.0
    """Tilted ERM temperature of the biography SSAE (finetuned from the GSAE), set here
    rather than taken from training.ssae.tilts, so that a tilt sweep leaves it alone."""

    def validate(self, where: str) -> None:
        require_at_least(where, 1, random_repeats=self.random_repeats, batch_size=self.batch_size)
        if self.ssae_tilt < 0:
            raise ConfigError(f"{where}.ssae_tilt: must be >= 0, got {self.ssae_tilt}")
        require_at_least(where, 1, **{f"n_latents[{i}]": n for i, n in enumerate(self.n_latents)})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "debias") -> DebiasConfig:
        return from_mapping(cls, data, where)


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


def scores(probe: Probe, gender_probe: Probe, x: np.ndarray, label: np.ndarray, gender: np.ndarray) -> dict:
    pred = probe.predict(x)
    out = {"profession_acc": float((pred == label).mean())}
    groups = {}
    for p in (0, 1):
        for g in (0, 1):
            mask = (label == p) & (gender == g)
            groups[f"acc_{'AB'[p]}_{'mf'[g]}"] = float((pred[mask] == label[mask]).mean())
    out |= groups
    out["worst_group_acc"] = min(groups.values())
    out["gender_acc"] = float((gender_probe.predict(x) == gender).mean())
    return out


@dataclass
class CaseData:
    """Pooled inputs of the case study; masks select the splits."""

    x: np.ndarray
    label: np.ndarray
    gender: np.ndarray
    test: np.ndarray
    biased: np.ndarray
    x_deleted: np.ndarray | None = None


def run_case_study(
    data: CaseData, saes: dict[str, tuple[np.ndarray, np.ndarray]], cfg: DebiasConfig, seed: int
) -> list[dict[str, Any]]:
    """Rows of results: baselines once, then per SAE (``name -> (a, decoder)``) and N."""
    train, test, pool = data.biased, data.test, ~data.test
    y, g = data.label, data.gender
    biased = train_probe(data.x[train], y[train], cfg.probe_l2)
    gender_probe = train_probe(data.x[pool], g[pool], cfg.probe_l2, balanced_weights(y[pool], g[pool]))
    oracle = train_probe(data.x[pool], y[pool], cfg.probe_l2, balanced_weights(y[pool], g[pool]))

    def row(sae: str, method: str, n: int, probe: Probe, x: np.ndarray, gprobe: Probe = gender_probe) -> dict:
        return {"sae": sae, "method": method, "n_latents": n, **scores(probe, gprobe, x[test], y[test], g[test])}

    rows = [row("-", "original probe", 0, biased, data.x), row("-", "oracle probe", 0, oracle, data.x)]
    if data.x_deleted is not None:
        xd = data.x_deleted
        deleted = train_probe(xd[train], y[train], cfg.probe_l2)
        gprobe_d = train_probe(xd[pool], g[pool], cfg.probe_l2, balanced_weights(y[pool], g[pool]))
        rows.append(row("-", "delete gendered words + retrain", 0, deleted, xd, gprobe_d))
    rng = np.random.default_rng(seed)
    for name, (a, decoder) in saes.items():
        effects = gender_effects(a[pool], y[pool], g[pool], decoder, biased.raw_weight)
        ranked = np.argsort(-np.abs(effects), kind="stable")
        alive = np.flatnonzero((a > 0).any(0))
        for n in cfg.n_latents:
            chosen = ranked[:n]
            xa = ablate(data.x, a, decoder, chosen)
            rows.append(row(name, "ablate", n, biased, xa) | {"latents": chosen.tolist()})
            retrained = train_probe(xa[train], y[train], cfg.probe_l2)
            rows.append(row(name, "ablate + retrain", n, retrained, xa))
            draws = [
                row(
                    name,
                    "random latents",
                    n,
                    biased,
                    ablate(data.x, a, decoder, rng.choice(alive, min(n, len(alive)), replace=False)),
                )
                for _ in range(cfg.random_repeats)
            ]
            rows.append({**draws[0], **{k: float(np.mean([d[k] for d in draws])) for k in draws[0] if "acc" in k}})
    return rows


def _plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_worst, ax_gender) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"ablate": "o-", "ablate + retrain": "s--", "random latents": "x:"}
    for sae in dict.fromkeys(r["sae"] for r in rows if r["sae"] != "-"):
        for method, style in styles.items():
            part = sorted((r for r in rows if r["sae"] == sae and r["method"] == method), key=lambda r: r["n_latents"])
            ns = [r["n_latents"] for r in part]
            ax_worst.plot(ns, [r["worst_group_acc"] for r in part], style, label=f"{sae}: {method}")
            ax_gender.plot(ns, [r["gender_acc"] for r in part], style, label=f"{sae}: {method}")
    for r in (r for r in rows if r["sae"] == "-"):
        ax_worst.axhline(r["worst_group_acc"], linestyle=":", color="grey")
        ax_worst.annotate(r["method"], (1, r["worst_group_acc"]), fontsize=7, color="grey")
    ax_worst.set_ylabel("worst-group profession accuracy")
    ax_gender.set_ylabel("gender-probe accuracy (0.5 = none left)")
    for ax in (ax_worst, ax_gender):
        ax.set_xscale("log")
        ax.set_xlabel("gender latents ablated (N)")
    ax_worst.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out)


def _summary(rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    cols = ["sae", "method", "n_latents", "profession_acc", "gender_acc", "worst_group_acc"]
    lines = [
        "# Debiasing case study (SHIFT-style latent ablation)",
        "",
        f"Documents: {counts}. A = first profession, B = second; the biased probe saw only A-male and B-female.",
        "Worst-group accuracy is the lowest profession accuracy over the four (profession, gender) test groups.",
        "",
    ]
    sae_rows = [r for r in rows if r["method"] == "ablate + retrain"]
    if sae_rows:
        best = {}
        for r in sae_rows:
            if r["sae"] not in best or r["worst_group_acc"] > best[r["sae"]]["worst_group_acc"]:
                best[r["sae"]] = r
        original = next(r for r in rows if r["method"] == "original probe")
        lines += ["## Findings (computed)", ""]
        lines.append(f"- Original probe: worst-group accuracy {original['worst_group_acc']:.3f}.")
        for sae, r in best.items():
            ablated = sorted(
                (x for x in rows if x["sae"] == sae and x["method"] == "ablate"), key=lambda x: x["n_latents"]
            )
            removed = next((x["n_latents"] for x in ablated if x["gender_acc"] <= 0.6), None)
            lines.append(
                f"- {sae}: best worst-group accuracy after ablation + retraining {r['worst_group_acc']:.3f} "
                f"at N={r['n_latents']} (gender-probe accuracy {r['gender_acc']:.3f}); gender-probe accuracy "
                + (f"falls to <= 0.6 from N={removed} on." if removed else "stays above 0.6 for every N tried.")
            )
        lines.append("")
    lines += ["## All results", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def debias(
    cfg: DebiasConfig,
    table: str | Path,
    sae_dirs: dict[str, str],
    model_dir: str | Path,
    layer: int,
    context_length: int,
    seed: int,
    out_dir: str | Path,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    import pandas as pd
    import pyarrow.parquet as pq

    from ssae_steps.model import load_model
    from ssae_steps.sae import load_sae

    out_dir = Path(out_dir)
    docs = pq.read_table(table).to_pandas()
    model, tokenizer = load_model(model_dir, device)
    saes = {name: load_sae(path) for name, path in sae_dirs.items()}
    texts = docs["text"].tolist()
    x, latents = pooled_activations(model, tokenizer, texts, layer, context_length, cfg.batch_size, saes)
    x_deleted, _ = pooled_activations(
        model, tokenizer, [delete_gendered_words(t) for t in texts], layer, context_length, cfg.batch_size, {}
    )
    data = CaseData(
        x=x,
        label=docs["label"].to_numpy().astype(int),
        gender=(docs["gender"] == "female").to_numpy().astype(int),
        test=(docs["split"] == "heldout").to_numpy(),
        biased=docs["biased_train"].to_numpy(),
        x_deleted=x_deleted,
    )
    decoders = {name: (sae.W_dec / sae.input_scale).detach().numpy() for name, sae in saes.items()}
    rows = run_case_study(data, {n: (latents[n], decoders[n]) for n in saes}, cfg, seed)
    frame = pd.DataFrame(rows)
    with atomic_path(out_dir / "results.csv") as tmp:
        frame.to_csv(tmp, index=False)
    _plot(rows, out_dir / "worst_group.png")
    groups = docs.groupby(["profession", "gender", "split"]).size()
    counts = {"/".join(k): int(v) for k, v in groups.items()}
    write_text(out_dir / "summary.md", _summary(rows, counts) + f"\nConfig: `{json.dumps(to_mapping(cfg))}`\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="JSON object of the debias config section")
    parser.add_argument("--table", required=True)
    parser.add_argument("--saes", nargs="+", required=True, help="NAME=sae_dir")
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
            dict(pair.split("=", 1) for pair in args.saes),
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

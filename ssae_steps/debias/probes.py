"""The probe machinery of the debiasing case study (:mod:`ssae_steps.debias.case_study` has
the method): pooled inputs, logistic-regression probes, gender latents and their ablation,
the per-document outcome of a method and the bootstrap metrics over it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ssae_steps.bootstrap import ratio

GENDERED = re.compile(
    r"\b(he|she|his|her|hers|him|himself|herself|mr|mrs|ms|miss|sir|madam|lady|lord|man|woman|men|women|"
    r"boy|girl|husband|wife|son|daughter|father|mother|brother|sister|grandfather|grandmother)\b",
    re.IGNORECASE,
)
NEUTRAL = {"actress": "actor", "queen": "monarch", "king": "monarch", "empress": "monarch", "emperor": "monarch"}


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


def sparse_probe(a: np.ndarray, target: np.ndarray, data: CaseData, k: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` latents with the largest class difference of mean activation on the
    training documents, and the per-document test correctness of a group-balanced probe on
    them alone."""
    train = data.train
    diff = a[train][target[train] == 1].mean(0) - a[train][target[train] == 0].mean(0)
    top = np.argsort(-np.abs(diff), kind="stable")[:k]
    probe = train_probe(a[train][:, top], target[train], l2, balanced_weights(data.label[train], data.gender[train]))
    return top, (probe.predict(a[data.test][:, top]) == target[data.test]).astype(float)

"""Debiasing case study (SHIFT, Marks et al.; scored as in SAEBench SCR; laid out as Table 1
of the SSAE paper): remove gender information from a profession probe by zero-ablating SAE
latents, with the general SAE, the biography SSAEs, the swap control and an off-domain
SSAE, every SAE at each training seed (their training text:
:mod:`ssae_steps.debias.finetune_text`).

Per document: the hooked layer's residual stream over its first window (BOS excluded),
mean-pooled (``x``), and each SAE's latent activations mean-pooled the same way (``a``).
Splits and the biased training set come from :mod:`ssae_steps.debias.bios`; every method is run
in two variants (test set: real documents only, the same for both): ``copies``, with the
counterfactual copies in its training data and every SAE, and ``real``, with real documents
only and no SAE finetuned on swapped text (:data:`SWAPPED_TEXT`; its biography SSAE is the
one finetuned on real articles only).

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

This module runs the methods (:func:`run_case_study`, :func:`sparse_probing`) and the
stage; the probes, ablation and metrics are in :mod:`ssae_steps.debias.probes`, the
tables, plot and summary in :mod:`ssae_steps.debias.report`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ssae_steps.cli import run
from ssae_steps.config import ConfigError, to_mapping
from ssae_steps.debias.config import DebiasConfig
from ssae_steps.debias.probes import (
    CaseData,
    Outcome,
    Probe,
    ablate,
    balanced_weights,
    case_data,
    delete_gendered_words,
    gender_effects,
    pooled_activations,
    sparse_probe,
    train_probe,
)
from ssae_steps.debias.report import paired_comparisons, plot_results, sparse_table, summary_markdown, table_1
from ssae_steps.evals.family import Family
from ssae_steps.files import atomic_path, write_text

log = logging.getLogger("ssae.debias")


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


SWAPPED_TEXT = ("ssae_bios", "ssae_swap")
"""SAEs finetuned on gender-swapped text (where the biographies have counterfactual
copies): the biography SSAE of the main variant and the swap control. The "real" variant
leaves them out, so that none of its training data - probes, gender latents or SAE -
holds swapped text; its biography SSAE is ``ssae_bios_real``."""


def variant_saes(
    inputs: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]], variant: str, has_copies: bool
) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """The SAE runs a variant reports: every run in ``copies``; in ``real`` (with copies in
    the table) every run but those of :data:`SWAPPED_TEXT`."""
    if variant == "real" and has_copies:
        return {key: value for key, value in inputs.items() if key[0] not in SWAPPED_TEXT}
    return dict(inputs)


def run_variants(
    docs: Any,
    x: np.ndarray,
    x_deleted: np.ndarray | None,
    inputs: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]],
    cfg: DebiasConfig,
    seed: int,
    family: Family | None = None,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]], list[dict], list[dict], list[dict]]:
    """The case study of each variant - ``copies`` (copies in every training set; only with
    copies in the table) and ``real`` - on its SAE runs (:func:`variant_saes`): Table-1 rows
    and paired comparisons per variant, every point, and the k-sparse probing of the first
    variant (rows, table). ``family``: the run's primary comparisons (the debias ones are of
    the first variant)."""
    has_copies = "counterfactual" in docs and bool(docs["counterfactual"].any())
    variants = ["copies", "real"] if has_copies else ["real"]
    tables, comparisons, points, sparse_rows, sparse = {}, {}, [], [], []
    for variant in variants:
        data = case_data(docs, x, x_deleted, real_only=variant == "real")
        runs = variant_saes(inputs, variant, has_copies)
        log.info("%s: %d biased training, %d training, %d validation, %d test documents; SAEs %s", variant,
                 data.biased.sum(), data.train.sum(), data.validation.sum(), data.test.sum(),
                 sorted({name for name, _ in runs}))  # fmt: skip
        outcomes = run_case_study(data, runs, cfg, seed)
        points += [o.point(data) | {"variant": variant} for o in outcomes]
        tables[variant] = table_1(outcomes, data, cfg, seed)
        # Declared comparisons are of the main (first) variant; the other's rows are exploratory.
        declared = (family or Family()).of_study("debias") if variant == variants[0] else None
        comparisons[variant] = paired_comparisons(outcomes, data, cfg, seed, declared)
        if variant == variants[0]:
            sparse_rows = sparse_probing(data, runs, cfg)
            sparse = sparse_table(sparse_rows, data, cfg, seed)
    return tables, comparisons, points, sparse_rows, sparse


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
    training_text: dict[str, str | Path] | None = None,
    family: Family | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The stage: pool every document once, run the case study with and without the
    counterfactual copies, and write the tables, plot and summary into ``out_dir``.
    ``training_text``: SAE name -> the JSON summary of its finetuning text
    (:mod:`ssae_steps.debias.finetune_text`), shown in the summary."""
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
    tables, comparisons, points, sparse_rows, sparse = run_variants(docs, x, x_deleted, inputs, cfg, seed, family)
    variants = list(tables)
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
    plot_results(tables, points, sparse, main, out_dir / "worst_group.png")
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
    training = {name: json.loads(Path(path).read_text()) for name, path in (training_text or {}).items()}
    declared = (family or Family()).of_study("debias")
    write_text(
        out_dir / "summary.md",
        summary_markdown(tables, comparisons, sparse, counts, main, training, declared)
        + f"\nConfig: `{json.dumps(to_mapping(cfg))}`\n",
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


def parse_training_text(pairs: list[str]) -> dict[str, str]:
    """``NAME=JSON`` -> ``{NAME: JSON}``."""
    out = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if not name or not path:
            raise ConfigError(f"--training-text: expected NAME=JSON, got {pair!r}")
        out[name] = path
    return out


def debias_command(
    params: Annotated[DebiasConfig, "the debias config section"],
    table: Annotated[Path, "the biographies table"],
    saes: Annotated[list[str], "NAME:SEED=sae_dir"],
    model_dir: Path,
    hook_layer: int,
    out_dir: Path,
    context_length: int = 128,
    seed: int = 0,
    device: str = "auto",
    training_text: Annotated[list[str] | None, "NAME=JSON: the summary of an SAE's finetuning text"] = None,
    primary: Annotated[list[dict] | None, "JSON array: the run's primary comparisons (resolve_primary)"] = None,
) -> None:
    """Run the debiasing case study: ablate gender latents of each SAE from a profession probe."""
    debias(
        params, table, parse_sae_args(saes), model_dir, hook_layer, context_length, seed, out_dir, device,
        parse_training_text(training_text or []), Family(tuple(primary or ())),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run(debias_command, argv)


if __name__ == "__main__":
    sys.exit(main())

"""GSAE -> SSAE lineage: which latents a specialised SAE kept, moved or added, and which
general latents it dropped; plus the latent browser page for the pair
(:mod:`ssae_steps.latents.browser`).

Every SSAE latent is matched to the GSAE latent with the most similar decoder direction
(cosine of unit decoder rows in raw activation units), and its activations are correlated
with that GSAE latent's on the same held-out tokens (subdomain and general sets together).
Classes (thresholds in ``LineageConfig``):

- ``dead``: never fires on the held-out tokens (nothing to compare);
- ``kept``: cosine >= ``kept_cosine`` and activation correlation >= ``kept_correlation``
  - the same feature, barely moved;
- ``new``: cosine < ``new_cosine`` - a direction the GSAE does not have;
- ``drifted``: everything between - recognisably descended from a GSAE latent, but moved
  or firing on different tokens.

A live GSAE latent is ``dropped`` when no live SSAE latent has cosine >= ``new_cosine``
with it. Each concept (a tail concept of the evaluation, or a rare subdomain token type)
is attributed to the SSAE latent that detects it best (F1 over the held-out tokens),
and so to that latent's class.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from ssae_steps.cli import run, save_figure
from ssae_steps.config import to_mapping
from ssae_steps.files import atomic_path, write_text
from ssae_steps.latents.browser import browser_records, logit_lens, unembedding, write_browser
from ssae_steps.latents.config import LineageConfig
from ssae_steps.latents.contexts import firing_ratio
from ssae_steps.sae.autoencoder import SparseAutoencoder

log = logging.getLogger("ssae.lineage")
CLASSES = ("kept", "drifted", "new", "dead")
COLORS = {"kept": "#4c72b0", "drifted": "#dd8452", "new": "#55a868", "dead": "#8c8c8c", "dropped": "#c44e52"}


def decoder_directions(sae: SparseAutoencoder) -> torch.Tensor:
    """Unit decoder rows in raw activation units (``[d_sae, d_model]``)."""
    return torch.nn.functional.normalize((sae.W_dec / sae.input_scale).detach().float(), dim=1)


def _fires(codes: Any) -> np.ndarray:
    """Firings per latent (column) of a sparse code matrix."""
    return np.asarray((codes > 0).sum(0)).ravel()


def best_matches(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``, the row of ``b`` with the largest cosine, and that cosine."""
    index, cosine = [], []
    for start in range(0, len(a), chunk):
        sims = a[start : start + chunk] @ b.T
        value, arg = sims.max(dim=1)
        index.append(arg.numpy())
        cosine.append(value.numpy())
    return np.concatenate(index), np.concatenate(cosine)


def sparse_codes(sae: SparseAutoencoder, acts: np.ndarray, chunk: int = 4096) -> Any:
    """The SAE's latent activations on ``acts`` as a CSC matrix ``[rows, d_sae]``."""
    from scipy import sparse

    from ssae_steps.latents.contexts import latent_activations

    rows, latents, values = latent_activations(sae, acts, chunk)
    return sparse.csc_matrix((values.astype(np.float64), (rows, latents)), shape=(len(acts), sae.cfg.d_sae))


def paired_correlation(a: Any, b: Any, pairs: np.ndarray) -> np.ndarray:
    """Pearson correlation over rows of column ``i`` of ``a`` with column ``pairs[i]`` of
    ``b`` (NaN where either never fires)."""
    n = a.shape[0]
    b = b[:, pairs]
    mean_a, mean_b = np.asarray(a.mean(0)).ravel(), np.asarray(b.mean(0)).ravel()
    cross = np.asarray(a.multiply(b).sum(0)).ravel() / n - mean_a * mean_b
    var_a = np.asarray(a.multiply(a).sum(0)).ravel() / n - mean_a**2
    var_b = np.asarray(b.multiply(b).sum(0)).ravel() / n - mean_b**2
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cross / np.sqrt(var_a * var_b)
    corr[(var_a <= 0) | (var_b <= 0)] = np.nan
    return corr


def classify(cosine: np.ndarray, correlation: np.ndarray, live: np.ndarray, cfg: LineageConfig) -> np.ndarray:
    """Each SSAE latent's class (module docstring)."""
    out = np.full(len(cosine), "drifted", dtype=object)
    out[(cosine >= cfg.kept_cosine) & (np.nan_to_num(correlation, nan=-1.0) >= cfg.kept_correlation)] = "kept"
    out[cosine < cfg.new_cosine] = "new"
    out[~live] = "dead"
    return out


@dataclass
class Lineage:
    """Per SSAE latent (arrays indexed by latent) and the dropped GSAE latents."""

    match: np.ndarray
    cosine: np.ndarray
    same_index_cosine: np.ndarray
    correlation: np.ndarray
    live: np.ndarray
    classes: np.ndarray
    dropped: np.ndarray
    """GSAE latent ids."""
    dropped_cosine: np.ndarray
    """Their best cosine to a live SSAE latent."""


def lineage_of(gsae: SparseAutoencoder, ssae: SparseAutoencoder, g_codes: Any, s_codes: Any, cfg: LineageConfig):
    """Match, correlate and classify (module docstring); codes are both SAEs' activations
    on the same rows."""
    g_dirs, s_dirs = decoder_directions(gsae), decoder_directions(ssae)
    match, cosine = best_matches(s_dirs, g_dirs)
    same = np.full(len(s_dirs), np.nan)
    if len(s_dirs) == len(g_dirs):
        same = (s_dirs * g_dirs).sum(1).numpy()
    s_live, g_live = _fires(s_codes) > 0, _fires(g_codes) > 0
    correlation = paired_correlation(s_codes, g_codes, match)
    classes = classify(cosine, correlation, s_live, cfg)
    candidates = np.flatnonzero(g_live)
    dropped, dropped_cos = np.zeros(0, int), np.zeros(0)
    if s_live.any() and len(candidates):
        _, back = best_matches(g_dirs[candidates], s_dirs[s_live])
        lost = back < cfg.new_cosine
        dropped, dropped_cos = candidates[lost], back[lost]
    return Lineage(match, cosine, same, correlation, s_live, classes, dropped, dropped_cos)


def concept_owners(codes: Any, token_ids: np.ndarray, concepts: list[int], min_f1: float) -> dict[int, list[int]]:
    """Latent -> the concepts (token ids) it detects best with F1 >= ``min_f1``."""
    from ssae_steps.evals.tail import concept_detection

    if not concepts:
        return {}
    coo = codes.tocoo()
    found = concept_detection(coo.row, coo.col, token_ids, concepts, codes.shape[1])
    owners: dict[int, list[int]] = {}
    for d in found:
        if d["support"] and d["f1"] >= min_f1:
            owners.setdefault(d["latent"], []).append(d["token_id"])
    return owners


def _plot(table: Any, lin: Lineage, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_count, ax_cos, ax_spec) = plt.subplots(1, 3, figsize=(15, 4.2))
    counts = {c: int((table["class"] == c).sum()) for c in CLASSES} | {"dropped": len(lin.dropped)}
    bars = ax_count.bar(list(counts), list(counts.values()), color=[COLORS[c] for c in counts])
    ax_count.bar_label(bars)
    ax_count.set_ylabel("latents")
    ax_count.set_title("SSAE latents by lineage (dropped: GSAE latents)")
    live = table[table["class"] != "dead"]
    bins = np.linspace(-0.2, 1.0, 49)
    for c in ("kept", "drifted", "new"):
        ax_cos.hist(live.loc[live["class"] == c, "gsae_cosine"], bins=bins, color=COLORS[c], alpha=0.8, label=c)
    ax_cos.set_yscale("log")
    ax_cos.set_xlabel("decoder cosine to the nearest GSAE latent")
    ax_cos.legend()
    data = [np.log10(live.loc[live["class"] == c, "specificity"].to_numpy()) for c in ("kept", "drifted", "new")]
    ax_spec.boxplot([d if len(d) else [np.nan] for d in data], tick_labels=["kept", "drifted", "new"])
    ax_spec.axhline(0, color="grey", linestyle=":")
    ax_spec.set_ylabel("log10 subdomain / general firing rate")
    ax_spec.set_title("subdomain specificity")
    fig.tight_layout()
    save_figure(fig, out)


def _summary(table: Any, lin: Lineage, concepts: dict[str, dict[str, int]], cfg: LineageConfig, names: dict) -> str:
    n = len(table)
    lines = [
        f"# Lineage: `{names['ssae']}` from `{names['gsae']}`",
        "",
        f"Classes (thresholds: kept cosine >= {cfg.kept_cosine} and activation correlation >= "
        f"{cfg.kept_correlation}; new cosine < {cfg.new_cosine}; dead = no held-out firing):",
        "",
        "| class | latents | share |",
        "|---|---|---|",
    ]
    for c in CLASSES:
        k = int((table["class"] == c).sum())
        lines.append(f"| {c} | {k} | {k / n:.1%} |")
    live_g = int(names["gsae_live"])
    lines += [
        f"| dropped GSAE latents | {len(lin.dropped)} | {len(lin.dropped) / max(live_g, 1):.1%} of {live_g} live |",
        "",
        "Concepts attributed to the SSAE latent that detects them best (F1 over the held-out tokens):",
        "",
        "| concepts | " + " | ".join(CLASSES) + " | not detected |",
        "|---|" + "---|" * (len(CLASSES) + 1),
    ]
    for kind, row in concepts.items():
        lines.append(f"| {kind} | " + " | ".join(str(row.get(c, 0)) for c in (*CLASSES, "not detected")) + " |")
    lines += ["", "Open `browser.html` (from disk or the HTML report) to read the latents one by one.", ""]
    return "\n".join(lines)


def lineage(
    cfg: LineageConfig,
    gsae_dir: str | Path,
    ssae_dir: str | Path,
    sets: dict[str, str],
    model_dir: str | Path,
    tail_tokens: str | Path | None,
    token_types: str | Path | None,
    out_dir: str | Path,
    detect_f1: float = 0.5,
) -> Any:
    """Write ``latents.csv``, ``dropped.csv``, ``lineage.png``, ``summary.md`` and
    ``browser.html`` into ``out_dir``; returns the per-latent table."""
    import pandas as pd

    from ssae_steps.activations.sets import load_activation_set
    from ssae_steps.sae.autoencoder import load_sae

    out_dir = Path(out_dir)
    gsae, ssae = load_sae(gsae_dir), load_sae(ssae_dir)
    parts = {name: load_activation_set(path) for name, path in sets.items()}
    rows = {c: np.concatenate([p[c] for p in parts.values()]) for c in ("activation", "doc_id", "position", "token_id")}
    sub_rows = len(parts["subdomain"]["token_id"])
    g_codes, s_codes = sparse_codes(gsae, rows["activation"]), sparse_codes(ssae, rows["activation"])
    lin = lineage_of(gsae, ssae, g_codes, s_codes, cfg)

    gen_rows = len(rows["token_id"]) - sub_rows
    fires_sub, fires_gen = _fires(s_codes[:sub_rows]), _fires(s_codes[sub_rows:])
    g_fires_sub, g_fires_gen = _fires(g_codes[:sub_rows]), _fires(g_codes[sub_rows:])
    specificity = firing_ratio(fires_sub, sub_rows, fires_gen, gen_rows)
    sub_tokens = rows["token_id"][:sub_rows]
    concept_sets = {}
    if tail_tokens and Path(tail_tokens).exists():
        concept_sets["tail concepts"] = pd.read_csv(tail_tokens)["token_id"].astype(int).tolist()
    if token_types and Path(token_types).exists():
        concept_sets["subdomain token types (evaluated)"] = pd.read_csv(token_types)["token_id"].astype(int).tolist()
    concept_counts, concept_of = {}, {}
    for kind, ids in concept_sets.items():
        owners = concept_owners(s_codes[:sub_rows], sub_tokens, ids, detect_f1)
        counts = {c: 0 for c in (*CLASSES, "not detected")}
        for latent, owned in owners.items():
            counts[lin.classes[latent]] += len(owned)
            concept_of.setdefault(latent, []).extend(owned)
        counts["not detected"] = len(ids) - sum(len(v) for v in owners.values())
        concept_counts[kind] = counts

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    table = pd.DataFrame(
        {
            "latent": np.arange(ssae.cfg.d_sae),
            "class": lin.classes,
            "gsae_latent": lin.match,
            "gsae_cosine": lin.cosine,
            "same_index_cosine": lin.same_index_cosine,
            "correlation": lin.correlation,
            "fires_subdomain": fires_sub,
            "fires_general": fires_gen,
            "specificity": specificity,
            "concepts": [" ".join(tokenizer.decode([t]) for t in concept_of.get(i, [])) for i in range(ssae.cfg.d_sae)],
        }
    )
    with atomic_path(out_dir / "latents.csv") as tmp:
        table.to_csv(tmp, index=False)
    dropped = pd.DataFrame(
        {
            "gsae_latent": lin.dropped,
            "best_ssae_cosine": lin.dropped_cosine,
            "fires_subdomain": g_fires_sub[lin.dropped],
            "fires_general": g_fires_gen[lin.dropped],
            "specificity": firing_ratio(g_fires_sub, sub_rows, g_fires_gen, gen_rows)[lin.dropped],
        }
    )
    with atomic_path(out_dir / "dropped.csv") as tmp:
        dropped.to_csv(tmp, index=False)
    _plot(table, lin, out_dir / "lineage.png")
    names = {"gsae": str(gsae_dir), "ssae": str(ssae_dir), "gsae_live": int((g_fires_sub + g_fires_gen > 0).sum())}
    write_text(
        out_dir / "summary.md",
        _summary(table, lin, concept_counts, cfg, names) + f"\nConfig: `{json.dumps(to_mapping(cfg))}`\n",
    )

    index = {(d, int(p)): i for i, (d, p) in enumerate(zip(rows["doc_id"], rows["position"], strict=True))}
    unembed = unembedding(model_dir)
    live = np.flatnonzero(lin.live)
    s_lens = logit_lens(decoder_directions(ssae)[live], unembed, cfg.logit_tokens)
    g_lens = logit_lens(decoder_directions(gsae)[lin.dropped], unembed, cfg.logit_tokens)
    ssae_rows = table.iloc[live].rename(columns={"class": "cls"}).itertuples()
    records = [
        r | {"cls": src.cls, "match": int(src.gsae_latent), "cos": float(src.gsae_cosine),
             "corr": None if math.isnan(src.correlation) else float(src.correlation),
             "fs": int(src.fires_subdomain), "fg": int(src.fires_general), "spec": float(src.specificity),
             "concepts": src.concepts}
        for r, src in zip(browser_records("ssae", s_codes, live, rows, index, s_lens, cfg), ssae_rows, strict=True)
    ]  # fmt: skip
    records += [
        r | {"cls": "dropped", "match": None, "cos": float(src.best_ssae_cosine), "corr": None,
             "fs": int(src.fires_subdomain), "fg": int(src.fires_general), "spec": float(src.specificity),
             "concepts": ""}
        for r, src in zip(
            browser_records("gsae", g_codes, lin.dropped, rows, index, g_lens, cfg), dropped.itertuples(), strict=True
        )
    ]  # fmt: skip
    title = f"SSAE {'/'.join(Path(ssae_dir).parts[-4:-1])} vs GSAE {Path(gsae_dir).parent.name}"
    size = write_browser(records, tokenizer, out_dir / "browser.html", title, cfg.page_size, sub_rows, gen_rows)
    log.info("browser: %d latents, %.1f MB", len(records), size / 1e6)
    return table


def lineage_command(
    params: Annotated[LineageConfig, "the lineage config section"],
    gsae_dir: Path,
    ssae_dir: Path,
    subdomain_set: Annotated[Path, "held-out subdomain activation manifest"],
    general_set: Annotated[Path, "held-out general activation manifest"],
    model_dir: Path,
    out_dir: Path,
    tail_tokens: Annotated[Path | None, "the evaluation's tail concepts (csv)"] = None,
    token_types: Annotated[Path | None, "subdomain token types chosen for evaluation (token_types.csv)"] = None,
    detect_f1: float = 0.5,
) -> None:
    """Match an SSAE's latents to its GSAE's, classify them, and write the latent browser."""
    sets = {"subdomain": subdomain_set, "general": general_set}
    lineage(params, gsae_dir, ssae_dir, sets, model_dir, tail_tokens, token_types, out_dir, detect_f1)


def main(argv: list[str] | None = None) -> int:
    return run(lineage_command, argv)


if __name__ == "__main__":
    sys.exit(main())

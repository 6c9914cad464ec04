"""Evaluate SAEs on held-out activations: sparsity, reconstruction, downstream loss with
the SAE spliced into the model, and tail-concept coverage.

Each held-out set is split by document into a validation and a test part
(``ssae_steps.data.splits``, ``validation_fraction``). Every reported metric is measured
on the test part; the validation part serves choices (the best run, in the report; each
tail concept's latent, here; and which token types and tail concepts are evaluated at all,
in ``ssae_steps.evals.tail``).

Definitions (per evaluation set, every cached test token):
- L0: mean number of latents > 0 per token.
- FVU = sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2 (one mean over the set,
  as in SAEBench and sparsify; not the per-dimension variant).
- dead fraction: latents that never fire on the set; dense fraction: latents firing on
  more than ``dense_threshold`` of its tokens.
- downstream loss: test windows (the cached windows of test documents) are drawn
  uniformly at random (seeded) until ``loss_tokens`` tokens; each is scored with BOS
  prepended, by the clean model and with the hooked block's output replaced by the SAE
  reconstruction at every non-BOS position (the blocks after it and the LM head run).
  Headline: delta CE = spliced - clean cross-entropy and KL(clean || spliced) of the
  next-token distributions, in nats per token. Every loss (clean, spliced, zero-ablation)
  and its token count covers the predictions of each window's 2nd to last token: the
  prediction of the first token from BOS alone is left out, since no splice changes it
  (``ssae_steps.evals.spliced_loss.scored_positions``). Baselines (one job): the clean
  model and zero-ablation (block output set to 0); loss recovered = (zero - sae) /
  (zero - clean), which leaving that position out does not change.
  The baselines job also keeps the clean model's scores of the windows and the hooked
  block's output, so that each SAE's evaluation runs only the spliced model's later blocks
  and head (``ssae_steps.evals.spliced_loss``; exact, not an approximation).

Beside each SAE's metrics (JSON), per-document sums on the test part
(``ssae_steps.evals.per_doc``) let the report bootstrap intervals over test documents.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from ssae_steps.activations.sets import load_activation_set
from ssae_steps.cli import run
from ssae_steps.config import ConfigError, to_mapping
from ssae_steps.data.splits import in_test_part
from ssae_steps.evals.config import EvaluationConfig
from ssae_steps.evals.per_doc import add_window_losses, doc_stats, per_doc_path, write_per_doc
from ssae_steps.evals.spliced_loss import (
    CleanScores,
    clean_scores,
    load_clean_scores,
    save_clean_scores,
    window_losses,
    windows_fingerprint,
)
from ssae_steps.evals.tail import Activity, read_token_types, tail_detection, type_detection
from ssae_steps.files import write_json
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae

log = logging.getLogger("ssae.evaluate")


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: 0 for a perfect reconstruction, 1 for the mean."""
    return float((x - x_hat).square().sum() / (x - x.mean(0)).square().sum())


@torch.no_grad()
def reconstruct(sae: SparseAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(x_hat, active_rows, active_latents, active_values)``: the reconstruction and the
    (row, latent) pairs > 0 with their activations."""
    if sae.cfg.architecture == "topk":
        values, indices = sae.topk(x)
        x_hat = sae.decode_sparse(values, indices)
        rows, slot = torch.nonzero(values > 0, as_tuple=True)
        return x_hat, rows, indices[rows, slot], values[rows, slot]
    z = sae.encode(x)
    rows, latents = torch.nonzero(z > 0, as_tuple=True)
    return sae.decode(z), rows, latents, z[rows, latents]


@dataclass
class RowReconstruction:
    """An SAE's reconstruction of a set, row by row."""

    sq_err: np.ndarray
    """``||x - x_hat||^2`` per row (float64)."""
    active_rows: np.ndarray
    active_latents: np.ndarray
    """The (row, latent) pairs with activation > 0."""

    def l0(self) -> np.ndarray:
        return np.bincount(self.active_rows, minlength=len(self.sq_err))

    def subset(self, mask: np.ndarray) -> RowReconstruction:
        """The rows where ``mask`` holds, renumbered from 0."""
        new_row = np.cumsum(mask) - 1
        keep = mask[self.active_rows]
        return RowReconstruction(self.sq_err[mask], new_row[self.active_rows[keep]], self.active_latents[keep])


@torch.no_grad()
def reconstruct_rows(sae: SparseAutoencoder, acts: np.ndarray, chunk: int = 4096) -> RowReconstruction:
    device = sae.W_dec.device
    err, rows, latents = [], [], []
    for start in range(0, len(acts), chunk):
        x = torch.from_numpy(acts[start : start + chunk]).to(device)
        x_hat, r, lat, _ = reconstruct(sae, x)
        err.append((x - x_hat).square().sum(-1).double().cpu())
        rows.append(r.cpu() + start)
        latents.append(lat.cpu())
    return RowReconstruction(torch.cat(err).numpy(), torch.cat(rows).numpy(), torch.cat(latents).numpy())


def _fvu_of(acts: np.ndarray, sq_err: np.ndarray) -> float:
    if not len(acts):
        return math.nan
    variance = np.square(acts - acts.mean(0, dtype=np.float64)).sum()
    return float(sq_err.sum() / variance)


def set_metrics(
    acts: np.ndarray, recon: RowReconstruction, d_sae: int, tail_mask: np.ndarray, dense_threshold: float
) -> dict[str, float]:
    """Point estimates over the rows of ``acts``; tail and head FVU are against the set mean."""
    n = len(acts)
    fires = np.bincount(recon.active_latents, minlength=d_sae)
    variance = np.square(acts - acts.mean(0, dtype=np.float64)).sum(-1)
    err = recon.sq_err
    head = ~tail_mask
    return {
        "tokens": n,
        "l0": len(recon.active_latents) / n,
        "fvu": float(err.sum() / variance.sum()),
        "mse_per_dim": float(err.mean() / acts.shape[1]),
        "dead_fraction": float((fires == 0).mean()),
        "dense_fraction": float((fires > dense_threshold * n).mean()),
        "tail_tokens": int(tail_mask.sum()),
        "tail_fvu": float(err[tail_mask].sum() / variance[tail_mask].sum()) if tail_mask.any() else math.nan,
        "head_fvu": float(err[head].sum() / variance[head].sum()) if head.any() else math.nan,
    }


def reconstruction_metrics(
    sae: SparseAutoencoder, acts: np.ndarray, tail_mask: np.ndarray, dense_threshold: float, chunk: int = 4096
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics of one set, plus its active (row, latent) pairs for concept detection."""
    recon = reconstruct_rows(sae, acts, chunk)
    return set_metrics(acts, recon, sae.cfg.d_sae, tail_mask, dense_threshold), recon.active_rows, recon.active_latents


def windows_from_rows(
    doc_id: np.ndarray, position: np.ndarray, token_id: np.ndarray, chunk: int
) -> list[tuple[str, list[int]]]:
    """The cached windows as ``(doc_id, token ids)``, in cache order. A window is the run of
    rows of one document within one ``chunk``-long stretch of positions."""
    windows: list[tuple[str, list[int]]] = []
    key = None
    for d, p, t in zip(doc_id, position, token_id, strict=True):
        here = (d, int(p) // chunk)
        if here != key:
            windows.append((str(d), []))
            key = here
        windows[-1][1].append(int(t))
    return windows


def sample_windows(windows: list[Any], max_tokens: int, seed: int) -> list[Any]:
    """Windows drawn uniformly without replacement (seeded) until they hold ``max_tokens``
    tokens (the last one may cross it), or all of them."""
    picked, total = [], 0
    for i in np.random.default_rng([seed, 2]).permutation(len(windows)):
        if total >= max_tokens:
            break
        picked.append(windows[i])
        total += len(windows[i][1])
    return picked


@dataclass
class HeldoutSet:
    """One held-out set's rows, which of them are test rows, and its scored test windows."""

    rows: dict[str, np.ndarray]
    test: np.ndarray
    windows: list[tuple[str, list[int]]]


def load_heldout(manifest_path: str | Path, name: str, cfg: EvaluationConfig, seed: int) -> HeldoutSet:
    rows = load_activation_set(manifest_path)
    test = in_test_part(rows["doc_id"], cfg.validation_fraction)
    for part, mask in (("test", test), ("validation", ~test)):
        if not mask.any():
            raise ConfigError(
                f"evaluation.validation_fraction: held-out set {name!r} ({manifest_path}) has no {part} document; "
                "hold out more documents or tokens (activations.max_heldout_tokens)"
            )
    chunk = int(json.loads(Path(manifest_path).read_text())["config"]["context_length"]) - 1
    cached = windows_from_rows(rows["doc_id"][test], rows["position"][test], rows["token_id"][test], chunk)
    return HeldoutSet(rows, test, sample_windows(cached, cfg.loss_tokens, seed))


def _loss_model(model_dir: str | Path, device: str) -> tuple[Any, int | None, int]:
    from ssae_steps.model import load_model

    model, tokenizer = load_model(model_dir, device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return model, tokenizer.bos_token_id, pad


def evaluate_baselines(
    cfg: EvaluationConfig, sets: dict[str, str], model_dir: str | Path, layer: int, device: str, seed: int = 0
) -> tuple[dict[str, Any], dict[str, CleanScores]]:
    """Clean and zero-ablation loss on each evaluation set's scored test windows, and the
    clean model's scores of those windows, which every SAE's evaluation reuses."""
    model, bos, pad = _loss_model(model_dir, device)
    out, cache = {}, {}
    for name, manifest_path in sets.items():
        windows = [ids for _, ids in load_heldout(manifest_path, name, cfg, seed).windows]
        cache[name] = clean_scores(model, windows, bos, pad, cfg.batch_size, layer=layer)
        losses = window_losses(model, windows, layer, bos, pad, cfg.batch_size, torch.zeros_like, cache[name])
        n = int(losses["tokens"].sum())
        clean, zero = losses["clean_ce"].sum() / n, losses["spliced_ce"].sum() / n
        out[name] = {"clean_loss": clean, "zero_ablation_loss": zero, "loss_tokens": n, "loss_windows": len(windows)}
        log.info("%s: clean %.4f, zero-ablation %.4f nats/token over %d tokens", name, clean, zero, n)
    return out, cache


def cached_clean_scores(
    cache: dict[str, CleanScores] | None, path: str | Path | None, name: str, windows: list[list[int]]
) -> CleanScores | None:
    """Set ``name``'s clean scores from ``cache`` (loaded from ``path``), checked against the
    windows about to be scored; None without a cache."""
    if cache is None:
        return None
    cached = cache.get(name)
    if cached is None or cached.fingerprint != windows_fingerprint(windows):
        raise ConfigError(
            f"{path}: no clean scores of held-out set {name!r} for these windows; "
            "rerun the evaluation baselines (evaluate baselines --clean-scores) with the same sets, config and seed"
        )
    return cached


def evaluate_sae(
    cfg: EvaluationConfig,
    sae_dir: str | Path,
    sets: dict[str, str],
    tail_table: str | Path,
    model_dir: str | Path,
    layer: int,
    device: str,
    per_doc_out: str | Path,
    seed: int = 0,
    types_table: str | Path | None = None,
    clean_scores_path: str | Path | None = None,
) -> dict[str, Any]:
    """All metrics of one SAE on the test part of every evaluation set (validation FVU and
    L0 beside them), its tail-concept detection on the sets together, and the per-document
    sums (written to ``per_doc_out``). ``clean_scores_path``: the baselines' clean scores
    (else the clean model runs here too)."""
    sae = load_sae(sae_dir)
    with Path(tail_table).open() as handle:
        concepts = [int(row["token_id"]) for row in csv.DictReader(handle)]
    model, bos, pad = _loss_model(model_dir, device)
    clean_cache = load_clean_scores(clean_scores_path) if clean_scores_path is not None else None
    sae.to(device)
    result: dict[str, Any] = {"sae": str(sae_dir), "sets": {}}
    activity: Activity = {"validation": [], "test": []}
    per_set = {}
    # Dead latents over every held-out token of every set (not a choice, so validation
    # rows count too): a latent firing once per 10k tokens is not called dead over 70k.
    fired, heldout_tokens = np.zeros(sae.cfg.d_sae, dtype=bool), 0
    for name, manifest_path in sets.items():
        held = load_heldout(manifest_path, name, cfg, seed)
        acts, test = held.rows["activation"], held.test
        recon = reconstruct_rows(sae, acts)
        fired[recon.active_latents] = True
        heldout_tokens += len(acts)
        tail_mask = np.isin(held.rows["token_id"], concepts)
        metrics = set_metrics(acts[test], recon.subset(test), sae.cfg.d_sae, tail_mask[test], cfg.dense_threshold)
        validation = recon.subset(~test)
        metrics["validation"] = {
            "tokens": int((~test).sum()),
            "docs": len(np.unique(held.rows["doc_id"][~test])),
            "fvu": _fvu_of(acts[~test], validation.sq_err),
            "l0": len(validation.active_latents) / int((~test).sum()),
        }
        tested = recon.subset(test)
        stats = doc_stats(held.rows["doc_id"][test], acts[test], tested.sq_err, tested.l0())
        windows = [ids for _, ids in held.windows]
        losses = window_losses(
            model,
            windows,
            layer,
            bos,
            pad,
            cfg.batch_size,
            replace=lambda h: sae(h.reshape(-1, h.shape[-1]))[0].reshape(h.shape),
            clean=cached_clean_scores(clean_cache, clean_scores_path, name, windows),
        )
        add_window_losses(stats, held.windows, losses)
        n = int(losses["tokens"].sum())
        metrics |= {
            "docs": len(stats["doc_id"]),
            "loss_docs": int((stats["loss_tokens"] > 0).sum()),
            "loss_tokens": n,
            "spliced_loss": float(losses["spliced_ce"].sum() / n),
            "clean_loss": float(losses["clean_ce"].sum() / n),
            "delta_ce": float((losses["spliced_ce"] - losses["clean_ce"]).sum() / n),
            "kl": float(losses["kl"].sum() / n),
        }
        result["sets"][name] = metrics
        per_set[name] = stats
        for part, mask in (("validation", ~test), ("test", test)):
            in_part = recon.subset(mask)
            doc_keys = np.char.add(f"{name}/", held.rows["doc_id"][mask].astype(str))
            activity[part].append((held.rows["token_id"][mask], in_part.active_rows, in_part.active_latents, doc_keys))
        log.info(
            "%s (test): L0 %.1f, FVU %.4f, delta CE %.4f, KL %.4f nats/token",
            name,
            metrics["l0"],
            metrics["fvu"],
            metrics["delta_ce"],
            metrics["kl"],
        )
    result["dead"] = {"fraction": float(1 - fired.mean()), "tokens": heldout_tokens}
    result["tail"] = tail_detection(activity, concepts, sae.cfg.d_sae, cfg.tail.detection_f1)
    if types_table is not None:
        types, frequencies = read_token_types(types_table)
        result["types"] = type_detection(activity, types, frequencies, sae.cfg.d_sae, cfg.tail.detection_f1)
    result["config"] = to_mapping(cfg)
    write_per_doc(per_doc_out, per_set)
    return result


def _sets(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def baselines_command(
    params: Annotated[EvaluationConfig, "JSON object of the evaluation config section"],
    sets: Annotated[list[str], "NAME=manifest.json of each held-out set"],
    model_dir: Path,
    hook_layer: int,
    out: Annotated[Path, "the baselines JSON"],
    seed: Annotated[int, "which test windows are scored"] = 0,
    clean_scores: Annotated[Path | None, "where to write the clean model's scores"] = None,
    device: str = "auto",
) -> None:
    """Clean and zero-ablation loss on each held-out set's scored test windows."""
    baselines, cache = evaluate_baselines(params, _sets(sets), model_dir, hook_layer, device, seed)
    if clean_scores is not None:
        save_clean_scores(clean_scores, cache)
    write_json(out, baselines)


def sae_command(
    params: Annotated[EvaluationConfig, "JSON object of the evaluation config section"],
    sets: Annotated[list[str], "NAME=manifest.json of each held-out set"],
    model_dir: Path,
    hook_layer: int,
    sae_dir: Annotated[str, "the SAE's directory (as written into the metrics JSON)"],
    tail_table: Path,
    out: Annotated[Path, "the metrics JSON; per-document sums go beside it"],
    seed: Annotated[int, "which test windows are scored"] = 0,
    types_table: Annotated[Path | None, "token types of the recall-vs-frequency curve (tail_concepts)"] = None,
    clean_scores: Annotated[Path | None, "the baselines' clean scores (else the clean model runs here too)"] = None,
    device: str = "auto",
) -> None:
    """All metrics of one SAE on the test part of every held-out set."""
    result = evaluate_sae(
        params,
        sae_dir,
        _sets(sets),
        tail_table,
        model_dir,
        hook_layer,
        device,
        per_doc_path(out),
        seed,
        types_table,
        clean_scores,
    )
    write_json(out, result)


def main(argv: list[str] | None = None) -> int:
    return run({"baselines": baselines_command, "sae": sae_command}, argv)


if __name__ == "__main__":
    sys.exit(main())

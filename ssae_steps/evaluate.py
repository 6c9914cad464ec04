"""Evaluate SAEs on held-out activations: sparsity, reconstruction, downstream loss with
the SAE spliced into the model, and tail-concept coverage.

Definitions (per evaluation set, every cached held-out token):
- L0: mean number of latents > 0 per token.
- FVU = sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2 (one mean over the set,
  as in SAEBench and sparsify; not the per-dimension variant).
- dead fraction: latents that never fire on the set; dense fraction: latents firing on
  more than ``dense_threshold`` of its tokens.
- downstream loss: mean next-token cross-entropy (nats) over the first ``loss_tokens``
  tokens of the set's windows (the very windows that were cached, BOS prepended), with
  the hooked block's output replaced by the SAE reconstruction at every non-BOS
  position; the full model, LM head included, runs. Baselines (one job): the clean model
  and zero-ablation (block output set to 0). Loss recovered = (zero - sae) / (zero - clean).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssae_steps._cli import add_device_arguments, device_from
from ssae_steps._config import from_mapping, require_at_least, run_stage, to_mapping
from ssae_steps._io import write_json
from ssae_steps.activation_reader import load_activation_set
from ssae_steps.sae import SparseAutoencoder, load_sae
from ssae_steps.tail_concepts import TailConfig, concept_detection, tail_recall

log = logging.getLogger("ssae.evaluate")


@dataclass
class EvaluationConfig:
    loss_tokens: int = 8192
    """Tokens per evaluation set scored with the SAE spliced in (full forward passes)."""
    batch_size: int = 8
    """Windows per forward pass."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of tokens counts as dense."""
    tail: TailConfig = field(default_factory=TailConfig)
    top_latents: int = 12
    """Latents shown (with contexts) for the main SSAE."""
    contexts_per_latent: int = 5

    def validate(self, where: str) -> None:
        require_at_least(where, 1, loss_tokens=self.loss_tokens, batch_size=self.batch_size)
        require_at_least(where, 1, top_latents=self.top_latents, contexts_per_latent=self.contexts_per_latent)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "evaluation") -> EvaluationConfig:
        return from_mapping(cls, data, where)


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


@torch.no_grad()
def reconstruction_metrics(
    sae: SparseAutoencoder, acts: np.ndarray, tail_mask: np.ndarray, dense_threshold: float, chunk: int = 4096
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics of one set, plus its active (row, latent) pairs for concept detection."""
    device = sae.W_dec.device
    x_all = torch.from_numpy(acts)
    mean = x_all.mean(0).to(device)
    err, var, rows, latents = [], [], [], []
    for start in range(0, len(x_all), chunk):
        x = x_all[start : start + chunk].to(device)
        x_hat, r, lat, _ = reconstruct(sae, x)
        err.append((x - x_hat).square().sum(-1).cpu())
        var.append((x - mean).square().sum(-1).cpu())
        rows.append(r.cpu() + start)
        latents.append(lat.cpu())
    err_t, var_t = torch.cat(err).double().numpy(), torch.cat(var).double().numpy()
    active_rows, active_latents = torch.cat(rows).numpy(), torch.cat(latents).numpy()
    fires = np.bincount(active_latents, minlength=sae.cfg.d_sae)
    n = len(acts)
    head = ~tail_mask
    metrics = {
        "tokens": n,
        "l0": len(active_latents) / n,
        "fvu": float(err_t.sum() / var_t.sum()),
        "mse_per_dim": float(err_t.mean() / acts.shape[1]),
        "dead_fraction": float((fires == 0).mean()),
        "dense_fraction": float((fires > dense_threshold * n).mean()),
        "tail_tokens": int(tail_mask.sum()),
        "tail_fvu": float(err_t[tail_mask].sum() / var_t[tail_mask].sum()) if tail_mask.any() else math.nan,
        "head_fvu": float(err_t[head].sum() / var_t[head].sum()) if head.any() else math.nan,
    }
    return metrics, active_rows, active_latents


def windows_from_rows(doc_id: np.ndarray, position: np.ndarray, token_id: np.ndarray, chunk: int, max_tokens: int):
    """The cached windows (token ids, in cache order) covering the first ``max_tokens`` rows.
    A window is the run of rows of one document within one ``chunk``-long stretch."""
    windows: list[list[int]] = []
    total, key = 0, None
    for d, p, t in zip(doc_id, position, token_id, strict=True):
        here = (d, int(p) // chunk)
        if here != key:
            if total >= max_tokens:
                break
            windows.append([])
            key = here
        windows[-1].append(int(t))
        total += 1
    return windows


@torch.no_grad()
def spliced_loss(
    model: Any,
    windows: list[list[int]],
    layer: int,
    bos: int | None,
    pad: int,
    batch_size: int,
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over ``windows`` with block ``layer``'s output
    at non-BOS positions passed through ``replace`` (None: the clean model)."""
    from ssae_steps.model import decoder_blocks, padded_batch

    offset = 1 if bos is not None else 0
    device = next(model.parameters()).device

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        patched = hidden.clone()
        patched[:, offset:] = replace(hidden[:, offset:].float()).to(hidden.dtype)
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    handle = decoder_blocks(model)[layer].register_forward_hook(hook) if replace is not None else None
    text_cfg = model.config.get_text_config()
    softcap = getattr(text_cfg, "final_logit_softcapping", None)
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    try:
        for start in range(0, len(windows), batch_size):
            ids, mask = padded_batch(windows[start : start + batch_size], bos, pad)
            lengths = mask.sum(1).tolist()
            hidden = model.get_decoder()(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).last_hidden_state
            for i, n in enumerate(lengths):
                # Row by row: the logits of a whole batch over a 262k vocabulary would not fit.
                logits = head(hidden[i, : n - 1]).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                target = ids[i, 1:n].to(device)
                total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
                count += n - 1
    finally:
        if handle is not None:
            handle.remove()
    return total / max(count, 1), count


def _eval_windows(rows: dict[str, np.ndarray], manifest: dict[str, Any], loss_tokens: int) -> list[list[int]]:
    chunk = int(manifest["config"]["context_length"]) - 1
    return windows_from_rows(rows["doc_id"], rows["position"], rows["token_id"], chunk, loss_tokens)


def evaluate_baselines(
    cfg: EvaluationConfig, sets: dict[str, str], model_dir: str | Path, layer: int, device: str
) -> dict[str, Any]:
    """Clean and zero-ablation loss on each evaluation set."""
    from ssae_steps.model import load_model

    model, tokenizer = load_model(model_dir, device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = {}
    for name, manifest_path in sets.items():
        manifest = json.loads(Path(manifest_path).read_text())
        windows = _eval_windows(load_activation_set(manifest_path), manifest, cfg.loss_tokens)
        clean, n = spliced_loss(model, windows, layer, tokenizer.bos_token_id, pad, cfg.batch_size)
        zero, _ = spliced_loss(
            model, windows, layer, tokenizer.bos_token_id, pad, cfg.batch_size, replace=torch.zeros_like
        )
        out[name] = {"clean_loss": clean, "zero_ablation_loss": zero, "loss_tokens": n}
        log.info("%s: clean %.4f, zero-ablation %.4f nats/token over %d tokens", name, clean, zero, n)
    return out


def evaluate_sae(
    cfg: EvaluationConfig,
    sae_dir: str | Path,
    sets: dict[str, str],
    tail_table: str | Path,
    model_dir: str | Path,
    layer: int,
    device: str,
) -> dict[str, Any]:
    """All metrics of one SAE on every evaluation set, and its tail-concept detection on
    the sets together."""
    from ssae_steps.model import load_model

    sae = load_sae(sae_dir)
    with Path(tail_table).open() as handle:
        concepts = [int(row["token_id"]) for row in csv.DictReader(handle)]
    model, tokenizer = load_model(model_dir, device)
    sae.to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result: dict[str, Any] = {"sae": str(sae_dir), "sets": {}}
    pooled_rows, pooled_latents, pooled_tokens, offset = [], [], [], 0
    for name, manifest_path in sets.items():
        manifest = json.loads(Path(manifest_path).read_text())
        rows = load_activation_set(manifest_path)
        tail_mask = np.isin(rows["token_id"], concepts)
        metrics, active_rows, active_latents = reconstruction_metrics(
            sae, rows["activation"], tail_mask, cfg.dense_threshold
        )
        windows = _eval_windows(rows, manifest, cfg.loss_tokens)
        loss, n = spliced_loss(
            model,
            windows,
            layer,
            tokenizer.bos_token_id,
            pad,
            cfg.batch_size,
            replace=lambda h: sae(h.reshape(-1, h.shape[-1]))[0].reshape(h.shape),
        )
        metrics |= {"spliced_loss": loss, "loss_tokens": n}
        result["sets"][name] = metrics
        pooled_rows.append(active_rows + offset)
        pooled_latents.append(active_latents)
        pooled_tokens.append(rows["token_id"])
        offset += len(rows["token_id"])
        log.info("%s: L0 %.1f, FVU %.4f, spliced loss %.4f", name, metrics["l0"], metrics["fvu"], loss)
    detections = concept_detection(
        np.concatenate(pooled_rows),
        np.concatenate(pooled_latents),
        np.concatenate(pooled_tokens),
        concepts,
        sae.cfg.d_sae,
    )
    result["tail"] = {
        "concepts": len(concepts),
        "recall": tail_recall(detections, cfg.tail.detection_f1),
        "mean_best_f1": float(np.mean([d["f1"] for d in detections])) if detections else math.nan,
        "detections": detections,
    }
    result["config"] = to_mapping(cfg)
    return result


def _sets(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["sae", "baselines"])
    parser.add_argument("--params", required=True, help="JSON object of the evaluation config section")
    parser.add_argument("--sets", nargs="+", required=True, help="NAME=manifest.json of each held-out set")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--hook-layer", type=int, required=True)
    parser.add_argument("--sae-dir")
    parser.add_argument("--tail-table")
    parser.add_argument("--out", required=True)
    add_device_arguments(parser)
    args = parser.parse_args(argv)

    def body() -> None:
        device = device_from(args)
        cfg = EvaluationConfig.from_dict(json.loads(args.params))
        if args.what == "baselines":
            out = evaluate_baselines(cfg, _sets(args.sets), args.model_dir, args.hook_layer, device)
        else:
            out = evaluate_sae(
                cfg, args.sae_dir, _sets(args.sets), args.tail_table, args.model_dir, args.hook_layer, device
            )
        write_json(args.out, out)

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())

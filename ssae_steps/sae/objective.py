"""The training objective of one batch: Tilted ERM over the per-token reconstruction
losses, the architecture's sparsity term and the AuxK loss.

Objective per batch: ``tilted_loss(l_i, tilt, tilt_scale)`` over per-token
reconstruction losses ``l_i = ||x_i - x_hat_i||^2 / d_in`` (in normalised units) - ``tilt =
0`` is plain ERM; by default the tilt acts on ``l_i`` relative to the batch's mean loss, so
a given t reweights tokens the same way at any loss scale (:func:`tilted_loss`) - plus
the architecture's sparsity term (L1 for ReLU, L0 for JumpReLU) and, for TopK,
BatchTopK and Matryoshka, the AuxK loss that teaches dead latents to model the residual
(Gao et al. 2024). Matryoshka's ``l_i`` averages its prefixes' losses (see :func:`step_losses`).

AuxK: the ``aux_k`` largest pre-activations among dead latents reconstruct the main
reconstruction's residual; the loss (that error over the residual's variance) is weighted
by ``aux_coefficient``, times ``min(n_dead / aux_k, 1)`` with ``aux_dead_fraction_scale``
(on by default, like the rest of the training recipe: chosen by ``bench/bench_train.py``).
The dead-fraction factor is EleutherAI sparsify's (1.3.3, ``sparse_coder.py``: ``scale =
min(num_dead / k_aux, 1.0)``, there with ``k_aux = d_in // 2``; its comment: "reduce the
scale of the loss if there are a small number of dead latents"). Gao et al.'s reference code (openai/sparse_autoencoder
``train.py``) uses the fixed coefficient 1/32 without it.
"""

from __future__ import annotations

import math

import torch

from ssae_steps.sae.autoencoder import SparseAutoencoder
from ssae_steps.sae.config import BATCH_TOPK, TiltScale, TrainConfig


def tilted_loss(per_token: torch.Tensor, tilt: float, scale: TiltScale = "batch_mean") -> torch.Tensor:
    """Tilted ERM (Li et al. 2021): ``(1/t) log mean exp(t * l_i)``, via log-sum-exp so it
    is stable for any loss size; ``t = 0`` is the plain mean (the limit as t -> 0). Its
    gradient is ``sum_i w_i grad l_i`` with ``w = softmax(t * l)``: ``t > 0`` weighs badly
    reconstructed tokens more, and t -> inf approaches the max.

    ``scale="none"`` tilts the raw losses, so what a given t does depends on their units: at
    a mean loss of 0.1, t = 2 moves a token's weight by a few percent. ``"batch_mean"``
    (default) tilts ``l_i / m`` with ``m`` the batch's detached mean loss, and multiplies
    back by ``m``: the loss is ``m * (1/t) log mean exp(t * l_i / m)``, its gradient
    ``sum_i w_i grad l_i`` with ``w = softmax(t * l / m)``. A token at r times the mean
    loss then gets weight proportional to ``exp(t * r)`` for any model, layer or SAE
    quality, and the gradient keeps ERM's magnitude (uniform w at t -> 0)."""
    if tilt == 0:
        return per_token.mean()
    flat = per_token.reshape(-1)
    m = _tilt_unit(flat, scale)
    return m * (torch.logsumexp(tilt * flat / m, 0) - math.log(flat.numel())) / tilt


def _tilt_unit(flat: torch.Tensor, scale: TiltScale) -> torch.Tensor | float:
    """What the losses are divided by before tilting: the batch's detached mean, or 1."""
    return flat.detach().mean().clamp_min(torch.finfo(flat.dtype).tiny) if scale == "batch_mean" else 1.0


@torch.no_grad()
def tilt_weight_stats(
    per_token: torch.Tensor, tilt: float, scale: TiltScale = "batch_mean", tail: torch.Tensor | None = None
) -> dict[str, float]:
    """How concentrated the tilted weights ``w`` of a batch are (see :func:`tilted_loss`):
    ``tilt_ess`` = effective sample size as a fraction of the batch, ``1 / (n sum_i w_i^2)``
    (1: ERM's uniform weights; 1/n: one token carries everything); ``tilt_top1_share`` =
    the weight of the top 1% of tokens (at least one; ERM: 0.01). With ``tail`` (a boolean
    mask of the batch's tail tokens, e.g. rare subdomain token types): ``tail_fraction``, their share of the tokens
    (= their weight under ERM), and ``tilt_tail_share``, their share of the weight; NaN
    without a mask."""
    flat = per_token.detach().reshape(-1).double()
    n = flat.numel()
    w = torch.softmax(tilt * flat / _tilt_unit(flat, scale), 0)
    top = max(1, math.ceil(n / 100))
    stats = {"tilt_ess": float(1 / (n * w.square().sum())), "tilt_top1_share": float(w.topk(top).values.sum())}
    if tail is None:
        return stats | {"tail_fraction": math.nan, "tilt_tail_share": math.nan}
    tail = tail.reshape(-1).to(w.device)
    return stats | {"tail_fraction": float(tail.double().mean()), "tilt_tail_share": float(w[tail].sum())}


def auxk_scale(n_dead: int, aux_k: int) -> float:
    """sparsify's AuxK weight for ``n_dead`` dead latents: ``min(n_dead / aux_k, 1)``."""
    return min(n_dead / aux_k, 1.0)


def step_losses(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    cfg: TrainConfig,
    tokens_since_fired: torch.Tensor,
    tail: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Loss of one batch, its logged statistics and the latents that fired.

    Per-token reconstruction loss ``l_i = ||x_i - x_hat_i||^2 / d_in`` (normalised units),
    tilted by ``cfg.tilt`` (the sparsity and AuxK terms are not tilted). Matryoshka: ``l_i``
    is the mean over the prefixes m of the loss of the reconstruction from latents ``[:m]``
    (+ b_dec) - dictionary_learning's ``MatryoshkaBatchTopKTrainer`` with its default equal
    group weights (SAELens sums the levels instead); the mean keeps the loss and the tilt
    on the scale of a single dictionary - and the tilt applies to that per-token mean (= the
    per-token sum over prefixes / their number). Logged mse/fvu are those of the full
    reconstruction for every architecture. BatchTopK and Matryoshka also fold the batch into
    the inference threshold here (:meth:`SparseAutoencoder.update_threshold`)."""
    xn = x * sae.input_scale
    aux = torch.zeros((), device=x.device)
    per_token = None
    arch = cfg.sae.architecture
    if arch in ("topk", *BATCH_TOPK):
        dead = tokens_since_fired >= cfg.dead_after_tokens
        n_dead = int(dead.sum())
        if arch == "topk":
            values, indices, aux_vals, aux_idx = sae.topk_train(x, dead if n_dead else None, min(cfg.aux_k, n_dead))
            recon = sae.decode_sparse(values, indices) * sae.input_scale
        else:
            values, rows, indices, aux_vals, aux_idx = sae.batchtopk_train(
                x, dead if n_dead else None, min(cfg.aux_k, n_dead)
            )
            recons = sae.prefix_reconstructions(values, rows, indices, len(x))  # [batch, prefixes, d_in]
            recon = recons[:, -1]
            per_token = (recons - xn.unsqueeze(1)).square().sum(-1).mean(1) / cfg.sae.d_in
            sae.update_threshold(values)
        fired = torch.zeros(cfg.sae.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[values > 0]] = True
        l0 = float((values > 0).sum()) / len(x)
        sparsity = torch.zeros((), device=x.device)
        if n_dead:
            residual = (xn - recon).detach()
            aux_recon = torch.nn.functional.embedding_bag(aux_idx, sae.W_dec, per_sample_weights=aux_vals, mode="sum")
            denom = (residual - residual.mean(0)).square().sum(-1).mean().clamp_min(1e-8)
            scale = auxk_scale(n_dead, cfg.aux_k) if cfg.aux_dead_fraction_scale else 1.0
            aux = scale * (aux_recon - residual).square().sum(-1).mean() / denom
    elif arch == "jumprelu":
        pre = sae.pre_activations(x)
        step = sae.jump_step(pre)  # once: for the latents and for the L0 penalty
        z = pre * step
        sparsity = cfg.sae.l0_coefficient * step.sum(-1).mean()
    else:
        z = torch.relu(sae.pre_activations(x))
        sparsity = cfg.sae.l1_coefficient * (z * sae.W_dec.norm(dim=1)).sum(-1).mean()
    if arch in ("jumprelu", "relu"):
        recon = z @ sae.W_dec + sae.b_dec
        fired = (z > 0).any(0)
        l0 = float((z > 0).sum(-1).float().mean())
    full = (recon - xn).square().sum(-1) / cfg.sae.d_in
    if per_token is None:
        per_token = full
    recon_loss = tilted_loss(per_token, cfg.tilt, cfg.tilt_scale)
    loss = recon_loss + sparsity + cfg.aux_coefficient * aux
    with torch.no_grad():
        mse = float(full.mean())
        variance = float((xn - xn.mean(0)).square().sum(-1).mean()) / cfg.sae.d_in
    stats = {
        "loss": float(loss.detach()),
        "mse": mse,
        "fvu": mse / max(variance, 1e-12),
        "l0": l0,
        "aux_loss": float(aux.detach()),
        **tilt_weight_stats(per_token, cfg.tilt, cfg.tilt_scale, tail),
    }
    return loss, stats, fired

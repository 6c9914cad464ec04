"""The custom autograd functions behind :class:`~ssae_steps.sae.autoencoder.SparseAutoencoder`'s
training: JumpReLU's straight-through step, and the TopK and BatchTopK encoders whose
backward touches only the selected latents.

The encoders' forward is dense (one ``addmm`` for all pre-activations, then a top-k), but
their backward is sparse: only the ``batch * k`` selected entries (plus the AuxK ones)
carry gradient, so the encoder gradients are sums over those entries
(:func:`_sparse_encoder_grads`, ``embedding_bag`` over the entries) instead of dense
``batch x d_sae x d_in`` matmuls.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class JumpStep(torch.autograd.Function):
    """Heaviside step H(pre - threshold) with the rectangle-kernel pseudo-gradient
    dH/dthreshold = -K((pre - threshold) / bandwidth) / bandwidth (Rajamanoharan et al.
    2024, JumpReLU SAEs); ``pre * H`` then gets -(threshold / bandwidth) K, as in the paper."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        kernel = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype) / ctx.bandwidth
        return None, (-kernel * grad).sum(0), None


def _dead_topk(pre: torch.Tensor, dead: torch.Tensor | None, k_aux: int) -> tuple[torch.Tensor, torch.Tensor]:
    """AuxK selection: the ``k_aux`` largest pre-activations (ReLU'd) among ``dead`` latents,
    per token; empty when ``dead`` is None. The top-k runs on the dead latents' columns
    only: at batch 4096 x 8192 latents, masking the live columns and selecting over all of
    them took 0.2-0.35 s (a fifth to a third of a training step on 2 cores), the dead
    columns alone 4 ms with 50 dead and 0.09 s with 2,000."""
    if dead is None:
        empty = torch.empty(len(pre), 0, dtype=pre.dtype, device=pre.device)
        return empty, empty.long()
    columns = dead.nonzero().squeeze(1)
    values, local = torch.topk(pre.index_select(1, columns), k_aux, dim=-1, sorted=False)
    return F.relu(values), columns[local]


def _bag_sum(
    table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, bag: torch.Tensor, n_bags: int
) -> torch.Tensor:
    """``out[b] = sum of weights[e] * table[index[e]]`` over the entries e with ``bag[e] == b``
    (``[n_bags, table.shape[1]]``): one ``embedding_bag`` over the entries sorted by bag."""
    order = torch.argsort(bag, stable=True)
    counts = torch.bincount(bag, minlength=n_bags)
    return F.embedding_bag(
        index[order], table, counts.cumsum(0) - counts, per_sample_weights=weights[order], mode="sum"
    )


def _sparse_encoder_grads(
    ctx: Any, x_in: torch.Tensor, w_enc: torch.Tensor, rows: torch.Tensor, latents: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``(x_scaled, b_dec, W_enc, b_enc)`` for the encoders below, from the
    gradient ``grad`` of the selected pre-activations ``(rows, latents)`` (flat; the rest
    carry none). ``W_enc``'s is a sum of ``batch * k`` outer products, one ``embedding_bag``
    over ``x_in`` per latent instead of a dense batch x d_sae x d_in matmul; ``b_dec``'s
    (``x_in = x_scaled - b_dec``) is ``-W_enc @ grad_b_enc``, so the per-token input gradient
    is only formed when ``x_scaled`` itself needs one."""
    batch, d_sae = len(x_in), w_enc.shape[1]
    grad_x = grad_b_dec = grad_w = grad_b = None
    per_latent = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, latents, grad)
    if ctx.needs_input_grad[0]:
        grad_x = _bag_sum(w_enc.t().contiguous(), latents, grad, rows, batch)
    if ctx.needs_input_grad[1]:
        grad_b_dec = -(w_enc @ per_latent)
    if ctx.needs_input_grad[2]:
        grad_w = _bag_sum(x_in, rows, grad, latents, d_sae).t()
    if ctx.needs_input_grad[3]:
        grad_b = per_latent
    return grad_x, grad_b_dec, grad_w, grad_b


class TopKEncode(torch.autograd.Function):
    """TopK encoder with a sparse backward: ``(values, indices)`` of the k largest
    pre-activations ``(x_scaled - b_dec) @ W_enc + b_enc`` (ReLU'd), and optionally the
    ``k_aux`` largest among ``dead`` latents (for AuxK). Only the selected entries carry
    gradient (:func:`_sparse_encoder_grads`)."""

    @staticmethod
    def forward(
        ctx: Any,
        x_scaled: torch.Tensor,
        b_dec: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        k: int,
        dead: torch.Tensor | None,
        k_aux: int,
    ) -> tuple[torch.Tensor, ...]:
        x_in = x_scaled - b_dec
        pre = torch.addmm(b_enc, x_in, w_enc)
        values, indices = torch.topk(pre, k, dim=-1, sorted=False)
        values = F.relu(values)
        aux_values, aux_indices = _dead_topk(pre, dead, k_aux)
        ctx.save_for_backward(x_in, w_enc, values, indices, aux_values, aux_indices)
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx: Any, grad_values: torch.Tensor, _gi: Any, grad_aux: torch.Tensor, _ga: Any) -> tuple:
        x_in, w_enc, values, indices, aux_values, aux_indices = ctx.saved_tensors
        grads = [grad_values * (values > 0)]
        idx = [indices]
        if aux_indices.shape[1] and grad_aux is not None:
            grads.append(grad_aux * (aux_values > 0))
            idx.append(aux_indices)
        grad, idx = torch.cat(grads, 1), torch.cat(idx, 1)
        rows = torch.arange(len(x_in), device=x_in.device).repeat_interleave(idx.shape[1])
        return (*_sparse_encoder_grads(ctx, x_in, w_enc, rows, idx.reshape(-1), grad.reshape(-1)), None, None, None)


class BatchTopKEncode(torch.autograd.Function):
    """BatchTopK encoder with a sparse backward (Bussmann et al. 2024, "BatchTopK Sparse
    Autoencoders"): the ``k * batch`` largest pre-activations ``(x_scaled - b_dec) @ W_enc
    + b_enc`` of the whole batch, ReLU'd, as ``(values, rows, latents)``, flat and sorted by
    (row, latent); plus, for AuxK, the ``k_aux`` largest among ``dead`` latents per token.

    The selection is one ``torch.topk`` over the flattened dense ``[batch, d_sae]``
    pre-activations, as in SAELens' ``BatchTopK`` and dictionary_learning's
    ``BatchTopKSAE.encode(use_threshold=False)`` (dense, like every encoder's forward here:
    at batch 1024 x d_sae 8192 it is 8M floats). Only the selected entries carry gradient,
    so the backward is sparse, as in :class:`TopKEncode`."""

    @staticmethod
    def forward(
        ctx: Any,
        x_scaled: torch.Tensor,
        b_dec: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        k: int,
        dead: torch.Tensor | None,
        k_aux: int,
    ) -> tuple[torch.Tensor, ...]:
        x_in = x_scaled - b_dec
        pre = torch.addmm(b_enc, x_in, w_enc)
        d_sae = pre.shape[1]
        values, flat = torch.topk(pre.reshape(-1), k * len(x_in), sorted=False)
        flat, order = flat.sort()
        values = F.relu(values[order])
        rows, latents = flat // d_sae, flat % d_sae
        aux_values, aux_indices = _dead_topk(pre, dead, k_aux)
        ctx.save_for_backward(x_in, w_enc, values, rows, latents, aux_values, aux_indices)
        ctx.mark_non_differentiable(rows, latents, aux_indices)
        return values, rows, latents, aux_values, aux_indices

    @staticmethod
    def backward(ctx: Any, grad_values: torch.Tensor, _gr: Any, _gl: Any, grad_aux: torch.Tensor, _ga: Any) -> tuple:
        x_in, w_enc, values, rows, latents, aux_values, aux_indices = ctx.saved_tensors
        grad = grad_values * (values > 0)
        if aux_indices.shape[1] > 0 and grad_aux is not None:
            aux_rows = torch.arange(len(x_in), device=x_in.device).repeat_interleave(aux_indices.shape[1])
            rows = torch.cat([rows, aux_rows])
            latents = torch.cat([latents, aux_indices.reshape(-1)])
            grad = torch.cat([grad, (grad_aux * (aux_values > 0)).reshape(-1)])
        return (*_sparse_encoder_grads(ctx, x_in, w_enc, rows, latents, grad), None, None, None)

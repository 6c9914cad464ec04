"""Sparse autoencoders: TopK (default), BatchTopK, Matryoshka (BatchTopK), JumpReLU and
ReLU+L1 behind one interface.

``encode(x) -> z`` (dense latent activations), ``decode(z) -> x_hat``, ``forward(x) ->
(x_hat, z)``; ``x`` and ``x_hat`` are raw model activations. Input normalisation is
explicit: ``input_scale`` (a buffer, saved with the SAE) multiplies inputs so that their
mean norm is ``sqrt(d_in)``, and outputs are divided by it again. Decoder rows are kept at
unit norm (``normalize_decoder()`` after each optimiser step).

TopK decodes sparsely: only the k active latents' decoder rows are gathered
(``F.embedding_bag``), so decoding and its backward cost O(batch * k * d_in), not
O(batch * d_sae * d_in).

BatchTopK (Bussmann et al. 2024) keeps the ``k * batch`` largest pre-activations of the
whole batch while training (mean L0 exactly k, varying per token) and, at inference, is a
JumpReLU with one threshold shared by all latents, estimated during training. Matryoshka
(Bussmann et al. 2025; Nabeshima 2024) is BatchTopK trained so that every prefix
``[:m]`` of ``matryoshka_prefixes`` reconstructs on its own. Both train through
:class:`BatchTopKEncode` (sparse backward, like TopK) and :meth:`prefix_reconstructions`
(sparse decode); ``encode`` always applies the inference rule
``relu(pre) * (pre > threshold)``. Both are saved as SAELens ``jumprelu`` SAEs with that
threshold for every latent, which is how SAELens saves its BatchTopK and Matryoshka
BatchTopK training SAEs for inference (sae_lens 6.54 ``saes/batchtopk_sae.py``,
``BatchTopKTrainingSAEConfig.get_inference_config_class -> JumpReLUSAEConfig`` and
``process_state_dict_for_saving_inference``: ``threshold = ones_like(b_enc) * topk_threshold``).

Files: ``save_sae`` writes SAELens' layout - ``cfg.json`` + ``sae_weights.safetensors``
(``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, ``threshold`` for
JumpReLU, BatchTopK and Matryoshka) - with the input scale folded into the weights so the file takes raw
activations (``normalize_activations: "none"``); ``ssae_input_scale`` in ``cfg.json`` lets
``load_sae`` unfold it exactly, restoring unit-norm decoder rows for finetuning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssae_steps.config import ConfigError, to_mapping
from ssae_steps.files import atomic_path
from ssae_steps.sae.config import BATCH_TOPK, SAEConfig, TiltScale

SAELENS_ARCHITECTURE = {
    "topk": "topk",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
    "jumprelu": "jumprelu",
    "relu": "standard",
}
"""Architectures trained with BatchTopK and run as a JumpReLU with one shared threshold."""


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


class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SAEConfig, input_scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())  # tied initialisation, as in SAELens/OpenAI
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))
        if cfg.architecture in BATCH_TOPK:
            # The inference threshold (one for all latents, in pre-activation units); 0 means
            # "not estimated yet" (then inference is plain ReLU), as dictionary_learning's -1.
            self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.input_scale - self.b_dec) @ self.W_enc + self.b_enc

    def topk_of(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK only: ``(values, indices)`` of the k active latents, from pre-activations."""
        return torch.topk(F.relu(pre), self.cfg.k, dim=-1, sorted=False)

    def topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.topk_of(self.pre_activations(x))

    def topk_train(
        self, x: torch.Tensor, dead: torch.Tensor | None = None, k_aux: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """TopK with the sparse backward (:class:`TopKEncode`): ``(values, indices,
        aux_values, aux_indices)``; the aux pair selects among ``dead`` latents (empty if None)."""
        return TopKEncode.apply(x * self.input_scale, self.b_dec, self.W_enc, self.b_enc, self.cfg.k, dead, k_aux)

    def batchtopk_train(
        self, x: torch.Tensor, dead: torch.Tensor | None = None, k_aux: int = 0
    ) -> tuple[torch.Tensor, ...]:
        """BatchTopK/Matryoshka training selection (:class:`BatchTopKEncode`): ``(values,
        rows, latents, aux_values, aux_indices)``, ``k * len(x)`` entries sorted by row."""
        return BatchTopKEncode.apply(x * self.input_scale, self.b_dec, self.W_enc, self.b_enc, self.cfg.k, dead, k_aux)

    def prefix_reconstructions(
        self, values: torch.Tensor, rows: torch.Tensor, latents: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """``[batch, len(prefixes), d_in]``: for each prefix m of ``cfg.prefixes()``, the
        reconstruction ``b_dec + sum of the active latents < m`` (normalised units), from
        the flat active entries of :meth:`batchtopk_train` (sorted by row, then latent).
        Sparse: each prefix group's rows are gathered once (``embedding_bag`` over
        (token, group) bags) and the groups are summed cumulatively, as the nested decode
        of SAELens' ``MatryoshkaBatchTopKTrainingSAE._iterable_decode``."""
        prefixes = self.cfg.prefixes()
        n = len(prefixes)
        bags = rows
        if n > 1:
            bounds = torch.tensor(prefixes[:-1], device=latents.device)
            bags = rows * n + torch.bucketize(latents, bounds, right=True)
        counts = torch.bincount(bags, minlength=batch * n)
        offsets = counts.cumsum(0) - counts
        parts = F.embedding_bag(latents, self.W_dec, offsets, per_sample_weights=values, mode="sum")
        return parts.view(batch, n, -1).cumsum(1) + self.b_dec

    @torch.no_grad()
    def update_threshold(self, values: torch.Tensor) -> None:
        """BatchTopK/Matryoshka: fold one training batch's smallest kept activation into the
        inference threshold: ``t <- beta t + (1 - beta) min``, the first batch setting it.
        This is dictionary_learning's ``BatchTopKTrainer.update_threshold`` (threshold
        starting at -1, set by the first batch, then an EMA with ``threshold_beta``), except
        for the constants: it uses beta 0.999 from step 1000 on (SAELens: an EMA from 0 with
        rate ``topk_threshold_lr`` 0.01), and SSAE runs here are ~200 steps. The threshold
        drifts down while the encoder trains, and a slow average lags behind it: on planted
        data, after 160 steps, beta 0.99 left the held-out L0 ~20% below k while 0.9 matched
        it. One batch's minimum over its k * batch kept values is already a precise quantile,
        so little averaging is needed; hence the default 0.9, from the first step."""
        active = values[values > 0]
        if not len(active):
            return
        smallest = active.min().to(self.threshold.dtype)
        if self.threshold <= 0:
            self.threshold.copy_(smallest)
        else:
            beta = self.cfg.batchtopk_threshold_beta
            self.threshold.mul_(beta).add_((1 - beta) * smallest)

    def jump_step(self, pre: torch.Tensor) -> torch.Tensor:
        """JumpReLU only: 1 where a pre-activation clears its threshold (straight-through)."""
        return JumpStep.apply(pre, self.log_threshold.exp(), self.cfg.jumprelu_bandwidth)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        if self.cfg.architecture == "topk":
            values, indices = self.topk_of(pre)
            return torch.zeros_like(pre).scatter_(-1, indices, values)
        if self.cfg.architecture == "jumprelu":
            return pre * self.jump_step(pre)
        if self.cfg.architecture in BATCH_TOPK:
            # Inference rule, SAELens' JumpReLUSAE.encode with one shared threshold (training
            # selects with batchtopk_train instead).
            return F.relu(pre) * (pre > self.threshold)
        return F.relu(pre)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W_dec + self.b_dec) / self.input_scale

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Decode from the active latents only: gathers k decoder rows per token."""
        summed = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")
        return (summed + self.b_dec) / self.input_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


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


def _folded_weights(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    scale = sae.input_scale.detach()
    weights = {
        "W_enc": sae.W_enc.detach() * scale,
        "b_enc": sae.b_enc.detach().clone(),
        "W_dec": sae.W_dec.detach() / scale,
        "b_dec": sae.b_dec.detach() / scale,
    }
    if sae.cfg.architecture == "jumprelu":
        weights["threshold"] = sae.log_threshold.detach().exp()
    if sae.cfg.architecture in BATCH_TOPK:  # the shared threshold, once per latent
        weights["threshold"] = sae.threshold.detach().expand(sae.cfg.d_sae)
    return {k: v.contiguous().float() for k, v in weights.items()}


def save_sae(sae: SparseAutoencoder, directory: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write an SAELens-layout directory atomically (the directory appears complete or not at all)."""
    from safetensors.torch import save_file

    cfg = {
        "architecture": SAELENS_ARCHITECTURE[sae.cfg.architecture],
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata or {},
        "ssae_config": to_mapping(sae.cfg),
        "ssae_input_scale": float(sae.input_scale),
    }
    if sae.cfg.architecture == "topk":
        cfg["k"] = sae.cfg.k
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        save_file(_folded_weights(sae), str(tmp / "sae_weights.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")


def load_sae(directory: str | Path) -> SparseAutoencoder:
    """Load a directory written by :func:`save_sae`, or a SAELens-format SAE of the same
    architectures (then the input scale is 1)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (directory / name).exists():
            raise ConfigError(f"file {directory / name}: missing (not an SAELens-format SAE directory)")
    raw = json.loads((directory / "cfg.json").read_text())
    weights = load_file(str(directory / "sae_weights.safetensors"))
    if "ssae_config" in raw:
        cfg = SAEConfig.from_dict(raw["ssae_config"], f"{directory}/cfg.json")
    else:
        arch = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(raw.get("architecture", ""))
        if arch is None:
            raise ConfigError(f"file {directory / 'cfg.json'}: unsupported architecture {raw.get('architecture')!r}")
        cfg = SAEConfig(architecture=arch, d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), k=int(raw.get("k", 32)))
    scale = float(raw.get("ssae_input_scale", 1.0))
    sae = SparseAutoencoder(cfg, input_scale=scale)
    with torch.no_grad():
        sae.W_enc.copy_(weights["W_enc"] / scale)
        sae.b_enc.copy_(weights["b_enc"])
        sae.W_dec.copy_(weights["W_dec"] * scale)
        sae.b_dec.copy_(weights["b_dec"] * scale)
        if cfg.architecture == "jumprelu":
            sae.log_threshold.copy_(weights["threshold"].clamp_min(1e-12).log())
        if cfg.architecture in BATCH_TOPK:
            threshold = weights["threshold"]
            if not torch.equal(threshold, threshold[:1].expand_as(threshold)):
                raise ConfigError(f"file {directory}: a {cfg.architecture} SAE needs one threshold for all latents")
            sae.threshold.copy_(threshold[0])
    return sae

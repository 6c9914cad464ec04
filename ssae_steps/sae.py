"""Sparse autoencoders: TopK (default), JumpReLU and ReLU+L1 behind one interface.

``encode(x) -> z`` (dense latent activations), ``decode(z) -> x_hat``, ``forward(x) ->
(x_hat, z)``; ``x`` and ``x_hat`` are raw model activations. Input normalisation is
explicit: ``input_scale`` (a buffer, saved with the SAE) multiplies inputs so that their
mean norm is ``sqrt(d_in)``, and outputs are divided by it again. Decoder rows are kept at
unit norm (``normalize_decoder()`` after each optimiser step).

TopK decodes sparsely: only the k active latents' decoder rows are gathered
(``F.embedding_bag``), so decoding and its backward cost O(batch * k * d_in), not
O(batch * d_sae * d_in).

Files: ``save_sae`` writes SAELens' layout - ``cfg.json`` + ``sae_weights.safetensors``
(``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, ``threshold`` for
JumpReLU) - with the input scale folded into the weights so the file takes raw
activations (``normalize_activations: "none"``); ``ssae_input_scale`` in ``cfg.json`` lets
``load_sae`` unfold it exactly, restoring unit-norm decoder rows for finetuning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssae_steps._config import ConfigError, from_mapping, require_at_least, to_mapping
from ssae_steps._io import atomic_path

Architecture = Literal["topk", "jumprelu", "relu"]
SAELENS_ARCHITECTURE = {"topk": "topk", "jumprelu": "jumprelu", "relu": "standard"}


@dataclass
class SAEConfig:
    """Shape and sparsity mechanism of one SAE."""

    architecture: Architecture = "topk"
    """topk: exactly k active latents; jumprelu: learned thresholds; relu: L1 penalty."""
    d_in: int = 640
    """Width of the hooked activations (the model's d_model)."""
    d_sae: int = 8192
    """Number of latents."""
    k: int = 32
    """TopK: active latents per token."""
    l1_coefficient: float = 5.0
    """ReLU: weight of the decoder-norm-weighted L1 penalty."""
    l0_coefficient: float = 1.0
    """JumpReLU: weight of the (straight-through) L0 penalty."""
    jumprelu_bandwidth: float = 0.001
    """JumpReLU: width of the rectangle kernel of the straight-through estimator."""
    jumprelu_init_threshold: float = 0.001
    """JumpReLU: initial threshold of every latent."""

    def validate(self, where: str) -> None:
        require_at_least(where, 1, d_in=self.d_in, d_sae=self.d_sae, k=self.k)
        if self.k > self.d_sae:
            raise ConfigError(f"{where}.k: {self.k} exceeds d_sae={self.d_sae}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "sae") -> SAEConfig:
        return from_mapping(cls, data, where)


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


class TopKEncode(torch.autograd.Function):
    """TopK encoder with a sparse backward: ``(values, indices)`` of the k largest
    pre-activations ``x_in @ W_enc + b_enc`` (ReLU'd), and optionally the ``k_aux`` largest
    among ``dead`` latents (for AuxK). Only the selected entries carry gradient, so the
    encoder's weight gradient is a sparse [d_sae, batch] x [batch, d_in] product instead of
    a second dense batch x d_sae x d_in matmul; the input gradient gathers k rows."""

    @staticmethod
    def forward(
        ctx: Any,
        x_in: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        k: int,
        dead: torch.Tensor | None,
        k_aux: int,
    ) -> tuple[torch.Tensor, ...]:
        pre = torch.addmm(b_enc, x_in, w_enc)
        values, indices = torch.topk(pre, k, dim=-1, sorted=False)
        values = F.relu(values)
        if dead is None:
            aux_values = aux_indices = torch.empty(len(x_in), 0, dtype=x_in.dtype, device=x_in.device)
            aux_indices = aux_indices.long()
        else:
            aux_values, aux_indices = torch.topk(pre.masked_fill_(~dead, float("-inf")), k_aux, dim=-1, sorted=False)
            aux_values = F.relu(aux_values)
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
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, w_enc.t().contiguous(), per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[1]:
            rows = torch.arange(len(x_in), device=x_in.device).repeat_interleave(idx.shape[1])
            sparse = torch.sparse_coo_tensor(
                torch.stack([idx.reshape(-1), rows]),
                grad.reshape(-1),
                (w_enc.shape[1], len(x_in)),
                check_invariants=False,
            )
            grad_w = torch.sparse.mm(sparse, x_in).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(w_enc.shape[1], dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return grad_x, grad_w, grad_b, None, None, None


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
        x_in = x * self.input_scale - self.b_dec
        return TopKEncode.apply(x_in, self.W_enc, self.b_enc, self.cfg.k, dead, k_aux)

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


def tilted_loss(per_token: torch.Tensor, tilt: float) -> torch.Tensor:
    """Tilted ERM (Li et al. 2021): ``(1/t) log mean exp(t * l_i)``, via log-sum-exp so it
    is stable for any loss size; ``t = 0`` is the plain mean (the limit as t -> 0).
    ``t > 0`` weighs badly reconstructed tokens more; t -> inf approaches the max."""
    if tilt == 0:
        return per_token.mean()
    n = per_token.numel()
    return (torch.logsumexp(tilt * per_token.reshape(-1), 0) - math.log(n)) / tilt


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
    return sae

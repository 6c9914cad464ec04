"""Sparse autoencoders: TopK (default), BatchTopK, Matryoshka (BatchTopK), JumpReLU and
ReLU+L1 behind one interface.

``encode(x) -> z`` (dense latent activations), ``decode(z) -> x_hat``, ``forward(x) ->
(x_hat, z)``; ``x`` and ``x_hat`` are raw model activations. Input normalisation is
explicit: ``input_scale`` (a buffer, saved with the SAE) multiplies inputs so that their
mean norm is ``sqrt(d_in)``, and outputs are divided by it again. Decoder rows are kept at
unit norm (``normalize_decoder()`` after each optimiser step).

TopK decodes sparsely: only the k active latents' decoder rows are gathered
(``F.embedding_bag``), so decoding and its backward cost O(batch * k * d_in), not
O(batch * d_sae * d_in); the encoders' sparse backward is in :mod:`ssae_steps.sae.kernels`.

BatchTopK (Bussmann et al. 2024) keeps the ``k * batch`` largest pre-activations of the
whole batch while training (mean L0 exactly k, varying per token) and, at inference, is a
JumpReLU with one threshold shared by all latents, estimated during training. Matryoshka
(Bussmann et al. 2025; Nabeshima 2024) is BatchTopK trained so that every prefix
``[:m]`` of ``matryoshka_prefixes`` reconstructs on its own. Both train through
:class:`~ssae_steps.sae.kernels.BatchTopKEncode` (sparse backward, like TopK) and
:meth:`prefix_reconstructions` (sparse decode); ``encode`` always applies the inference
rule ``relu(pre) * (pre > threshold)``. Both are saved as SAELens ``jumprelu`` SAEs with that
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
from ssae_steps.sae.config import BATCH_TOPK, SAEConfig
from ssae_steps.sae.kernels import BatchTopKEncode, JumpStep, TopKEncode

SAELENS_ARCHITECTURE = {
    "topk": "topk",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
    "jumprelu": "jumprelu",
    "relu": "standard",
}
"""The SAELens architecture each of ours is saved as (BatchTopK and Matryoshka: a JumpReLU
with one shared threshold)."""


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

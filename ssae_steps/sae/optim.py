"""The optimisation recipe of SAE training: learning rate, schedule, optimiser and the
decoder-gradient projection.

All of it is set in :class:`~ssae_steps.sae.config.TrainConfig`; the defaults - Adam at the
width-scaled lr 1.4e-3 / sqrt(d_sae / 2**14), 5% warm-up, linear decay over the last 20%,
decoder-gradient projection - are what ``bench/bench_train.py`` measured best per token and
per second on Gemma activations; ``bench/README.md`` has the numbers:

- learning rate: ``lr``, or when None sparsify's width rule ``base / sqrt(d_sae / 2**14)``
  with our measured Adam base (1.4e-3: sparsify's 2e-4 trains far too slowly in a few
  hundred steps) or sparsify's signum base 5e-3 (:func:`effective_lr`); the value used is
  ``summary.json``'s ``lr``;
- schedule (:func:`lr_factor`, a pure function of the step, so a resumed run steps
  exactly as an uninterrupted one): linear warm-up over the first ``warmup_fraction`` of
  the run's steps, then flat, then a ``linear`` or ``cosine`` decay to about 0 over the
  last ``decay_fraction`` (``none``: no decay); finetuning runs get their own schedule;
- optimiser (:func:`make_optimizer`): ``adam`` (torch Adam, betas 0.9/0.999) or
  ``signum``, sparsify's default: SignSGD (``p -= lr * sign(grad)``, sparsify
  ``sign_sgd.py``) made schedule-free with momentum 0.95 (sparsify ``trainer.py``:
  ``ScheduleFreeWrapper(SignSGD)``), here fused into one optimiser
  (:class:`ScheduleFreeSignSGD`, the same update in half the memory passes). Schedule-free
  keeps two iterates: training runs at ``y``, and the SAE that is saved (and handed to
  ``on_step`` for evaluation) holds the averaged evaluation weights ``x``
  (:func:`evaluation_sae`; what ``ScheduleFreeWrapper.eval()`` sets). Checkpoints hold
  ``y`` and the optimiser's state (``z``, largest lr, weight sum), so resuming is exact;
- decoder-gradient projection (``project_decoder_grad``,
  :func:`remove_parallel_decoder_grad`): before each optimiser step the gradient of each
  decoder row loses its component along that row, as in sparsify's
  ``remove_gradient_parallel_to_decoder_directions`` and Gao et al.'s
  ``unit_norm_decoder_grad_adjustment_``; rows are renormalised after the step. The step
  then moves rows (to first order) along the unit sphere instead of spending part of it on
  a norm change that the renormalisation undoes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from ssae_steps.sae.autoencoder import SparseAutoencoder
from ssae_steps.sae.config import TrainConfig

BASE_LR = {"adam": 1.4e-3, "signum": 5e-3}
"""Base learning rates at 2**14 latents: Adam's measured here (``bench/README.md``: at 8192
latents, batch 1024, 400k Gemma tokens, 1.98e-3 with the schedule gives held-out FVU 0.099
against 0.154 at 4e-4 and 0.107 at 1.4e-3; 5.6e-3 diverges), signum's sparsify's (1.3.3,
``trainer.py``; its Adam base is 2e-4)."""
ADAM_REFERENCE_BATCH = 1024
"""The batch (tokens per step) at which Adam's base learning rate was measured."""
SIGNUM_MOMENTUM = 0.95
"""sparsify's momentum of the schedule-free wrapper around SignSGD."""


def effective_lr(cfg: TrainConfig) -> float:
    """``cfg.lr``, or the default: sparsify's width rule ``BASE_LR[optimizer] / sqrt(d_sae /
    2**14)`` (sparsify 1.3.3 ``trainer.py``: ``cfg.lr or 2e-4 / (num_latents / 2**14) ** 0.5``
    for Adam, ``5e-3 / ...`` for signum; our Adam base is 1.4e-3, see :data:`BASE_LR`), and
    for Adam times ``(batch_size / ADAM_REFERENCE_BATCH) ** 0.25``. The fourth root is
    measured, not a law (``bench/README.md``, 8192 latents on Gemma activations): at batch
    1024, 1.98e-3 was best short of instability (5.6e-3 diverged); at batch 4096, 2.8e-3
    (this rule) reached held-out FVU 0.0897 with 9% of the latents silent on held-out text,
    while the square-root rule for adaptive optimisers (Malladi et al. 2022; 3.96e-3)
    reached 0.086 with 27% silent, and 5.6e-3 0.096 with 70% dead by the trainer's count.
    Sign descent is left as sparsify has it."""
    if cfg.lr is not None:
        return cfg.lr
    lr = BASE_LR[cfg.optimizer] / math.sqrt(cfg.sae.d_sae / 2**14)
    if cfg.optimizer == "adam":
        lr *= (cfg.batch_size / ADAM_REFERENCE_BATCH) ** 0.25
    return lr


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate for optimiser step ``step`` (0-based) of
    ``total_steps``: ``min(warm-up, decay)`` with

    - warm-up over ``W = round(warmup_fraction * total_steps)`` steps: ``(step + 1) / W``
      while ``step < W`` (the first step already moves; the W-th is at the peak), else 1;
    - decay over the last ``D = round(decay_fraction * total_steps)`` steps, with
      ``p = (step - (total_steps - D)) / D`` in ``[0, 1)``: linear ``1 - p``, cosine
      ``(1 + cos(pi * p)) / 2``, none 1; so the last step runs at about ``lr / D``.
    """
    factor = 1.0
    warmup = round(cfg.warmup_fraction * total_steps)
    if step < warmup:
        factor = (step + 1) / warmup
    decay = round(cfg.decay_fraction * total_steps)
    start = total_steps - decay
    if cfg.lr_decay != "none" and decay > 0 and step >= start:
        progress = (step - start) / decay
        shape = 1 - progress if cfg.lr_decay == "linear" else (1 + math.cos(math.pi * progress)) / 2
        factor = min(factor, shape)
    return factor


@torch.no_grad()
def remove_parallel_decoder_grad(w_dec: torch.Tensor) -> None:
    """Remove from each row of ``w_dec.grad`` its component along that row:
    ``g_i -= (g_i . w_i) / (w_i . w_i) * w_i`` (for unit-norm rows this is sparsify's
    ``remove_gradient_parallel_to_decoder_directions`` exactly; dividing by the squared
    norm keeps the result orthogonal for a row that is not quite unit norm, such as the
    first step of a finetune from a schedule-free average)."""
    grad = w_dec.grad
    if grad is None:
        return
    parallel = (grad * w_dec).sum(-1, keepdim=True) / w_dec.square().sum(-1, keepdim=True).clamp_min(1e-12)
    grad.sub_(parallel * w_dec)


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    """sparsify's default optimiser ("signum"): SignSGD (``z -= lr * sign(grad)``, sparsify
    ``sign_sgd.py``; Bernstein et al. 2018) made schedule-free (Defazio et al. 2024), with
    the update of ``schedulefree.ScheduleFreeWrapper(SignSGD, momentum)`` in five fused
    passes instead of its ~ten (it swaps ``y`` and ``z`` through three byte-wise XORs
    either side of the inner step, and allocates the signs).

    Parameters hold the training iterate ``y``; ``state[p]["z"]`` the SignSGD iterate; the
    average ``x`` (the weights to evaluate and save) is ``y + (1 - 1/momentum) (z - y)``
    (:func:`evaluation_sae`). One step, with ``c = lr_max^2 / sum of lr_max^2`` over steps:
    ``x = lerp(y, z, 1 - 1/momentum)``; ``z -= lr sign(grad)``; ``x = lerp(x, z, c)``;
    ``y = lerp(x, z, 1 - momentum)``. The signs overwrite the gradients."""

    train_mode = True  # what evaluation_sae and the schedule-free wrapper's API look for

    def __init__(self, params: Any, lr: float, momentum: float = 0.95, weight_lr_power: float = 2.0) -> None:
        super().__init__(params, {"lr": lr, "lr_max": 0.0, "weight_sum": 0.0})
        self.momentum, self.weight_lr_power = momentum, weight_lr_power

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "z" not in self.state[p]:
                    self.state[p]["z"] = p.detach().clone()
            z = [self.state[p]["z"] for p in params]
            group["lr_max"] = max(group["lr"], group["lr_max"])
            weight = group["lr_max"] ** self.weight_lr_power
            group["weight_sum"] += weight
            torch._foreach_lerp_(params, z, 1 - 1 / self.momentum)
            signs = [p.grad for p in params]
            torch._foreach_sign_(signs)
            torch._foreach_add_(z, signs, alpha=-group["lr"])
            torch._foreach_lerp_(params, z, weight / group["weight_sum"])
            torch._foreach_lerp_(params, z, 1 - self.momentum)


def make_optimizer(cfg: TrainConfig, sae: SparseAutoencoder, lr: float) -> torch.optim.Optimizer:
    """The optimiser of ``cfg.optimizer`` over ``sae``'s parameters at ``lr``."""
    if cfg.optimizer == "signum":
        return ScheduleFreeSignSGD(sae.parameters(), lr=lr, momentum=SIGNUM_MOMENTUM)
    # fused: one kernel for the whole update (on CPU ~4x faster than the foreach default)
    fused = sae.W_dec.device.type in ("cpu", "cuda")
    return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=fused)


@torch.no_grad()
def evaluation_sae(sae: SparseAutoencoder, optimizer: Any) -> SparseAutoencoder:
    """The SAE to save or evaluate: ``sae`` itself for Adam; for schedule-free signum a
    copy holding the averaged iterate ``x = y + (1 - 1/momentum) (z - y)`` (the same
    ``lerp`` as ``ScheduleFreeWrapper.eval()``, on a copy, so training goes on untouched)."""
    if not hasattr(optimizer, "train_mode"):  # also takes a schedulefree wrapper (the bench's sparsify)
        return sae
    out = copy.deepcopy(sae)
    for p, q in zip(sae.parameters(), out.parameters(), strict=True):
        z = optimizer.state[p].get("z")
        if z is not None:
            q.lerp_(z, 1 - 1 / optimizer.momentum)
    return out

"""Train a sparse autoencoder on cached activations: the general SAE from scratch, or a
specialised SAE from scratch or by finetuning the general one, with Tilted ERM.

Objective per batch: ``tilted_loss(l_i, tilt, tilt_scale)`` over per-token
reconstruction losses ``l_i = ||x_i - x_hat_i||^2 / d_in`` (in normalised units) - ``tilt =
0`` is plain ERM; by default the tilt acts on ``l_i`` relative to the batch's mean loss, so
a given t reweights tokens the same way at any loss scale (``sae.tilted_loss``) - plus
the architecture's sparsity term (L1 for ReLU, L0 for JumpReLU) and, for TopK,
BatchTopK and Matryoshka, the AuxK loss that teaches dead latents to model the residual
(Gao et al. 2024). Matryoshka's ``l_i`` averages its prefixes' losses (see ``_step_losses``).

AuxK: the ``aux_k`` largest pre-activations among dead latents reconstruct the main
reconstruction's residual; the loss (that error over the residual's variance) is weighted
by ``aux_coefficient``, times ``min(n_dead / aux_k, 1)`` with ``aux_dead_fraction_scale``
(on by default, like the rest of the recipe below: chosen by ``bench/bench_train.py``). The
dead-fraction factor is EleutherAI
sparsify's (1.3.3, ``sparse_coder.py``: ``scale = min(num_dead / k_aux, 1.0)``, there with
``k_aux = d_in // 2``; its comment: "reduce the scale of the loss if there are a small
number of dead latents"). Gao et al.'s reference code (openai/sparse_autoencoder
``train.py``) uses the fixed coefficient 1/32 without it.

Optimisation recipe (all in :class:`TrainConfig`; the defaults - Adam at the width-scaled
lr 1.4e-3 / sqrt(d_sae / 2**14), 5% warm-up, linear decay over the last 20%, decoder-gradient
projection, AuxK dead-fraction scale - are what ``bench/bench_train.py`` measured best per
token and per second on Gemma activations; ``bench/README.md`` has the numbers):

- learning rate: ``lr``, or when None sparsify's width rule ``base / sqrt(d_sae / 2**14)``
  with our measured Adam base (1.4e-3: sparsify's 2e-4 trains far too slowly in a few
  hundred steps) or sparsify's signum base 5e-3; the value used is ``summary.json``'s ``lr``;
- schedule (:func:`lr_factor`, a pure function of the step, so a resumed run steps
  exactly as an uninterrupted one): linear warm-up over the first ``warmup_fraction`` of
  the run's steps, then flat, then a ``linear`` or ``cosine`` decay to about 0 over the
  last ``decay_fraction`` (``none``: no decay); finetuning runs get their own schedule;
- optimiser: ``adam`` (torch Adam, betas 0.9/0.999) or ``signum``, sparsify's default:
  SignSGD (``p -= lr * sign(grad)``, sparsify ``sign_sgd.py``) made schedule-free with
  momentum 0.95 (sparsify ``trainer.py``: ``ScheduleFreeWrapper(SignSGD)``), here fused
  into one optimiser (:class:`ScheduleFreeSignSGD`, the same update in half the memory
  passes). Schedule-free keeps two iterates: training runs at ``y``, and the SAE that is
  saved (and handed to ``on_step`` for evaluation) holds the averaged evaluation weights
  ``x`` (:func:`evaluation_sae`; what ``ScheduleFreeWrapper.eval()`` sets). Checkpoints
  hold ``y`` and the optimiser's state (``z``, largest lr, weight sum), so resuming is exact;
- decoder-gradient projection (``project_decoder_grad``): before each optimiser step
  the gradient of each decoder row loses its component along that row, as in sparsify's
  ``remove_gradient_parallel_to_decoder_directions`` and Gao et al.'s
  ``unit_norm_decoder_grad_adjustment_``; rows are renormalised after the step. The
  step then moves rows (to first order) along the unit sphere instead of spending part
  of it on a norm change that the renormalisation undoes.

Run length is ``epochs`` passes over the set, or a fixed number of ``tokens`` (SSAEs: the
same steps and tokens for every selection strategy; a set smaller than that, such as the
seed documents alone, is repeated).

Checkpoints (``checkpoint.pt``: weights, optimiser, step, data position, RNG, firing
counters) are written atomically every ``checkpoint_every`` steps; a rerun resumes from
the last one and ends with the same weights as an uninterrupted run. A checkpoint is only
resumed when its key matches: the configuration, the activation set's run key (itself a
hash of the model's weights, the stage's code and the documents), the *content* hash of
the SAE it finetunes, and the code of this stage. The checkpoint is deleted once the
outputs are written, so a finished run leaves nothing a later run could reuse.
Non-finite losses or weights stop the run with an error, before any checkpoint of them is
written.

Snapshots (``snapshots`` > 0; the GSAE of the first seed keeps 4 by default): the SAE at
``snapshots`` evenly spaced steps (the last one the final weights), each a SAELens-layout
directory in ``out_dir/snapshots`` listed with its step and learning-rate weight in
``snapshots/manifest.json`` (written last). They are TracIn-CP's checkpoints
(:mod:`ssae_steps.retrieval.tracin`); a snapshot's weight is the mean learning rate over the steps it
stands for (since the previous snapshot), since the final one's own rate is ~0 after the decay.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssae_steps.activations.reader import ActivationShardReader
from ssae_steps.cli import add_device_arguments, device_from
from ssae_steps.config import (
    ConfigError,
    run_stage,
    to_mapping,
)
from ssae_steps.files import atomic_path, code_fingerprint, tree_digest, write_json
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae, save_sae, tilt_weight_stats, tilted_loss
from ssae_steps.sae.config import (
    BATCH_TOPK,
    TrainConfig,
    TrainingPlan,
)

log = logging.getLogger("ssae.train_sae")
LOG_FIELDS = [
    "step",
    "tokens",
    "loss",
    "mse",
    "fvu",
    "l0",
    "dead_fraction",
    "aux_loss",
    "tilt_ess",
    "tilt_top1_share",
    "tail_fraction",
    "tilt_tail_share",
    "lr",
]

BASE_LR = {"adam": 1.4e-3, "signum": 5e-3}
"""Base learning rates at 2**14 latents: Adam's measured here (``bench/README.md``: at 8192
latents, batch 1024, 400k Gemma tokens, 1.98e-3 with the schedule gives held-out FVU 0.099
against 0.154 at 4e-4 and 0.107 at 1.4e-3; 5.6e-3 diverges), signum's sparsify's (1.3.3,
``trainer.py``; its Adam base is 2e-4)."""
ADAM_REFERENCE_BATCH = 1024
"""The batch (tokens per step) at which Adam's base learning rate was measured."""
SIGNUM_MOMENTUM = 0.95
"""sparsify's momentum of the schedule-free wrapper around SignSGD."""


def input_scale_from(manifest: dict[str, Any]) -> float:
    """Scale making the mean activation norm sqrt(d_in) (SAELens' expected_average_only_in)."""
    return math.sqrt(manifest["d_model"]) / manifest["stats"]["norm_mean"]


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


def auxk_scale(n_dead: int, aux_k: int) -> float:
    """sparsify's AuxK weight for ``n_dead`` dead latents: ``min(n_dead / aux_k, 1)``."""
    return min(n_dead / aux_k, 1.0)


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


def _optimizer(cfg: TrainConfig, sae: SparseAutoencoder, lr: float) -> torch.optim.Optimizer:
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


def _step_losses(
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


def _run_key(
    cfg: TrainConfig,
    manifest: dict[str, Any],
    init_from: str | Path | None,
    snapshots: int,
    tail_ids: np.ndarray | None = None,
) -> str:
    init_digest = tree_digest(init_from) if init_from is not None else None
    parts = [to_mapping(cfg), manifest["run_key"], init_digest, code_fingerprint("ssae_steps.sae.train"), snapshots]
    if tail_ids is not None:  # logged, so a resumed log must not mix tail sets
        parts.append(tail_ids.tolist())
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _tail_weight(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The tail tokens' share of the tokens and of the tilted weight, means over the logged
    steps; their ratio is how much the tilt up-weights tail tokens (ERM: 1)."""
    fraction = float(np.mean([r["tail_fraction"] for r in rows]))
    share = float(np.mean([r["tilt_tail_share"] for r in rows]))
    return {"fraction": fraction, "tilted_share": share, "upweight": share / fraction if fraction else math.nan}


def snapshot_steps(total_steps: int, snapshots: int) -> list[int]:
    """``snapshots`` evenly spaced steps in ``1..total_steps``, the last being ``total_steps``."""
    return sorted({max(1, round(total_steps * i / snapshots)) for i in range(1, snapshots + 1)})


def snapshot_weights(cfg: TrainConfig, steps: list[int], total_steps: int) -> list[float]:
    """TracIn-CP weight of each snapshot: the mean learning rate over the steps since the
    previous snapshot (the steps it stands for)."""
    lr, weights, previous = effective_lr(cfg), [], 0
    for step in steps:
        factors = [lr_factor(cfg, s, total_steps) for s in range(previous, step)]
        weights.append(lr * sum(factors) / len(factors))
        previous = step
    return weights


def write_snapshot_manifest(directory: Path, entries: list[dict[str, Any]], **info: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "manifest.json", {**info, "snapshots": entries})


def train_sae(
    cfg: TrainConfig,
    manifest_path: str | Path,
    out_dir: str | Path,
    init_from: str | Path | None = None,
    stop_after_steps: int | None = None,
    device: str = "cpu",
    on_step: Callable[[int, Callable[[], SparseAutoencoder]], None] | None = None,
    snapshots: int = 0,
    tail_tokens: list[int] | None = None,
) -> dict[str, Any]:
    """Train on the activation set of ``manifest_path``; write ``out_dir/sae`` (SAELens
    layout), ``train_log.csv``, ``summary.json`` and ``snapshots/`` (``snapshots`` weight
    snapshots for TracIn; only its manifest when 0). ``stop_after_steps`` ends the run early
    (as a crash would) after that many steps, leaving only the checkpoint. ``on_step(step,
    current)``, if given, is called after every step; ``current()`` returns the SAE with its
    evaluation weights (:func:`evaluation_sae`; do not modify it). ``tail_tokens``: token
    ids of a tail (the workflow passes the rare subdomain token types), whose share of the
    tilted weights is then logged (it does not change training)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(Path(manifest_path).read_text())
    cfg.sae.d_in = int(manifest["d_model"])
    if cfg.init == "finetune":
        if init_from is None:
            raise ConfigError("training.init: finetune needs the SAE to start from (init_from)")
        sae = load_sae(init_from)
        if sae.cfg.d_in != cfg.sae.d_in or sae.cfg.architecture != cfg.sae.architecture:
            raise ConfigError(f"training.init: {init_from} is a {sae.cfg.architecture} SAE on d_in={sae.cfg.d_in}")
        cfg.sae = sae.cfg
    else:
        sae = SparseAutoencoder(cfg.sae, input_scale=input_scale_from(manifest), seed=cfg.seed)
        mean = manifest["stats"].get("mean")
        if mean is not None:
            # Residual streams carry a large shared offset; starting b_dec there (as SAELens'
            # and sparsify's mean initialisations do) keeps the tied random encoder from
            # picking the same latents for every token, which leaves most latents dead.
            with torch.no_grad():
                sae.b_dec.copy_(torch.tensor(mean, dtype=torch.float32) * sae.input_scale)
    sae.to(device)
    # The same batches either way: metadata columns are read beside the activations.
    tail_ids = None if tail_tokens is None else np.asarray(sorted(set(tail_tokens)), dtype=np.int64)
    reader = ActivationShardReader(
        manifest_path,
        cfg.batch_size,
        seed=cfg.seed,
        drop_last=True,
        with_metadata=("token_id",) if tail_ids is not None else False,
        device=device,
        reuse_buffers=True,  # each batch is used by one step, before the next is asked for
    )
    if len(reader) == 0:
        raise ConfigError(
            f"training.batch_size: {cfg.batch_size} is more than the {reader.tokens} tokens of {manifest_path}"
        )
    total_steps = max(1, cfg.tokens // cfg.batch_size if cfg.tokens else int(cfg.epochs * len(reader)))
    lr = effective_lr(cfg)
    optimizer = _optimizer(cfg, sae, lr)
    tokens_since_fired = torch.zeros(cfg.sae.d_sae, dtype=torch.long, device=device)
    key = _run_key(cfg, manifest, init_from if cfg.init == "finetune" else None, snapshots, tail_ids)
    step, rows = 0, []
    checkpoint = out_dir / "checkpoint.pt"
    snapshot_dir = out_dir / "snapshots"
    snapshot_at = snapshot_steps(total_steps, snapshots) if snapshots else []
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        if state["run_key"] == key:
            sae.load_state_dict(state["sae"])
            optimizer.load_state_dict(state["optimizer"])
            step, rows = state["step"], state["log"]
            tokens_since_fired = state["tokens_since_fired"].to(device)
            torch.set_rng_state(state["torch_rng"])
            log.info("resuming from step %d of %d", step, total_steps)
    if step == 0 and snapshot_dir.exists():
        shutil.rmtree(snapshot_dir)  # an earlier run's; a resumed run keeps its own
    started = time.time()
    progress = tqdm(total=total_steps, initial=step, desc=f"train {cfg.init} t={cfg.tilt:g}", unit="step")
    while step < total_steps:
        for batch in reader.iter_epoch(step // len(reader), skip=step % len(reader)):
            x, tail = batch, None
            if tail_ids is not None:
                x, tail = batch["activation"], torch.from_numpy(np.isin(batch["token_id"], tail_ids)).to(device)
            loss, stats, fired = _step_losses(sae, x.to(device, non_blocking=True), cfg, tokens_since_fired, tail)
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"non-finite loss at step {step}: {stats}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.project_decoder_grad:
                remove_parallel_decoder_grad(sae.W_dec)
            step_lr = lr * lr_factor(cfg, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            optimizer.step()
            sae.normalize_decoder()
            tokens_since_fired += len(x)
            tokens_since_fired[fired] = 0
            step += 1
            progress.update(1)
            progress.set_postfix(fvu=f"{stats['fvu']:.3f}", l0=f"{stats['l0']:.1f}", refresh=False)
            if step % cfg.log_every == 0 or step == total_steps:
                rows.append(
                    {
                        "step": step,
                        "tokens": step * cfg.batch_size,
                        **stats,
                        "dead_fraction": float((tokens_since_fired >= cfg.dead_after_tokens).float().mean()),
                        "lr": step_lr,
                    }
                )
            if step in snapshot_at:  # before the checkpoint, so a resumed run never lacks it
                save_sae(copy.deepcopy(evaluation_sae(sae, optimizer)).cpu(), snapshot_dir / f"step-{step:06d}")
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                if not all(torch.isfinite(p).all() for p in sae.parameters()):
                    raise FloatingPointError(f"non-finite SAE weights at step {step}")
                state = {
                    "run_key": key,
                    "sae": sae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "log": rows,
                    "tokens_since_fired": tokens_since_fired.cpu(),
                    "torch_rng": torch.get_rng_state(),
                }
                with atomic_path(checkpoint) as tmp:
                    torch.save(state, tmp)
            if on_step is not None:
                on_step(step, lambda: evaluation_sae(sae, optimizer))
            if step >= total_steps or (stop_after_steps is not None and step >= stop_after_steps):
                break
        if stop_after_steps is not None and step >= stop_after_steps and step < total_steps:
            progress.close()
            return {"stopped_at": step}
    progress.close()
    seconds = time.time() - started
    metadata = {"hook_name": manifest["hook_name"], "model_dir": manifest["model_dir"]}
    final = evaluation_sae(sae, optimizer)
    if not all(torch.isfinite(p).all() for p in final.parameters()):
        raise FloatingPointError(f"non-finite SAE weights at the end of step {step}")
    save_sae(final.cpu(), out_dir / "sae", metadata=metadata)
    with atomic_path(out_dir / "train_log.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "config": to_mapping(cfg),
        "steps": step,
        "tokens": step * cfg.batch_size,
        "set_tokens": reader.tokens,
        "passes": round(step * cfg.batch_size / max(reader.tokens, 1), 3),
        "run_key": key,
        "optimizer": cfg.optimizer,
        "lr": lr,
        "final": rows[-1] if rows else {},
        "tail_weight": _tail_weight(rows) if tail_ids is not None else None,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(step * cfg.batch_size / max(seconds, 1e-9), 1),
    }
    entries = [
        {"step": s, "lr_weight": w, "directory": f"step-{s:06d}"}
        for s, w in zip(snapshot_at, snapshot_weights(cfg, snapshot_at, total_steps), strict=True)
    ]
    missing = [e["directory"] for e in entries if not (snapshot_dir / e["directory"]).is_dir()]
    if missing:
        raise FileNotFoundError(f"{snapshot_dir}: snapshots {missing} are gone; delete {checkpoint} and rerun")
    write_snapshot_manifest(snapshot_dir, entries, run_key=key, total_steps=total_steps)
    write_json(out_dir / "summary.json", summary)
    checkpoint.unlink(missing_ok=True)
    return summary


def import_pretrained(directory: str | Path, manifest_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Use a pretrained SAELens-format SAE as the GSAE: check it fits the hooked
    activations and store it in our layout (so finetuning and evaluation treat it alike)."""
    manifest = json.loads(Path(manifest_path).read_text())
    sae = load_sae(directory)
    if sae.cfg.d_in != manifest["d_model"]:
        raise ConfigError(
            f"training.gsae.pretrained: {directory} has d_in={sae.cfg.d_in}, "
            f"the model's d_model is {manifest['d_model']}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_sae(sae, out_dir / "sae", metadata={"hook_name": manifest["hook_name"], "pretrained_from": str(directory)})
    with atomic_path(out_dir / "train_log.csv") as tmp:
        tmp.write_text(",".join(LOG_FIELDS) + "\n")
    summary = {"config": {"sae": to_mapping(sae.cfg), "init": "pretrained"}, "pretrained_from": str(directory)}
    write_json(out_dir / "summary.json", summary)
    # No training history: TracIn falls back to the final weights alone.
    write_snapshot_manifest(out_dir / "snapshots", [], pretrained_from=str(directory))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="JSON object of the training config section")
    parser.add_argument("--role", required=True, choices=["gsae", "ssae"])
    parser.add_argument("--init", default="scratch", choices=["scratch", "finetune"])
    parser.add_argument("--tilt", type=float, default=0.0)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manifest", required=True, help="activation-set manifest to train on")
    parser.add_argument("--init-from", default=None, help="SAE directory to finetune")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--snapshots", type=int, default=0, help="weight snapshots to keep (for TracIn)")
    parser.add_argument(
        "--tail-tokens", default=None, help="CSV with a token_id column (token_types.csv): log their tilted weight"
    )
    parser.add_argument(
        "--tail-max-frequency", type=float, default=None, help="keep only rows with general_frequency at most this"
    )
    add_device_arguments(parser)
    args = parser.parse_args(argv)

    def body() -> None:
        device = device_from(args)
        plan = TrainingPlan.from_dict(json.loads(args.params))
        if args.role == "gsae" and plan.gsae.pretrained is not None:
            import_pretrained(plan.gsae.pretrained, args.manifest, args.out_dir)
            return
        cfg = plan.run_config(args.role, args.init, args.tilt, args.k, args.seed)
        tail = None
        if args.tail_tokens:
            with open(args.tail_tokens) as handle:
                tail = [
                    int(row["token_id"])
                    for row in csv.DictReader(handle)
                    if args.tail_max_frequency is None or float(row["general_frequency"]) <= args.tail_max_frequency
                ]
        summary = train_sae(
            cfg,
            args.manifest,
            args.out_dir,
            init_from=args.init_from,
            device=device,
            snapshots=args.snapshots,
            tail_tokens=tail,
        )
        log.info("trained %s steps: final %s", summary["steps"], summary["final"])

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())

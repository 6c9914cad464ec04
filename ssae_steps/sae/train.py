"""Train a sparse autoencoder on cached activations: the general SAE from scratch, or a
specialised SAE from scratch or by finetuning the general one, with Tilted ERM.

The loss of a batch is :func:`ssae_steps.sae.objective.step_losses` (Tilted ERM over the
per-token reconstruction losses, the sparsity term, AuxK); learning rate, schedule and
optimiser are :mod:`ssae_steps.sae.optim`'s. This module runs the loop around them and
writes the outputs.

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
from typing import Annotated, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ssae_steps.activations.reader import ActivationShardReader
from ssae_steps.cli import run
from ssae_steps.config import ConfigError, to_mapping
from ssae_steps.files import atomic_path, code_fingerprint, tree_digest, write_json
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae, save_sae
from ssae_steps.sae.config import TrainConfig, TrainingPlan
from ssae_steps.sae.objective import step_losses
from ssae_steps.sae.optim import effective_lr, evaluation_sae, lr_factor, make_optimizer, remove_parallel_decoder_grad

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


def input_scale_from(manifest: dict[str, Any]) -> float:
    """Scale making the mean activation norm sqrt(d_in) (SAELens' expected_average_only_in)."""
    return math.sqrt(manifest["d_model"]) / manifest["stats"]["norm_mean"]


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
    optimizer = make_optimizer(cfg, sae, lr)
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
            loss, stats, fired = step_losses(sae, x.to(device, non_blocking=True), cfg, tokens_since_fired, tail)
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


def train_command(
    params: Annotated[TrainingPlan, "JSON object of the training config section"],
    role: Literal["gsae", "ssae"],
    k: int,
    manifest: Annotated[Path, "activation-set manifest to train on"],
    out_dir: Path,
    init: Literal["scratch", "finetune"] = "scratch",
    tilt: float = 0.0,
    seed: int = 0,
    init_from: Annotated[Path | None, "SAE directory to finetune"] = None,
    snapshots: Annotated[int, "weight snapshots to keep (for TracIn)"] = 0,
    tail_tokens: Annotated[Path | None, "CSV with a token_id column (token_types.csv): log their tilted weight"] = None,
    tail_max_frequency: Annotated[float | None, "keep only rows with general_frequency at most this"] = None,
    device: str = "auto",
) -> None:
    """Train one SAE of the training plan (or import the pretrained GSAE it names)."""
    if role == "gsae" and params.gsae.pretrained is not None:
        import_pretrained(params.gsae.pretrained, manifest, out_dir)
        return
    cfg = params.run_config(role, init, tilt, k, seed)
    tail = None
    if tail_tokens is not None:
        with open(tail_tokens) as handle:
            tail = [
                int(row["token_id"])
                for row in csv.DictReader(handle)
                if tail_max_frequency is None or float(row["general_frequency"]) <= tail_max_frequency
            ]
    summary = train_sae(
        cfg, manifest, out_dir, init_from=init_from, device=device, snapshots=snapshots, tail_tokens=tail
    )
    log.info("trained %s steps: final %s", summary["steps"], summary["final"])


def main(argv: list[str] | None = None) -> int:
    return run(train_command, argv)


if __name__ == "__main__":
    sys.exit(main())

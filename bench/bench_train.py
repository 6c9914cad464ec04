"""TopK SAE training, quality and speed: this project vs EleutherAI sparsify vs SAELens.

Targets (issue 13; lower FVU is better), at equal training tokens:
- held-out FVU <= sparsify's at every checkpoint from 50% of the tokens on;
- tokens/s >= 1.25x sparsify's, and >= 3x SAELens' with FVU <= SAELens';
- peak RSS reported for all; ours <= sparsify's.

Setup, the same for every trainer: the same activations (by default Gemma 3 270M layer-9
activations of the default pool), the same batches in the same order (our shuffled
reader, seed 0, repeated if ``--tokens`` exceeds the set), batch 4096, 8192 latents,
k = 32, ``--tokens`` training tokens (default 1,000,000; whole batches), inputs scaled to
mean norm sqrt(d_in) (the peers get pre-scaled batches; ours scales inside). Every trainer
reads its batches from the Parquet shards inside its timed loop, as ours does.

Held-out FVU, one formula for all, on the same first 20,000 tokens of the held-out set:
``FVU = sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2`` (raw activations; one mean
over those tokens). It is measured after 25%, 50% and 100% of the steps, on the weights a
user would get at that point (the schedule-free average for signum), with the clock
stopped. tokens/s = training tokens / training seconds (evaluation excluded). With it, the
share of latents that fire on none of those tokens ("dead"): sparsify's default trains
without AuxK, ours and SAELens' with it, and a lower FVU bought with many dead latents is
not the better dictionary.

Trainers (each in its own subprocess, so peak RSS - the child's VmHWM - is its own):
- ours (default recipe): the real ``train_sae`` stage end to end (reads the shards, tracks
  dead latents, AuxK, logs, checkpoints at the end, writes the SAE) with ``TrainConfig``'s
  defaults; then ours per optimiser (adam, signum) where that differs from the default,
  and each optimiser with the whole recipe on (``FULL_RECIPE``: schedule, decoder-gradient
  projection, AuxK dead-fraction scale), which is how the default recipe gets chosen;
- sparsify (``eai-sparsify``): it has no trainer for precomputed activations, so its
  ``Trainer.fit`` inner loop is reproduced with its own ``SparseCoder`` and optimiser, in
  its order: ``b_dec`` = first batch mean; per step decoder rows to unit norm, forward,
  ``fvu`` backward (AuxK is off by default, ``auxk_alpha = 0``), gradient parallel to the
  decoder rows removed, step. Its default optimiser and lr: schedule-free SignSGD
  (``ScheduleFreeWrapper(SignSGD, momentum=0.95)``), lr 5e-3 / sqrt(8192 / 2^14); it is
  evaluated at the schedule-free average, as its checkpoints save;
- SAELens (``sae-lens``): its own ``SAETrainer.fit`` (``TopKTrainingSAE``, Adam, its
  default constant schedule and AuxK). Its trainer leaves ``b_dec`` at zero; Gemma's
  residual stream has a large shared offset, so ``b_dec`` starts at the first batch's mean
  (as sparsify's trainer and ours do). Its learning rate is tuned: each of
  ``SAELENS_LRS`` (its default 3e-4 times 1, 3, 9, 27) trains on the first 25% of the tokens
  (``--saelens-sweep-fraction``);
  the one with the lowest held-out FVU there trains the full run (printed). It is picked
  on the same held-out tokens that score the runs, which if anything favours SAELens.

Also printed: our tokens/s against a FLOP bound for the TopK step on this machine.

    pip install -e '.[bench]'
    snakemake --cores 2 results/activations/corpus/general/train/manifest.json \\
        results/activations/corpus/general/heldout/manifest.json
    python bench/bench_train.py --tokens 1000000 --plot fvu_vs_tokens.png
Without cached activations it falls back to synthetic sparse data (``--synthetic``).
The last line is machine-readable: ``RESULT ours/sparsify fvu_ratio=.. tps_ratio=..
ours/saelens fvu_ratio=.. tps_ratio=..`` (final checkpoint; FVU ours/peer, lower is
better; tokens/s ours/peer, higher is better).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssae_steps.activations.reader import ActivationShardReader  # noqa: E402
from ssae_steps.activations.sets import write_activation_set  # noqa: E402
from ssae_steps.sae.config import TrainConfig
from ssae_steps.sae.optim import evaluation_sae
from ssae_steps.sae.train import input_scale_from, train_sae

D_SAE, K = 8192, 32
BATCH = 4096  # --batch; set in main and in each child from its spec
FRACTIONS = (0.25, 0.5, 1.0)
SAELENS_LRS = (3e-4, 9e-4, 2.7e-3, 8.1e-3)
# TrainConfig's recipe options, all on: warm-up and linear decay, decoder-gradient
# projection, AuxK dead-fraction scale.
FULL_RECIPE = {
    "warmup_fraction": 0.05,
    "lr_decay": "linear",
    "decay_fraction": 0.2,
    "project_decoder_grad": True,
    "aux_dead_fraction_scale": True,
}
SPARSIFY_LR = 5e-3 / (D_SAE / 2**14) ** 0.5  # sparsify trainer.py, optimizer "signum", lr None
TPS_TARGET_SPARSIFY, TPS_TARGET_SAELENS = 1.25, 3.0


def load_all(manifest: Path, limit: int | None) -> torch.Tensor:
    """The first ``limit`` rows of an activation set, in file order (float32)."""
    reader = ActivationShardReader(manifest, batch_size=8192, shuffle=False)
    rows = torch.cat(list(reader))
    return rows[:limit] if limit else rows


Reconstruct = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Raw activations -> (their reconstruction, which of the D_SAE latents fired on any of them)."""


def fvu(reconstruct: Reconstruct, x: torch.Tensor) -> tuple[float, float]:
    """``(FVU, dead share)`` on ``x``: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all of
    ``x`` (raw activations), and the share of latents that fire on none of its tokens."""
    err, fired = 0.0, torch.zeros(D_SAE, dtype=torch.bool)
    with torch.no_grad():
        for part in x.split(4096):
            x_hat, part_fired = reconstruct(part)
            err += float((x_hat - part).square().sum())
            fired |= part_fired
    return err / float((x - x.mean(0)).square().sum()), 1 - float(fired.float().mean())


def dense_reconstruct(encode: Callable, decode: Callable, scale: float) -> Reconstruct:
    """A :data:`Reconstruct` from an SAE's dense ``encode`` and ``decode`` on scaled inputs."""

    def reconstruct(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = encode(x * scale)
        return decode(z) / scale, (z > 0).any(0)

    return reconstruct


def checkpoint_steps(steps: int) -> dict[int, float]:
    """Step -> fraction of the run at which held-out FVU is measured."""
    return {max(1, round(f * steps)): f for f in FRACTIONS}


# --- children: one trainer each ---------------------------------------------------------


def _batches(train: Path, scale: float) -> Iterator[torch.Tensor]:
    """Our reader's order (seed 0, one reshuffled epoch after another), pre-scaled."""
    reader = ActivationShardReader(train, BATCH, seed=0, drop_last=True)
    while True:
        for x in reader:
            yield x * scale


def _run_ours(spec: dict, steps: int, marks: dict[int, float], evaluate: Callable) -> dict:
    cfg = TrainConfig.from_dict(
        {"sae": {"d_sae": D_SAE, "k": K}, "batch_size": BATCH, "tokens": steps * BATCH, **spec["overrides"]}
    )
    cfg.checkpoint_every = 10**9  # only the final checkpoint, as the peers write none

    def on_step(step: int, current: Callable) -> None:
        if step in marks:
            sae = current()
            evaluate(step, dense_reconstruct(sae.encode, sae.decode, 1.0))  # ours scales inside

    summary = train_sae(cfg, spec["train"], Path(spec["out"]) / "ours", on_step=on_step)
    return {"lr": summary["lr"], "optimizer": summary["optimizer"]}


def _run_sparsify(spec: dict, steps: int, marks: dict[int, float], evaluate: Callable, scale: float) -> dict:
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(0)
    d_in = json.loads(Path(spec["train"]).read_text())["d_model"]
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=D_SAE, k=K), device="cpu", dtype=torch.float32)
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": SPARSIFY_LR}]), momentum=0.95)
    opt.train()
    batches = _batches(Path(spec["train"]), scale)
    for step in range(1, steps + 1):
        x = next(batches)
        if step == 1:
            sae.b_dec.data = x.mean(0)  # sparsify's trainer, first batch (not finetuning)
        sae.set_decoder_norm_to_unit_norm()  # in its forward hook, before the forward
        out = sae(x, dead_mask=None)  # auxk_alpha = 0 by default: no dead mask, no AuxK
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if step in marks:
            averaged = evaluation_sae(sae, opt)  # what opt.eval() gives, on a copy

            def reconstruct(x: torch.Tensor, m: Any = averaged) -> tuple[torch.Tensor, torch.Tensor]:
                out = m(x * scale)
                fired = torch.zeros(D_SAE, dtype=torch.bool)
                fired[out.latent_indices[out.latent_acts > 0]] = True
                return out.sae_out / scale, fired

            evaluate(step, reconstruct)
    return {"lr": SPARSIFY_LR, "optimizer": "schedule-free SignSGD"}


def _run_saelens(spec: dict, steps: int, marks: dict[int, float], evaluate: Callable, scale: float) -> dict:
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(0)
    d_in = json.loads(Path(spec["train"]).read_text())["d_model"]
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=D_SAE, k=K, device="cpu"))
    batches = _batches(Path(spec["train"]), scale)
    first = next(batches)
    sae.b_dec.data = first.mean(0)

    reconstruct = dense_reconstruct(sae.encode, sae.decode, scale)

    def provider() -> Iterator[torch.Tensor]:
        # The trainer asks for batch `done` after `done` steps.
        for done, x in enumerate(itertools.chain([first], itertools.islice(batches, steps - 1))):
            if done in marks:
                evaluate(done, reconstruct)
            yield x

    cfg = SAETrainerConfig(  # lr_end: normally filled in by its runner config; unused by "constant"
        total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=spec["lr"], lr_end=spec["lr"]
    )
    SAETrainer(cfg, sae, data_provider=provider()).fit()
    evaluate(steps, reconstruct)
    return {"lr": spec["lr"], "optimizer": "Adam"}


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM (Linux; unlike ru_maxrss it does not carry
    over the parent's peak through fork and exec), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(spec: dict) -> None:
    """Train one trainer; write its tokens/s, FVU curve and peak RSS to ``spec['result']``."""
    global BATCH
    BATCH = spec["batch"]
    train, heldout = Path(spec["train"]), Path(spec["heldout"])
    scale = input_scale_from(json.loads(train.read_text()))
    held = load_all(heldout, spec["heldout_tokens"])
    steps = spec["tokens"] // BATCH
    marks = checkpoint_steps(steps) if spec.get("curve", True) else {steps: 1.0}
    curve: list[tuple[int, float, float]] = []  # (tokens, held-out FVU, held-out dead share)
    paused = 0.0

    def evaluate(step: int, reconstruct: Callable) -> None:
        nonlocal paused
        began = time.perf_counter()
        curve.append((step * BATCH, *fvu(reconstruct, held)))
        paused += time.perf_counter() - began

    started = time.perf_counter()
    if spec["kind"] == "ours":
        extra = _run_ours(spec, steps, marks, evaluate)
    elif spec["kind"] == "sparsify":
        extra = _run_sparsify(spec, steps, marks, evaluate, scale)
    else:
        extra = _run_saelens(spec, steps, marks, evaluate, scale)
    seconds = time.perf_counter() - started - paused
    result = {"tokens_per_s": steps * BATCH / seconds, "curve": curve, "peak_rss_mb": peak_rss_mb(), **extra}
    Path(spec["result"]).write_text(json.dumps(result))


def run_child(spec: dict, tmp: Path, name: str) -> dict:
    spec = {**spec, "result": str(tmp / f"{name}.json"), "out": str(tmp / name)}
    print(f"--- {name}", flush=True)
    subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True)
    return json.loads(Path(spec["result"]).read_text())


# --- parent ----------------------------------------------------------------------------


def matmul_gflops(d_in: int, repeats: int = 5) -> float:
    """Dense fp32 GFLOP/s of the encoder's product here ([BATCH, d_in] x [d_in, D_SAE])."""
    a, b = torch.randn(BATCH, d_in), torch.randn(d_in, D_SAE)
    for _ in range(2):
        torch.mm(a, b)
    began = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * BATCH * d_in * D_SAE * repeats / (time.perf_counter() - began) / 1e9


def topk_step_flops_per_token(d_in: int) -> int:
    """FLOPs per token of one TopK training step, counting multiply-adds as 2:
    encoder forward (dense) 2*d_in*d_sae; decoder forward (k gathered rows) 2*k*d_in;
    decoder backward 2*k*d_in (rows) + 2*k*d_in (latent values); encoder backward, sparse
    over the k selected latents, 2*k*d_in (weights). Not counted: top-k selection, AuxK
    (only while latents are dead), b_dec's gradient through the encoder and the optimiser
    update (each O(d_sae*d_in) per step, ~0.2% here) - so the bound below is optimistic."""
    return 2 * d_in * D_SAE + 8 * K * d_in


def synthetic_sets(root: Path, tokens: int, heldout_tokens: int, d_in: int = 640) -> tuple[Path, Path]:
    gen = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(4 * D_SAE, d_in, generator=gen), dim=1)
    offset = 3 * torch.randn(d_in, generator=gen)  # a shared offset, as residual streams have

    def sample(n: int) -> np.ndarray:
        idx = torch.randint(0, len(atoms), (n, 24), generator=gen)
        return ((torch.rand(n, 24, generator=gen).unsqueeze(-1) * atoms[idx]).sum(1) + offset).numpy()

    return (
        write_activation_set(sample(tokens), root / "train" / "manifest.json"),
        write_activation_set(sample(heldout_tokens), root / "heldout" / "manifest.json"),
    )


def plot(results: dict[str, dict], path: Path, tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, res in results.items():
        xs, ys = [c[0] for c in res["curve"]], [c[1] for c in res["curve"]]
        ax.plot(xs, ys, "o-", label=name)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out FVU (lower is better)")
    ax.set_title(f"TopK SAE, {D_SAE} latents, k={K}, batch {BATCH}, {tokens:,} tokens", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fvu_at(res: dict, fraction: float, steps: int, column: int = 1) -> float:
    """Held-out FVU (``column`` 2: dead share) at ``fraction`` of the run."""
    step = max(1, round(fraction * steps))
    return {c[0]: c[column] for c in res["curve"]}.get(step * BATCH, math.nan)


def main() -> int:
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=Path("results/activations/corpus/general/train/manifest.json"))
    parser.add_argument(
        "--heldout", type=Path, default=Path("results/activations/corpus/general/heldout/manifest.json")
    )
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (whole batches of 4096)")
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=BATCH, help="tokens per step, every trainer")
    parser.add_argument(
        "--trainers",
        default="ours,sparsify,saelens",
        help="comma-separated subset of ours, sparsify, saelens (ratios need ours and the peer)",
    )
    parser.add_argument(
        "--saelens-sweep-fraction", type=float, default=0.25, help="share of --tokens each SAELens lr trial trains"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every result and the sweep here")
    parser.add_argument("--default-only", action="store_true", help="ours: the default recipe only, no variants")
    parser.add_argument(
        "--ours-lrs", default="", help="ours: also the default recipe at these peak lrs (comma-separated)"
    )
    parser.add_argument("--synthetic", action="store_true", help="synthetic sparse data instead of cached activations")
    parser.add_argument("--plot", type=Path, default=None, help="FVU-vs-tokens PNG (default: in the temp folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child))
        return 0

    BATCH = args.batch
    trainers = set(args.trainers.split(","))
    if not trainers <= {"ours", "sparsify", "saelens"}:
        parser.error(f"--trainers: unknown {sorted(trainers - {'ours', 'sparsify', 'saelens'})}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    if args.synthetic or not args.train.exists():
        print(f"no cached activations at {args.train} (or --synthetic); using synthetic sparse data")
        args.train, args.heldout = synthetic_sets(tmp / "acts", args.tokens, args.heldout_tokens)
    meta = json.loads(args.train.read_text())
    steps = args.tokens // BATCH
    if steps < 1:
        parser.error(f"--tokens must be at least one batch ({BATCH})")
    tokens = steps * BATCH
    d_in = int(meta["d_model"])
    heldout_tokens = min(args.heldout_tokens, json.loads(args.heldout.read_text())["tokens"])
    print(f"{tokens:,} training tokens ({steps} steps of {BATCH}; set holds {meta['tokens']:,}), d_in={d_in}")
    print(f"held-out FVU on the first {heldout_tokens:,} tokens of {args.heldout}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    base = {
        "train": str(args.train.resolve()),
        "heldout": str(args.heldout.resolve()),
        "heldout_tokens": heldout_tokens,
        "tokens": tokens,
        "batch": BATCH,
    }

    results: dict[str, dict] = {}
    sweep: dict[float, float] = {}
    if "ours" in trainers:
        # Each distinct recipe trains once; a variant equal to the default is labelled so.
        variants = {"ours (default recipe)": {}}
        for optimizer in () if args.default_only else ("adam", "signum"):
            variants[f"ours, {optimizer}"] = {"optimizer": optimizer}
            variants[f"ours, {optimizer} + schedule, projection, AuxK scale"] = {**FULL_RECIPE, "optimizer": optimizer}
        for lr in (float(v) for v in args.ours_lrs.split(",") if v):
            variants[f"ours (default recipe), lr {lr:.3g}"] = {"lr": lr}
        trained: dict[str, str] = {}  # the effective config -> the name it was first run under
        for name, overrides in variants.items():
            effective = repr(TrainConfig.from_dict({"batch_size": BATCH, **overrides}))
            if effective in trained:
                results[f"{name} (= {trained[effective]})"] = results[trained[effective]]
                continue
            trained[effective] = name
            slug = "ours-" + "-".join(f"{k}={v}" for k, v in sorted(overrides.items())) if overrides else "ours-default"
            results[name] = run_child({**base, "kind": "ours", "overrides": overrides}, tmp, slug[:80])
    if "sparsify" in trainers:
        results["sparsify"] = run_child({**base, "kind": "sparsify"}, tmp, "sparsify")
    if "saelens" in trainers:
        quarter = max(1, round(args.saelens_sweep_fraction * steps)) * BATCH
        for lr in SAELENS_LRS:
            spec = {**base, "kind": "saelens", "lr": lr, "tokens": quarter, "curve": False}
            sweep[lr] = run_child(spec, tmp, f"saelens-sweep-{lr:g}")["curve"][-1][1]
        best_lr = min(sweep, key=sweep.get)
        results["saelens"] = run_child({**base, "kind": "saelens", "lr": best_lr}, tmp, "saelens")
        share = f"{quarter / tokens:.0%}"
        print(f"\nSAELens lr tuned on the first {quarter:,} tokens ({share}), held-out FVU there:")
        print("  " + ", ".join(f"lr {lr:g}: {value:.4f}" for lr, value in sweep.items()) + f" -> lr {best_lr:g}")

    width = max(len(name) for name in results) + 2
    header = "".join(f"{h:>10}" for h in ("tokens/s", "FVU@25%", "FVU@50%", "FVU@100%", "dead@100%"))
    print(f"\n{'trainer':<{width}}{header}{'peak RSS MB':>13}   lr")
    for name, res in results.items():
        fvus = "".join(f"{_fvu_at(res, f, steps):>10.4f}" for f in FRACTIONS)
        dead = f"{_fvu_at(res, 1.0, steps, column=2):>10.1%}"
        print(f"{name:<{width}}{res['tokens_per_s']:>10,.0f}{fvus}{dead}{res['peak_rss_mb']:>13,.0f}   {res['lr']:.3g}")
    print("dead: share of the latents that fire on none of the held-out tokens")
    if args.json:
        record = {"tokens": tokens, "batch": BATCH, "results": results, "saelens_sweep": sweep}
        args.json.write_text(json.dumps(record, indent=1))

    ours = results.get("ours (default recipe)")
    ratios = {}
    for peer in ("sparsify", "saelens"):
        if ours is not None and peer in results:
            res = results[peer]
            fvu_ratio = _fvu_at(ours, 1.0, steps) / _fvu_at(res, 1.0, steps)
            ratios[peer] = (fvu_ratio, ours["tokens_per_s"] / res["tokens_per_s"])
            print(f"ours/{peer}: FVU ratio {fvu_ratio:.3f} (lower is better), tokens/s ratio {ratios[peer][1]:.2f}")

    if ours is not None:
        gflops = matmul_gflops(d_in)
        bound = gflops * 1e9 / topk_step_flops_per_token(d_in)
        print(
            f"FLOP bound: dense matmul {gflops:.1f} GFLOP/s here, {topk_step_flops_per_token(d_in) / 1e6:.2f} MFLOP "
            f"per token per step -> {bound:,.0f} tokens/s; ours reaches {ours['tokens_per_s'] / bound:.2f} of it"
        )

    checks = {}
    if "sparsify" in ratios:
        sparsify = results["sparsify"]
        checks["FVU <= sparsify's at 50% and 100%"] = all(
            _fvu_at(ours, f, steps) <= _fvu_at(sparsify, f, steps) for f in FRACTIONS if f >= 0.5
        )
        checks[f"tokens/s >= {TPS_TARGET_SPARSIFY}x sparsify's"] = ratios["sparsify"][1] >= TPS_TARGET_SPARSIFY
        checks["peak RSS <= sparsify's"] = ours["peak_rss_mb"] <= sparsify["peak_rss_mb"]
    if "saelens" in ratios:
        checks[f"tokens/s >= {TPS_TARGET_SAELENS}x SAELens' with FVU <= SAELens'"] = (
            ratios["saelens"][1] >= TPS_TARGET_SAELENS and ratios["saelens"][0] <= 1.0
        )
    for text, met in checks.items():
        print(f"target {text}: {'met' if met else 'NOT met'}")

    plot_path = args.plot or tmp / "fvu_vs_tokens.png"
    curves = {name: res for name, res in results.items() if "(= " not in name}
    plot(curves, plot_path, tokens)
    print(f"plot: {plot_path}")
    if ratios:
        parts = (f"ours/{peer} fvu_ratio={f:.3f} tps_ratio={t:.2f}" for peer, (f, t) in ratios.items())
        print("RESULT " + " ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

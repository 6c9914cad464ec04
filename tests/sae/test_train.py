"""SAE training: resume equals an uninterrupted run (Adam and schedule-free signum) and
never reuses stale work; equal budgets; Tilted ERM helps the rare tokens; the optimisation
recipe (schedule, decoder-gradient projection, width-scaled lr, AuxK scale)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ssae_steps.activations.sets import write_activation_set
from ssae_steps.config import ConfigError
from ssae_steps.sae import objective
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae, save_sae
from ssae_steps.sae.config import SAEConfig, TrainConfig, TrainingPlan
from ssae_steps.sae.objective import auxk_scale, step_losses, tilted_loss
from ssae_steps.sae.optim import (
    BASE_LR,
    effective_lr,
    evaluation_sae,
    lr_factor,
    make_optimizer,
    remove_parallel_decoder_grad,
)
from ssae_steps.sae.train import import_pretrained, train_sae


def planted(n: int, rare_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokens built from 3 of 32 common unit atoms; a few are one rare atom instead."""
    gen = torch.Generator().manual_seed(seed)
    d, common = 24, 32
    atoms = F.normalize(torch.randn(common + 1, d, generator=gen), dim=1)
    idx = torch.stack([torch.randperm(common, generator=gen)[:3] for _ in range(n)])
    x = ((torch.rand(n, 3, generator=gen) + 1).unsqueeze(-1) * atoms[idx]).sum(1)
    rare = torch.rand(n, generator=gen) < rare_fraction
    x[rare] = 4 * atoms[common]
    return x.numpy(), rare.numpy()


@pytest.mark.parametrize(
    ("arch", "optimizer"),
    [
        ("topk", "adam"),
        ("topk", "signum"),
        ("batchtopk", "adam"),
        ("matryoshka", "adam"),
        ("jumprelu", "adam"),
        ("relu", "adam"),
    ],
)
def test_resume_gives_the_uninterrupted_result(arch: str, optimizer: str, tmp_path: Path) -> None:
    """Killed after 13 of 24 steps (last checkpoint: step 10, inside the warm-up), the
    rerun ends with the same weights and log as an uninterrupted run: optimiser state
    (Adam moments, or the schedule-free z, step count and weight sum), the schedule,
    firing counters and (BatchTopK, Matryoshka) the inference threshold's running
    estimate carry over exactly."""
    acts, _ = planted(6000, 0.0)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    cfg = {
        "sae": {"architecture": arch, "d_sae": 64, "k": 4},
        "optimizer": optimizer,
        "warmup_fraction": 0.5,
        "lr_decay": "linear",
        "decay_fraction": 0.3,
        "batch_size": 500,
        "epochs": 2,
        "checkpoint_every": 5,
        "log_every": 2,
        "dead_after_tokens": 3000,
        "aux_k": 8,
    }
    whole = train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / "whole")
    assert train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / "cut", stop_after_steps=13) == {"stopped_at": 13}
    assert not (tmp_path / "cut" / "sae").exists()
    resumed = train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / "cut")
    assert resumed["steps"] == whole["steps"] == 24
    a, b = load_sae(tmp_path / "whole" / "sae"), load_sae(tmp_path / "cut" / "sae")
    assert a.cfg.architecture == arch
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, b.state_dict()[name], rtol=1e-5, atol=1e-6)
    files = [load_file(str(tmp_path / run / "sae" / "sae_weights.safetensors")) for run in ("whole", "cut")]
    assert files[0].keys() == files[1].keys()  # threshold included where there is one
    for name, tensor in files[0].items():
        torch.testing.assert_close(tensor, files[1][name], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "whole" / "train_log.csv").read_text() == (tmp_path / "cut" / "train_log.csv").read_text()


@pytest.mark.parametrize("optimizer", ["adam", "signum"])
def test_scale_free_tilt_lowers_the_rare_tokens_loss_at_realistic_loss_scales(optimizer: str, tmp_path: Path) -> None:
    """0.5% of tokens are one rare atom (coefficient 2) that the SAE, with fewer latents than
    atoms, leaves out under ERM. Per-token losses are at a real SAE's scale (median ~0.15 in
    normalised units; the rare tokens ~3x that). There raw TERM at t = 1 barely reweights
    (e^(0.4 - 0.15)); the scale-free tilt at the same t weights a token at r times the mean
    loss by e^r, and at equal steps lowers the rare tokens' loss several times more."""
    acts, rare = planted(20000, 0.005)
    acts[rare] /= 2  # the rare atom at coefficient 2 instead of 4
    # The rare tokens are the "tail concepts" (token id 1), whose weight share is logged.
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json", token_ids=rare.astype(int))
    x, rare = torch.from_numpy(acts), torch.from_numpy(rare)
    mean_norm_sq = float(x.norm(dim=1).mean()) ** 2  # per-token loss in the trainer's units
    loss = {}
    for name, tilt, scale in (("erm", 0.0, "batch_mean"), ("scale_free", 1.0, "batch_mean"), ("raw", 1.0, "none")):
        run = {"sae": {"d_sae": 24, "k": 3}, "tilt": tilt, "tilt_scale": scale, "optimizer": optimizer}
        run |= {"batch_size": 1000, "epochs": 8, "lr": 3e-3, "dead_after_tokens": 10**9}
        train_sae(TrainConfig.from_dict(run), manifest, tmp_path / name, tail_tokens=[1])
        with torch.no_grad():
            per_token = (load_sae(tmp_path / name / "sae")(x)[0] - x).square().sum(-1) / mean_norm_sq
        loss[name] = float(per_token[rare].mean())
        if name == "erm":
            assert 0.05 < float(per_token.median()) < 0.3 and loss["erm"] > 2 * float(per_token.mean()), loss
        log = pd.read_csv(tmp_path / name / "train_log.csv")
        assert 0.003 < log["tail_fraction"].mean() < 0.007  # 0.5% of each batch's tokens
        tail_weight = json.loads((tmp_path / name / "summary.json").read_text())["tail_weight"]
        if tilt == 0:
            np.testing.assert_allclose(log["tilt_ess"], 1.0)
            np.testing.assert_allclose(log["tilt_tail_share"], log["tail_fraction"])  # uniform weights
            assert tail_weight["upweight"] == pytest.approx(1.0)
        else:
            assert (log["tilt_ess"] < 1.0).all() and (log["tilt_top1_share"] > 0.01).all()
            # Badly reconstructed, the rare tokens get more than their share of the weight.
            assert (log["tilt_tail_share"] > log["tail_fraction"]).mean() > 0.8
            assert tail_weight["upweight"] > 1.2, tail_weight
    assert loss["scale_free"] < 0.9 * loss["erm"], loss  # measured about -20%
    assert loss["erm"] - loss["scale_free"] > 2 * (loss["erm"] - loss["raw"]), loss  # measured about 4x


def test_logging_the_tail_weight_does_not_change_training(tmp_path: Path) -> None:
    acts, rare = planted(4000, 0.01)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json", token_ids=rare.astype(int))
    run = {"sae": {"d_sae": 24, "k": 3}, "tilt": 10.0, "batch_size": 500, "epochs": 2, "log_every": 1}
    train_sae(TrainConfig.from_dict(run), manifest, tmp_path / "plain")
    train_sae(TrainConfig.from_dict(run), manifest, tmp_path / "logged", tail_tokens=[1])
    a, b = load_sae(tmp_path / "plain" / "sae"), load_sae(tmp_path / "logged" / "sae")
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, b.state_dict()[name], rtol=0, atol=0)
    plain, logged = (pd.read_csv(tmp_path / r / "train_log.csv") for r in ("plain", "logged"))
    assert plain["tail_fraction"].isna().all() and logged["tail_fraction"].notna().all()
    pd.testing.assert_frame_equal(
        plain.drop(columns=["tail_fraction", "tilt_tail_share"]),
        logged.drop(columns=["tail_fraction", "tilt_tail_share"]),
    )


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_other_architectures_train(arch: str, tmp_path: Path) -> None:
    acts, _ = planted(4000, 0.0)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    cfg = TrainConfig.from_dict(
        {
            "sae": {"architecture": arch, "d_sae": 64, "l1_coefficient": 0.01, "l0_coefficient": 0.001},
            "batch_size": 500,
            "epochs": 15,
            "lr": 3e-3,
        }
    )
    summary = train_sae(cfg, manifest, tmp_path / "out")
    log = (tmp_path / "out" / "train_log.csv").read_text().splitlines()
    first_fvu = float(log[1].split(",")[4])
    assert summary["final"]["fvu"] < first_fvu and summary["final"]["fvu"] < 0.5


def frequent_and_rare(n: int, seed: int) -> np.ndarray:
    """Tokens summing unit atoms that appear independently: 4 frequent ones (probability
    0.5, large coefficients: most of the variance), 12 less frequent and 16 rare ones
    (about 4 atoms per token in all)."""
    gen = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(32, 24, generator=torch.Generator().manual_seed(99)), dim=1)
    p = torch.tensor([0.5] * 4 + [0.1] * 12 + [0.03] * 16)
    scale = torch.tensor([2.0] * 4 + [1.0] * 28)
    coef = (torch.rand(n, 32, generator=gen) + 1) * scale * (torch.rand(n, 32, generator=gen) < p)
    return (coef @ atoms).numpy()


@pytest.fixture(scope="module")
def batchtopk_saes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A BatchTopK and a Matryoshka SAE (k 4, 64 latents; prefixes 4, 16, 64) trained by
    ``train_sae`` on the same frequent-and-rare tokens."""
    tmp = tmp_path_factory.mktemp("batchtopk")
    manifest = write_activation_set(frequent_and_rare(20000, seed=0), tmp / "acts" / "manifest.json")
    out = {}
    for arch in ("batchtopk", "matryoshka"):
        cfg = TrainConfig.from_dict(
            {
                "sae": {"architecture": arch, "d_sae": 64, "k": 4},
                "batch_size": 500,
                "epochs": 4,
                "lr": 3e-3,
                "dead_after_tokens": 5000,
                "aux_k": 16,
            }
        )
        summary = train_sae(cfg, manifest, tmp / arch)
        assert summary["final"]["l0"] == 4.0  # the training batch's mean L0 is exactly k
        out[arch] = tmp / arch / "sae"
    return out


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batchtopk_threshold_reproduces_k_on_held_out_tokens(arch: str, batchtopk_saes: dict[str, Path]) -> None:
    """At inference the single learned threshold (saved, reloaded) gives a mean L0 within
    15% of k on held-out tokens of the training distribution, measured the way the
    evaluation stage measures it."""
    from ssae_steps.evals.evaluate import reconstruction_metrics

    sae = load_sae(batchtopk_saes[arch])
    held_out = frequent_and_rare(5000, seed=1)
    metrics, _, _ = reconstruction_metrics(sae, held_out, np.zeros(len(held_out), dtype=bool), dense_threshold=0.5)
    assert float(sae.threshold) > 0
    assert metrics["l0"] == pytest.approx(4, rel=0.15), metrics
    assert metrics["fvu"] < 0.5, metrics


def _prefix_fvus(sae: SparseAutoencoder, x: torch.Tensor) -> list[float]:
    """Held-out FVU of the reconstruction from latents [:m] only (+ b_dec), per prefix m."""
    with torch.no_grad():
        z = sae.encode(x)
        out = []
        for m in sae.cfg.prefixes():
            x_hat = sae.decode(torch.cat([z[:, :m], torch.zeros_like(z[:, m:])], 1))
            out.append(float((x - x_hat).square().sum() / (x - x.mean(0)).square().sum()))
    return out


def test_each_matryoshka_prefix_reconstructs_on_its_own(batchtopk_saes: dict[str, Path]) -> None:
    """The first 4 latents of the Matryoshka SAE stand in for the 4 frequent atoms (most of
    the variance) and every larger prefix explains more; the BatchTopK SAE trained alike
    has no such order, so its first 4 latents explain little."""
    x = torch.from_numpy(frequent_and_rare(5000, seed=1))
    matryoshka = load_sae(batchtopk_saes["matryoshka"])
    assert matryoshka.cfg.prefixes() == [4, 16, 64]
    fvus = _prefix_fvus(matryoshka, x)
    assert fvus[0] < 0.6, fvus  # a quarter of the atoms' variance is left at best
    assert all(b < a - 0.02 for a, b in zip(fvus, fvus[1:], strict=False)), fvus
    plain = load_sae(batchtopk_saes["batchtopk"])
    plain.cfg = replace(plain.cfg, architecture="matryoshka", matryoshka_prefixes=[4, 16, 64])  # same rule
    first = _prefix_fvus(plain, x)[0]
    assert first > fvus[0] + 0.2, (first, fvus)


def test_matryoshka_loss_is_the_tilted_mean_over_prefixes() -> None:
    """Matryoshka's per-token loss is the mean over prefixes of each prefix's reconstruction
    loss, and Tilted ERM tilts that per-token mean (not each prefix separately)."""
    cfg = TrainConfig.from_dict({"sae": {"architecture": "matryoshka", "d_in": 24, "d_sae": 64, "k": 4}, "tilt": 2.0})
    sae = SparseAutoencoder(cfg.sae, input_scale=0.5, seed=1)
    x = torch.from_numpy(frequent_and_rare(200, seed=2))
    loss, stats, _ = step_losses(sae, x, cfg, torch.zeros(64, dtype=torch.long))
    with torch.no_grad():
        xn = x * sae.input_scale
        pre = torch.relu(sae.pre_activations(x))
        kth = pre.flatten().topk(4 * len(x)).values[-1]
        z = pre * (pre >= kth)
        losses = [(z[:, :m] @ sae.W_dec[:m] + sae.b_dec - xn).square().sum(-1) / 24 for m in (4, 16, 64)]
    expected = tilted_loss(torch.stack(losses).mean(0), 2.0)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    assert stats["mse"] == pytest.approx(float(losses[-1].mean()), rel=1e-4)  # logged: all latents


def test_pretrained_gsae_is_imported_and_finetuned(tmp_path: Path) -> None:
    """A pretrained SAE named in config becomes the GSAE; a width mismatch is a clear error."""
    acts, _ = planted(3000, 0.0)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    save_sae(SparseAutoencoder(SAEConfig(d_in=24, d_sae=48, k=4)), tmp_path / "pretrained")
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=48, k=4)), tmp_path / "too_wide")
    with pytest.raises(ConfigError, match=r"training.gsae.pretrained: .*too_wide has d_in=32.*d_model is 24"):
        import_pretrained(tmp_path / "too_wide", manifest, tmp_path / "gsae")
    import_pretrained(tmp_path / "pretrained", manifest, tmp_path / "gsae")
    plan = TrainingPlan.from_dict(
        {"batch_size": 500, "gsae": {"pretrained": str(tmp_path / "pretrained")}, "ssae": {"tokens": 6000}}
    )
    cfg = plan.run_config("ssae", "finetune", 0.0, k=4, seed=0)
    summary = train_sae(cfg, manifest, tmp_path / "ssae", init_from=tmp_path / "gsae" / "sae")
    assert summary["config"]["sae"]["d_sae"] == 48 and summary["steps"] == 12  # 6000 tokens / 500


def test_scratch_training_starts_b_dec_at_the_activation_mean(tmp_path: Path) -> None:
    """Residual streams carry a large shared offset; b_dec starts there (in normalised units)."""
    acts, _ = planted(2000, 0.0)
    acts = acts + 5.0
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    cfg = TrainConfig.from_dict({"sae": {"d_sae": 32, "k": 3}, "batch_size": 500, "lr": 1e-12, "checkpoint_every": 1})
    assert train_sae(cfg, manifest, tmp_path / "out", stop_after_steps=1) == {"stopped_at": 1}
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)["sae"]
    expected = torch.from_numpy(acts.mean(0)).float() * state["input_scale"]
    torch.testing.assert_close(state["b_dec"], expected, rtol=1e-4, atol=1e-4)


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_sae(a).state_dict(), load_sae(b).state_dict()
    return all(torch.equal(wa[name], wb[name]) for name in wa)


SMALL = {"sae": {"d_sae": 32, "k": 3}, "batch_size": 500, "checkpoint_every": 2, "dead_after_tokens": 2000, "aux_k": 4}


def test_retrained_gsae_changes_the_finetuned_ssae(tmp_path: Path) -> None:
    """The SSAE rerun after its GSAE was retrained (same path, new weights) must start from
    the new GSAE, not resume the finished run's checkpoint."""
    acts, _ = planted(3000, 0.0)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    gsae, ssae = tmp_path / "gsae", tmp_path / "ssae"
    finetune = TrainConfig.from_dict({**SMALL, "init": "finetune", "tokens": 3000})
    train_sae(TrainConfig.from_dict({**SMALL, "epochs": 1, "seed": 1}), manifest, gsae)
    train_sae(finetune, manifest, ssae, init_from=gsae / "sae")
    first = tmp_path / "first"
    shutil.copytree(ssae / "sae", first)
    assert not (ssae / "checkpoint.pt").exists()  # a finished run leaves nothing to resume

    train_sae(TrainConfig.from_dict({**SMALL, "epochs": 1, "seed": 2}), manifest, gsae)  # a changed GSAE config
    train_sae(
        TrainConfig.from_dict({**SMALL, "init": "finetune", "tokens": 3000}), manifest, ssae, init_from=gsae / "sae"
    )
    assert not _same_weights(first, ssae / "sae")
    fresh = tmp_path / "fresh"
    train_sae(
        TrainConfig.from_dict({**SMALL, "init": "finetune", "tokens": 3000}), manifest, fresh, init_from=gsae / "sae"
    )
    assert _same_weights(fresh / "sae", ssae / "sae")


def test_checkpoint_of_another_start_sae_is_not_resumed(tmp_path: Path) -> None:
    """A killed finetune leaves a checkpoint; if the starting SAE changes before the rerun,
    the rerun starts over from the new SAE (the key holds its content hash, not its path)."""
    acts, _ = planted(3000, 0.0)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    gsae = tmp_path / "gsae"
    train_sae(TrainConfig.from_dict({**SMALL, "epochs": 1, "seed": 1}), manifest, gsae)
    finetune = {**SMALL, "init": "finetune", "tokens": 3000}
    train_sae(TrainConfig.from_dict(finetune), manifest, tmp_path / "cut", init_from=gsae / "sae", stop_after_steps=4)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    train_sae(TrainConfig.from_dict({**SMALL, "epochs": 1, "seed": 2}), manifest, gsae)
    train_sae(TrainConfig.from_dict(finetune), manifest, tmp_path / "cut", init_from=gsae / "sae")
    train_sae(TrainConfig.from_dict(finetune), manifest, tmp_path / "fresh", init_from=gsae / "sae")
    assert _same_weights(tmp_path / "cut" / "sae", tmp_path / "fresh" / "sae")


def test_training_code_edit_changes_the_trained_sae(tmp_path: Path) -> None:
    """After a behaviour-changing edit of the training module (here: Adam's beta1), neither
    a finished run nor a killed one is reused: the finished run retrains, and the killed
    run's checkpoint (keyed on the old code) is not resumed, so it ends like a fresh run of
    the edited code."""
    acts, _ = planted(3000, 0.0)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    code = tmp_path / "code"
    shutil.copytree(Path(__file__).resolve().parents[2] / "ssae_steps", code / "ssae_steps")
    params = json.dumps({**SMALL, "ssae": {"tokens": 3000}})
    env = {**os.environ, "PYTHONPATH": str(code)}

    def run(out: Path, stop_after: int | None = None) -> None:
        if stop_after is None:
            cmd = [sys.executable, "-m", "ssae_steps.sae.train", "--params", params, "--role", "ssae", "--k", "3"]
            cmd += ["--manifest", str(manifest), "--out-dir", str(out), "--threads", "1"]
        else:  # killed after `stop_after` steps, leaving its checkpoint
            script = (
                "import json, sys; from ssae_steps.sae.config import TrainingPlan; "
                "from ssae_steps.sae.train import train_sae; "
                "cfg = TrainingPlan.from_dict(json.loads(sys.argv[1])).run_config('ssae', 'scratch', 0.0, 3, 0); "
                f"train_sae(cfg, sys.argv[2], sys.argv[3], stop_after_steps={stop_after})"
            )
            cmd = [sys.executable, "-c", script, params, str(manifest), str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]

    run(tmp_path / "finished")
    before = tmp_path / "before"
    shutil.copytree(tmp_path / "finished" / "sae", before)
    run(tmp_path / "killed", stop_after=3)
    assert (tmp_path / "killed" / "checkpoint.pt").exists()

    module = code / "ssae_steps" / "sae" / "optim.py"
    source = module.read_text()
    assert "betas=(0.9, 0.999)" in source
    module.write_text(source.replace("betas=(0.9, 0.999)", "betas=(0.5, 0.999)"))
    run(tmp_path / "finished")
    assert not _same_weights(before, tmp_path / "finished" / "sae")
    run(tmp_path / "killed")
    run(tmp_path / "fresh")
    assert _same_weights(tmp_path / "fresh" / "sae", tmp_path / "killed" / "sae")
    assert _same_weights(tmp_path / "fresh" / "sae", tmp_path / "finished" / "sae")


def test_token_budget_gives_equal_steps_for_small_and_large_sets(tmp_path: Path) -> None:
    """SSAEs train a fixed number of tokens: a set smaller than that is repeated."""
    small, _ = planted(1500, 0.0)
    large, _ = planted(6000, 0.0, seed=1)
    summaries = {}
    for name, acts in (("small", small), ("large", large)):
        manifest = write_activation_set(acts, tmp_path / name / "manifest.json")
        cfg = TrainingPlan.from_dict({**SMALL, "ssae": {"tokens": 5000}}).run_config("ssae", "scratch", 0.0, 3, 0)
        summaries[name] = train_sae(cfg, manifest, tmp_path / f"out-{name}")
    assert summaries["small"]["steps"] == summaries["large"]["steps"] == 10
    assert summaries["small"]["tokens"] == summaries["large"]["tokens"] == 5000
    assert summaries["small"]["passes"] == pytest.approx(5000 / 1500, rel=1e-3)


def _log(path: Path) -> list[dict[str, float]]:
    with (path / "train_log.csv").open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_lr_schedule_shape(tmp_path: Path) -> None:
    """Linear warm-up over the first 5% of the steps from ~0 to the peak, flat, then a
    linear (or cosine) decay to ~0 over the last 20%; the trainer steps with exactly that."""
    linear = TrainConfig(warmup_fraction=0.05, decay_fraction=0.2, lr_decay="linear")
    factors = [lr_factor(linear, step, 100) for step in range(100)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factors[5:81] == pytest.approx([1.0] * 76)
    assert factors[90] == pytest.approx(0.5) and factors[99] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(factors[80:], factors[81:], strict=False))
    assert factors[81] - factors[82] == pytest.approx(0.05)  # linear: equal steps down
    cosine = replace(linear, lr_decay="cosine")
    assert lr_factor(cosine, 2, 100) == pytest.approx(0.6)
    assert lr_factor(cosine, 85, 100) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(cosine, 90, 100) == pytest.approx(0.5)
    assert 0 < lr_factor(cosine, 99, 100) < 0.01
    assert lr_factor(replace(linear, lr_decay="none"), 99, 100) == 1.0

    acts, _ = planted(2000, 0.0)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    cfg = {"sae": {"d_sae": 32, "k": 3}, "batch_size": 100, "tokens": 4000, "lr": 1e-3, "log_every": 1}
    cfg |= {"warmup_fraction": 0.1, "lr_decay": "linear", "decay_fraction": 0.25}
    train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / "out")
    used = [row["lr"] for row in _log(tmp_path / "out")]
    assert len(used) == 40
    assert used[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert used[4:31] == pytest.approx([1e-3] * 27)
    assert used[30:] == pytest.approx([1e-3 * (10 - i) / 10 for i in range(10)])


def test_projected_decoder_gradient_is_orthogonal_to_each_row(tmp_path: Path, monkeypatch) -> None:
    """On a real backward of one batch the decoder gradient has components along the rows;
    after the projection each row's gradient is orthogonal to it, and the trainer hands the
    optimiser only projected gradients (unless ``project_decoder_grad`` is off)."""
    acts, _ = planted(500, 0.0)
    cfg = TrainConfig.from_dict({"sae": {"d_in": 24, "d_sae": 64, "k": 4}})
    sae = SparseAutoencoder(cfg.sae, input_scale=2.0)
    x = torch.from_numpy(acts)
    loss, _, _ = step_losses(sae, x, cfg, torch.zeros(64, dtype=torch.long))
    loss.backward()
    grad, w = sae.W_dec.grad, sae.W_dec.detach()
    cosine = lambda g: ((g * w).sum(-1) / (g.norm(dim=-1) * w.norm(dim=-1)).clamp_min(1e-30)).abs()  # noqa: E731
    live = grad.norm(dim=-1) > 0
    assert live.sum() >= 4 and float(cosine(grad)[live].max()) > 0.05
    before = grad.clone()
    remove_parallel_decoder_grad(sae.W_dec)
    assert float(cosine(sae.W_dec.grad)[live].max()) < 1e-5
    # Only the parallel part went: the rest of the gradient is unchanged.
    torch.testing.assert_close(sae.W_dec.grad, before - (before * w).sum(-1, keepdim=True) * w, atol=1e-7, rtol=1e-5)

    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    seen: list[float] = []
    adam_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        w_dec = next(p for group in self.param_groups for p in group["params"] if p.shape == (64, 24))
        g, w = w_dec.grad, w_dec.detach()
        seen.append(float(((g * w).sum(-1) / g.norm(dim=-1).clamp_min(1e-30)).abs().max()))
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    for project in (True, False):
        seen.clear()
        cfg = {"sae": {"d_sae": 64, "k": 4}, "batch_size": 100, "tokens": 300, "project_decoder_grad": project}
        train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / f"p{project}")
        assert len(seen) == 3
        assert (max(seen) < 1e-5) if project else (min(seen) > 1e-3), seen


def test_width_scaled_learning_rate_is_recorded(tmp_path: Path) -> None:
    """lr None: base / sqrt(d_sae / 2^14) for the optimiser (Adam 1.4e-3, measured; signum
    5e-3, sparsify's), Adam's times (batch / 1024) ** 0.25; an explicit lr is kept. summary.json
    records the value used."""
    acts, _ = planted(1000, 0.0)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    assert BASE_LR == {"adam": 1.4e-3, "signum": 5e-3}
    base = {"batch_size": 250, "tokens": 1000, "warmup_fraction": 0, "lr_decay": "none", "log_every": 1}
    for optimizer, d_sae, lr in (("adam", 64, None), ("signum", 256, None), ("adam", 64, 1e-3), ("signum", 64, 0.02)):
        cfg = TrainConfig.from_dict({**base, "sae": {"d_sae": d_sae, "k": 4}, "optimizer": optimizer, "lr": lr})
        out = tmp_path / f"{optimizer}-{d_sae}-{lr}"
        summary = train_sae(cfg, manifest, out)
        expected = lr if lr is not None else BASE_LR[optimizer] / math.sqrt(d_sae / 2**14)
        if lr is None and optimizer == "adam":
            expected *= (250 / 1024) ** 0.25
        assert summary["lr"] == pytest.approx(expected, rel=1e-12) and summary["optimizer"] == optimizer
        assert json.loads((out / "summary.json").read_text())["lr"] == pytest.approx(expected, rel=1e-12)
        assert [row["lr"] for row in _log(out)] == pytest.approx([expected] * 4)
    assert BASE_LR["adam"] / math.sqrt(64 / 2**14) == pytest.approx(2.24e-2)  # 1.4e-3 * 16
    # The batch rule: 4x the batch, sqrt(2)x Adam's lr; signum's does not move.
    for optimizer, ratio in (("adam", math.sqrt(2)), ("signum", 1.0)):
        small, large = (
            effective_lr(TrainConfig.from_dict({"sae": {"d_sae": 8192}, "optimizer": optimizer, "batch_size": b}))
            for b in (1024, 4096)
        )
        assert large / small == pytest.approx(ratio)
    assert effective_lr(TrainConfig.from_dict({"sae": {"d_sae": 8192}})) == pytest.approx(1.4e-3 * math.sqrt(2))


def test_auxk_loss_is_scaled_by_the_dead_fraction(monkeypatch) -> None:
    """AuxK weight min(n_dead / aux_k, 1) (sparsify): 3 dead latents with aux_k 8 weigh
    3/8 of the same AuxK reconstruction with aux_k 3 (both use the 3 dead latents)."""
    assert auxk_scale(3, 8) == 0.375 and auxk_scale(8, 8) == 1.0 and auxk_scale(12, 8) == 1.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen) + 1.0
    since = torch.zeros(16, dtype=torch.long)
    since[[2, 7, 11]] = 10**6  # three dead latents
    aux = {}
    for aux_k in (3, 8):
        cfg = TrainConfig(
            sae=SAEConfig(d_in=8, d_sae=16, k=2), aux_k=aux_k, dead_after_tokens=1000, aux_dead_fraction_scale=True
        )
        sae = SparseAutoencoder(cfg.sae, seed=1)
        _, stats, _ = step_losses(sae, x, cfg, since)
        aux[aux_k] = stats["aux_loss"]
    assert aux[3] > 0.01
    assert aux[8] == pytest.approx(3 / 8 * aux[3], rel=1e-5)
    plain = replace(cfg, aux_dead_fraction_scale=False)  # off (the default): full weight
    assert step_losses(SparseAutoencoder(cfg.sae, seed=1), x, plain, since)[1]["aux_loss"] == pytest.approx(aux[3])
    # 12 dead latents, aux_k 8: full weight, the same as with the scale switched off.
    since[:12] = 10**6
    cfg = TrainConfig(
        sae=SAEConfig(d_in=8, d_sae=16, k=2), aux_k=8, dead_after_tokens=1000, aux_dead_fraction_scale=True
    )
    scaled = step_losses(SparseAutoencoder(cfg.sae, seed=1), x, cfg, since)[1]["aux_loss"]
    monkeypatch.setattr(objective, "auxk_scale", lambda n_dead, aux_k: 1.0)
    unscaled = step_losses(SparseAutoencoder(cfg.sae, seed=1), x, cfg, since)[1]["aux_loss"]
    assert scaled > 0.01 and scaled == pytest.approx(unscaled, rel=1e-6)


def test_signum_saves_the_schedule_free_average(tmp_path: Path) -> None:
    """Schedule-free signum trains at y and saves x, the schedule-free average. The fused
    optimiser takes the steps of schedulefree's ScheduleFreeWrapper around SignSGD (as
    sparsify trains), including with a changing learning rate; the evaluation weights
    equal the wrapper's eval(); the saved SAE is them (its decoder rows, unlike the
    renormalised training rows, are not exactly unit norm)."""
    from schedulefree import ScheduleFreeWrapper

    class SignSGD(torch.optim.Optimizer):  # sparsify's sign_sgd.py
        def __init__(self, params, lr: float) -> None:
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None) -> None:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad.sign(), alpha=-group["lr"])

    acts, _ = planted(1000, 0.0)
    x = torch.from_numpy(acts)
    cfg = TrainConfig(sae=SAEConfig(d_in=24, d_sae=32, k=3), optimizer="signum")
    sae, reference = SparseAutoencoder(cfg.sae), SparseAutoencoder(cfg.sae)
    with torch.no_grad():  # the wrapper swaps through byte views (unit last stride); W_enc is a transpose
        for p in [*sae.parameters(), *reference.parameters()]:
            p.data = p.data.contiguous()
    optimizer = make_optimizer(cfg, sae, 0.01)
    wrapper = ScheduleFreeWrapper(SignSGD(reference.parameters(), lr=0.01), momentum=0.95)
    wrapper.train()
    for step, batch in enumerate(x.split(125)):
        for model, opt in ((sae, optimizer), (reference, wrapper)):
            opt.zero_grad()
            step_losses(model, batch, cfg, torch.zeros(32, dtype=torch.long))[0].backward()
            for group in opt.param_groups:
                group["lr"] = 0.01 * min(1.0, (step + 1) / 4)  # a warm-up: lr_max and weights change
            opt.step()
            model.normalize_decoder()
        for name, tensor in sae.state_dict().items():
            torch.testing.assert_close(tensor, reference.state_dict()[name], rtol=1e-6, atol=1e-7, msg=name)
    averaged = evaluation_sae(sae, optimizer)
    assert not torch.equal(averaged.W_dec, sae.W_dec)
    wrapper.eval()
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(averaged.state_dict()[name], tensor, rtol=1e-6, atol=1e-7, msg=name)

    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json")
    last = {}
    run = {"sae": {"d_sae": 32, "k": 3}, "optimizer": "signum", "batch_size": 250, "tokens": 2000}
    train_sae(TrainConfig.from_dict(run), manifest, tmp_path / "out", on_step=lambda s, cur: last.update(sae=cur()))
    saved, current = load_sae(tmp_path / "out" / "sae"), last["sae"]
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(tensor, current.state_dict()[name], rtol=1e-5, atol=1e-6)
    assert float((saved.W_dec.detach().norm(dim=-1) - 1).abs().max()) > 1e-4


def test_training_report_shows_the_tilt_diagnostics(tmp_path: Path) -> None:
    from ssae_steps.sae.report import training_report

    acts, rare = planted(2000, 0.01)
    manifest = write_activation_set(acts, tmp_path / "acts" / "manifest.json", token_ids=rare.astype(int))
    runs = {}
    for tilt in (0.0, 5.0):
        run = {"sae": {"d_sae": 16, "k": 3}, "tilt": tilt, "batch_size": 200, "log_every": 1}
        # As in the workflow, only tilted runs log the tail tokens' weight.
        train_sae(TrainConfig.from_dict(run), manifest, tmp_path / f"t{tilt:g}", tail_tokens=[1] if tilt else None)
        runs[f"ssae/planted/finetune-t{tilt:g}-k3"] = str(tmp_path / f"t{tilt:g}")
    training_report(runs, tmp_path / "summary.csv", tmp_path / "curves.png")
    table = pd.read_csv(tmp_path / "summary.csv").set_index("tilt")
    assert table.loc[0.0, "tilt_ess"] == pytest.approx(1.0) and table.loc[0.0, "tilt_top1_share"] == pytest.approx(0.01)
    assert table.loc[5.0, "tilt_ess"] < 0.9 and table.loc[5.0, "tilt_top1_share"] > 0.02
    assert math.isnan(table.loc[0.0, "tail_upweight"]) and table.loc[5.0, "tail_upweight"] > 1.2
    assert (table["tilt_scale"] == "batch_mean").all()
    assert (tmp_path / "curves.png").stat().st_size > 10_000

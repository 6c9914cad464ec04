from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def wiki_texts(limit: int = 400, topic: str | None = None) -> list[dict[str, str]]:
    """Real English records from the shipped Wikipedia summaries package."""
    from ssae_steps.data.sources import read_wiki_summaries

    out = []
    for text, labels in read_wiki_summaries():
        if len(text) >= 200 and (topic is None or labels["topic"] == topic):
            out.append({"text": text, **labels})
            if len(out) >= limit:
                break
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [r["text"] for r in wiki_texts(600)]
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts)


@pytest.fixture(scope="session")
def small_corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A general and a physical-sciences jsonl file of real Wikipedia summaries."""
    root = tmp_path_factory.mktemp("corpora")
    files = {}
    for name, topic, limit in [("general", None, 240), ("physics", "Physical sciences", 60)]:
        path = root / f"{name}.jsonl"
        with path.open("w") as handle:
            for row in wiki_texts(limit, topic):
                handle.write(json.dumps(row) + "\n")
        files[name] = path
    return files


SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
# Snakemake imports every installed executor plugin on start-up, and the SLURM plugin then
# runs `scontrol show config`, which waits ~9 s when SLURM is installed (as the SLURM test
# installs it) but no controller answers. Runs outside a test cluster see an `scontrol`
# that fails at once, as on a machine without SLURM.
NO_SLURM_BIN = Path(__file__).resolve().parent / "no_slurm_bin"


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env or {}), "HF_HUB_OFFLINE": "1"}
    if "SLURM_CONF" not in env:
        env["PATH"] = f"{NO_SLURM_BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="session")
def pipeline_config(
    tiny_model_dir: Path, small_corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    workdir = tmp_path_factory.mktemp("local_run")
    config = {
        "seed": 7,
        "model": {"source": "local", "name": str(tiny_model_dir), "hook_layer": 2},
        "corpora": {
            "general": {
                "role": "general",
                "heldout_fraction": 0.1,
                "sources": [
                    {"kind": "jsonl", "path": str(small_corpora["general"]), "label_fields": ["topic"]},
                    {"kind": "jsonl", "path": str(small_corpora["physics"])},
                    {"kind": "wikibooks_recipes", "max_docs": 40},
                ],
            },
            "physics": {
                "role": "subdomain",
                "heldout_fraction": 0.25,
                "sources": [
                    {"kind": "jsonl", "path": str(small_corpora["physics"]), "label_fields": ["title", "topic"]},
                ],
            },
        },
        "retrieval": {"token_budget": 12000, "neighbours_per_seed": 5, "embedder": {"batch_size": 32}},
        "activations": {
            "context_length": 32,
            "batch_size": 8,
            "shard_tokens": 1500,
            "dtype": "float32",
            "max_train_tokens": 4000,
            "max_heldout_tokens": 3000,  # enough held-out documents for validation and test parts
        },
        "training": {
            "sae": {"d_sae": 128, "k": 8},
            "batch_size": 256,
            "lr": 0.001,
            "aux_k": 32,
            "dead_after_tokens": 2000,
            "log_every": 2,
            "checkpoint_every": 5,
            # One init: scratch training is the GSAE's path, tested there and in test_train_sae.
            "ssae": {"inits": ["finetune"], "tilts": [0.0], "tokens": 4096},
            "k_sweep": [4],
            "seeds": [0],
        },
        # A 768-token vocabulary and a few thousand tokens: looser tail-concept thresholds.
        "evaluation": {
            "loss_tokens": 1000,
            "tail": {"min_ratio": 2.0, "max_general_frequency": 0.01, "min_count": 2},
            "top_latents": 3,
        },
        # At most 40 articles per real group (25 of them test): the stage's paths, not its numbers.
        "debias": {"n_latents": [1, 5], "random_repeats": 2, "bootstrap_samples": 200, "data": {"max_per_group": 40}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def local_run(pipeline_config: Path) -> Path:
    """The tiny pipeline run once, locally with 2 cores; returns its working directory."""
    result = snakemake(pipeline_config.parent, "--configfile", str(pipeline_config), "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return pipeline_config.parent

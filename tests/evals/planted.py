"""Evaluation files of planted SAEs (metrics JSON and per-document sums), for the report
and TERM-study tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssae_steps.evals.per_doc import per_doc_path, write_per_doc

N_DOCS, D = 40, 4


def planted_run(out: Path, name: str, error_scale: float, noise_seed: int, validation_fvu: float) -> str:
    """Evaluation files of one SAE whose per-document error is ``error_scale`` times a
    shared per-document difficulty, with a little noise of its own."""
    shared = np.random.default_rng(0)
    tokens = shared.integers(20, 80, N_DOCS)
    difficulty = shared.lognormal(0, 0.5, N_DOCS)
    sum_x = shared.normal(size=(N_DOCS, D)) * tokens[:, None]
    sum_sq = 3.0 * D * tokens + np.square(sum_x).sum(1) / tokens
    own = np.random.default_rng(noise_seed).normal(1, 0.05, N_DOCS)
    per_set, sets = {}, {}
    for set_name in ("general", "subdomain"):
        err = error_scale * difficulty * own * tokens
        clean = 3.0 * tokens
        per_set[set_name] = {
            "doc_id": np.array([f"doc{i:03d}" for i in range(N_DOCS)]),
            "tokens": tokens,
            "sq_err": err,
            "sum_sq": sum_sq,
            "l0_sum": 8.0 * tokens,
            "sum_x": sum_x,
            "loss_tokens": tokens.astype(float),
            "clean_ce": clean,
            "spliced_ce": clean + err / 10,
            "kl": err / 12,
        }
        sets[set_name] = {
            "tokens": int(tokens.sum()),
            "validation": {"fvu": validation_fvu, "l0": 8.0, "docs": N_DOCS},
            "mse_per_dim": 0.1,
            "dead_fraction": 0.0,
            "dense_fraction": 0.0,
            "tail_tokens": 0,
            "tail_fvu": float("nan"),
            "head_fvu": 0.1,
            "loss_tokens": int(tokens.sum()),
            "loss_docs": N_DOCS,
        }
    path = out / "runs" / f"{name.replace('/', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tail = {"recall": 0.0, "mean_best_f1": 0.0, "concepts": 0, "evaluable": 0}
    dead = {"fraction": 0.25, "tokens": int(2 * tokens.sum())}
    path.write_text(json.dumps({"sets": sets, "tail": tail, "dead": dead}))
    write_per_doc(per_doc_path(path), per_set)
    return str(path)


def planted_types(captured: list[bool], frequencies: list[float], n_docs: int = 10) -> dict:
    """An evaluation JSON's ``types`` section for types ``0..n-1``, each once in each of
    ``n_docs`` test documents, whose chosen latent fires exactly on it (test F1 1, captured)
    or only on another row of the same documents (F1 0)."""
    counts: dict[str, list] = {"docs": [f"subdomain/doc{d:03d}" for d in range(n_docs)]}
    entries = [(t, d) for t in range(len(captured)) for d in range(n_docs)]
    counts |= {
        "type": [t for t, _ in entries],
        "doc": [d for _, d in entries],
        "tp": [int(captured[t]) for t, _ in entries],
        "fires": [1] * len(entries),
        "support": [1] * len(entries),
    }
    return {
        "token_id": list(range(len(captured))),
        "general_frequency": list(frequencies),
        "f1": [1.0 if c else 0.0 for c in captured],
        "captured": list(captured),
        "not_on_test": [],
        "detection_f1": 0.5,
        "test_counts": counts,
    }

"""TracIn reranking (ssae_steps.retrieval.tracin) and the GSAE snapshots it reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ssae_steps.activations.sets import write_activation_set
from ssae_steps.config import ConfigError
from ssae_steps.evals.compare import comparison_pairs
from ssae_steps.retrieval.config import RetrievalConfig, TracInConfig
from ssae_steps.retrieval.retrieve import select
from ssae_steps.retrieval.tracin import (
    CountSketch,
    Snapshot,
    autograd_directional_derivatives,
    directional_derivatives,
    document_gradients,
    influence_scores,
    sae_parameters,
    seed_gradient,
    select_by_tracin,
    token_losses,
)
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae
from ssae_steps.sae.config import SAEConfig, TrainConfig
from ssae_steps.sae.train import snapshot_weights, train_sae

D_IN = 16


def random_sae(arch: str = "topk", d_in: int = D_IN, d_sae: int = 48, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=4), input_scale=1.3, seed=seed)
    with torch.no_grad():  # untied, with biases, so every parameter's term is exercised
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return sae


def explicit_token_scores(sae: SparseAutoencoder, x: torch.Tensor, g: dict[str, torch.Tensor]) -> list[float]:
    """<grad l_t, G> one token at a time, by plain autograd."""
    out = []
    for row in x:
        sae.zero_grad(set_to_none=True)
        token_losses(sae, row[None]).sum().backward()
        out.append(sum(float((p.grad * g[n]).sum()) for n, p in sae_parameters(sae).items() if p.grad is not None))
    return out


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_directional_derivatives_are_the_per_token_gradient_inner_products(arch: str) -> None:
    sae = random_sae(arch)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, D_IN, generator=gen)
    g = {n: torch.randn(p.shape, generator=gen) for n, p in sae_parameters(sae).items()}
    fast = directional_derivatives(sae, x, g)
    expected = torch.tensor(explicit_token_scores(sae, x, g))
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-4)
    if arch == "topk":  # the written-out TopK form agrees with the generic autograd one
        torch.testing.assert_close(fast, autograd_directional_derivatives(sae, x, g), rtol=1e-4, atol=1e-4)


def planted_documents(seed: int = 0) -> dict[str, np.ndarray]:
    """General text spans dims 4-11. Seed documents and *planted* candidates live in dims
    0-3 (a subdomain the GSAE never saw); *decoys* live in dims 12-15: just as badly
    reconstructed (as large a loss and gradient) but in another direction."""
    rng = np.random.default_rng(seed)

    def docs(n_docs: int, dims: slice, tokens: int = 12) -> np.ndarray:
        x = 0.05 * rng.standard_normal((n_docs, tokens, D_IN))
        x[:, :, dims] += rng.standard_normal((n_docs, tokens, dims.stop - dims.start)) + 1.0
        return x.astype(np.float32)

    general = 0.05 * rng.standard_normal((6000, D_IN))
    general[:, 4:12] += rng.standard_normal((6000, 8))
    return {
        "general": general.astype(np.float32),
        "seed": docs(10, slice(0, 4)),
        "planted": docs(8, slice(0, 4)),
        "decoy": docs(8, slice(12, 16)),
    }


def trained_gsae(tmp_path: Path, general: np.ndarray, snapshots: int) -> Path:
    manifest = write_activation_set(general, tmp_path / "general" / "manifest.json")
    cfg = TrainConfig.from_dict(
        {"sae": {"d_sae": 32, "k": 4}, "batch_size": 200, "epochs": 1, "checkpoint_every": 7, "aux_k": 8}
    )
    train_sae(cfg, manifest, tmp_path / "gsae", snapshots=snapshots)
    return tmp_path / "gsae"


def candidate_files(tmp_path: Path, parts: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """A retrieval table (decoys ranked above the planted documents, as a lexical match
    might) and the candidates' activation set."""
    rows, acts, ids = [], [], []
    retrieved = [("decoy", i) for i in range(len(parts["decoy"]))] + [
        ("planted", i) for i in range(len(parts["planted"]))
    ]
    for i in range(len(parts["seed"])):
        rows.append({"doc_id": f"seed-{i}", "origin": "seed", "score": np.nan, "rank": 0})
    for rank, (kind, i) in enumerate(retrieved, start=1):
        rows.append({"doc_id": f"{kind}-{i}", "origin": "retrieved", "score": 1.0 / rank, "rank": rank})
    for row in rows:
        kind, i = row["doc_id"].split("-")
        doc = parts[kind][int(i)]
        row |= {"text": row["doc_id"], "source": "test", "split": "train", "n_tokens": len(doc), "strategy": "bm25"}
        acts.append(doc)
        ids += [row["doc_id"]] * len(doc)
    table_path = tmp_path / "candidates.parquet"
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), table_path)
    order = np.random.default_rng(1).permutation(len(ids))  # stored shuffled, as the cache stores windows
    manifest = write_activation_set(
        np.concatenate(acts)[order], tmp_path / "cand" / "manifest.json", shard_rows=97, doc_ids=[ids[i] for i in order]
    )
    return table_path, manifest


def test_tracin_puts_candidates_sharing_the_seed_gradient_first(tmp_path: Path) -> None:
    parts = planted_documents()
    gsae = trained_gsae(tmp_path, parts["general"], snapshots=3)
    table, acts = candidate_files(tmp_path, parts)
    budget = 10 * 12 + 8 * 12  # the seeds and room for exactly eight candidates
    summary = select_by_tracin(
        "bm25_tracin",
        TracInConfig(batch_tokens=50),
        budget,
        table,
        acts,
        gsae,
        tmp_path / "out.parquet",
        tmp_path / "out.json",
    )
    chosen = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert chosen["origin"].tolist() == ["seed"] * 10 + ["retrieved"] * 8  # seeds first
    assert sorted(chosen.loc[chosen["origin"] == "retrieved", "doc_id"]) == [f"planted-{i}" for i in range(8)]
    assert chosen["rank"].tolist()[10:] == list(range(1, 9))
    assert chosen["n_tokens"].sum() <= budget and not chosen["doc_id"].duplicated().any()
    # The retrieval order is kept beside the TracIn score; the base strategy alone took the decoys.
    assert chosen["retrieval_rank"].iloc[10:].min() > 8 and summary["kept_from_base_top"] == 0
    stored = json.loads((gsae / "snapshots" / "manifest.json").read_text())["snapshots"]
    assert [c["step"] for c in summary["tracin"]["checkpoints"]] == [s["step"] for s in stored] and len(stored) == 3


def test_self_influence_is_positive() -> None:
    sae = random_sae()
    gen = torch.Generator().manual_seed(5)
    for trial in range(5):
        x = torch.randn(20, D_IN, generator=gen) * (trial + 1)
        doc = np.zeros(20, dtype=np.int64)
        (score,) = influence_scores([Snapshot(sae, 0.01, 1)], x, doc, [(x, doc)], 1, TracInConfig())
        assert score > 0


def test_scores_match_explicit_document_gradients_and_their_projection(tmp_path: Path) -> None:
    """Exact scores = inner products of explicit per-document gradients (tight); count-
    sketched ones agree within 5% of the largest score (2**14 buckets, ~1.2k parameters),
    and rank the documents alike."""
    sae = random_sae(d_sae=32)
    snaps = [Snapshot(sae, 0.5, 1), Snapshot(random_sae(d_sae=32, seed=9), 0.25, 2)]
    gen = torch.Generator().manual_seed(11)
    seed_x, seed_doc = torch.randn(30, D_IN, generator=gen), np.repeat(np.arange(3), 10)
    x = torch.randn(200, D_IN, generator=gen) + torch.linspace(-1, 1, D_IN)
    doc = np.random.default_rng(0).integers(0, 12, 200)
    batches = [(x[i : i + 64], doc[i : i + 64]) for i in range(0, 200, 64)]
    exact = influence_scores(snaps, seed_x, seed_doc, batches, 12, TracInConfig())
    explicit = np.zeros(12)
    for snap in snaps:
        g = seed_gradient(snap.sae, seed_x, seed_doc, 1000)
        docs, grads = document_gradients(snap.sae, x, doc)
        explicit[docs] += snap.weight * (grads @ torch.cat([v.reshape(-1) for v in g.values()])).numpy()
    np.testing.assert_allclose(exact, explicit, rtol=1e-4, atol=1e-6)
    projected = influence_scores(snaps, seed_x, seed_doc, batches, 12, TracInConfig(projection_dim=2**14))
    assert np.abs(projected - exact).max() <= 0.05 * np.abs(exact).max()
    assert np.corrcoef(np.argsort(np.argsort(projected)), np.argsort(np.argsort(exact)))[0, 1] > 0.9


def test_count_sketch_preserves_inner_products_on_average() -> None:
    shapes = {"a": torch.Size([50, 20]), "b": torch.Size([30])}
    gen = torch.Generator().manual_seed(2)
    u = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    v = {n: u[n] + torch.randn(s, generator=gen) for n, s in shapes.items()}
    true = sum(float((u[n] * v[n]).sum()) for n in shapes)
    estimates = [float(CountSketch(shapes, 64, seed=s)(u) @ CountSketch(shapes, 64, seed=s)(v)) for s in range(200)]
    assert abs(np.mean(estimates) - true) < 0.1 * abs(true)


def test_gsae_snapshots_are_evenly_spaced_weighted_and_survive_a_resume(tmp_path: Path) -> None:
    parts = planted_documents()
    manifest = write_activation_set(parts["general"], tmp_path / "acts" / "manifest.json")
    cfg = {"sae": {"d_sae": 32, "k": 4}, "batch_size": 200, "epochs": 1, "checkpoint_every": 4, "aux_k": 8}
    train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / "whole", snapshots=3)
    assert train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / "cut", snapshots=3, stop_after_steps=22) == {
        "stopped_at": 22
    }
    train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / "cut", snapshots=3)
    info = json.loads((tmp_path / "whole" / "snapshots" / "manifest.json").read_text())
    assert [s["step"] for s in info["snapshots"]] == [10, 20, 30]
    expected = snapshot_weights(TrainConfig.from_dict(cfg), [10, 20, 30], 30)
    assert [s["lr_weight"] for s in info["snapshots"]] == pytest.approx(expected)
    assert expected[1] > expected[2] > 0  # the last third holds the decay
    for entry in info["snapshots"]:
        a = load_sae(tmp_path / "whole" / "snapshots" / entry["directory"])
        b = load_sae(tmp_path / "cut" / "snapshots" / entry["directory"])
        for name, tensor in a.state_dict().items():
            torch.testing.assert_close(tensor, b.state_dict()[name])
    final, last = load_sae(tmp_path / "whole" / "sae"), load_sae(tmp_path / "whole" / "snapshots" / "step-000030")
    torch.testing.assert_close(final.W_enc, last.W_enc)
    # A fresh run with no snapshots leaves only an empty manifest.
    train_sae(TrainConfig.from_dict(cfg), manifest, tmp_path / "whole")
    assert sorted(p.name for p in (tmp_path / "whole" / "snapshots").iterdir()) == ["manifest.json"]


def test_tracin_strategies_need_the_seed_documents_and_their_own_stage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retrieval.include_seed"):
        RetrievalConfig.from_dict({"strategies": ["dense", "dense_tracin"], "include_seed": False})
    with pytest.raises(ConfigError, match="ssae_steps.retrieval.tracin"):
        select("bm25_tracin", RetrievalConfig(), tmp_path / "a", tmp_path / "b", None, tmp_path / "c", tmp_path / "d")


def test_a_tracin_ssae_is_compared_with_its_base_strategy() -> None:
    runs = ["gsae/k8", "ssae/dense/finetune-t0-k8", "ssae/dense_tracin/finetune-t0-k8", "ssae/random/finetune-t0-k8"]
    from ssae_steps.sae.runs import parse_run

    table = pd.DataFrame([{"run": r, "k": 8, **parse_run(r)} for r in runs])
    pairs = comparison_pairs(table, 8)
    assert ("ssae/dense_tracin/finetune-t0-k8", "SSAE dense", "ssae/dense/finetune-t0-k8") in pairs
    assert not any(ref == "SSAE dense_tracin" for _, ref, _ in pairs)

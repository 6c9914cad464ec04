"""Captured token types with documents and types resampled together: the paired interval
covers a planted difference and includes zero for planted equal SAEs (replicated); the
per-document counts give back the F1 of the sample; Fig. 6's normalised cumulative curve."""

from __future__ import annotations

import numpy as np
import pytest

from ssae_steps.evals.capture import (
    TypeCounts,
    captured_share,
    normalised_cumulative,
    paired_share_difference,
    share_interval,
    stratified_weights,
)

N_TYPES, N_DOCS = 60, 40


def _sae(rng: np.random.Generator, good: np.ndarray, support: np.ndarray) -> TypeCounts:
    """Types whose latent is ``good`` fire on their own rows with a little per-document
    noise (F1 ~0.8); the others mostly elsewhere (F1 ~0.3)."""
    hit_rate = np.where(good, 0.85, 0.3)[:, None]
    tp = rng.binomial(support.astype(int), np.broadcast_to(hit_rate, support.shape)).astype(float)
    false_pos = rng.poisson(np.where(good, 0.2, 1.0)[:, None] * (support > 0) + 0.05, support.shape)
    return TypeCounts(
        np.arange(N_TYPES), np.full(N_TYPES, 1e-5), tp, tp + false_pos, support.astype(float),
        [f"d{i}" for i in range(N_DOCS)], 0.5,
    )  # fmt: skip


def _population(seed: int, p_a: float, p_b: float) -> tuple[list[tuple[TypeCounts, TypeCounts]], float]:
    """Two SAEs (three seeds each) on types drawn from a population where a type's latent is
    good with probability ``p_a`` / ``p_b``: the difference of shares the interval should
    cover is the population's, ``p_a - p_b`` (approximately: a good latent captures ~all)."""
    rng = np.random.default_rng(seed)
    support = rng.poisson(rng.gamma(1.0, 0.6, N_TYPES)[:, None], (N_TYPES, N_DOCS))
    support[:, 0] += 1  # every type occurs on test
    shared = rng.random(N_TYPES)
    pairs = []
    for _ in range(3):
        own = np.clip(shared + rng.normal(0, 0.1, N_TYPES), 0, 1)
        pairs.append((_sae(rng, own < p_a, support), _sae(rng, own < p_b, support)))
    return pairs, p_a - p_b


def _true_difference(p_a: float, p_b: float, reps: int = 200) -> float:
    """The population difference of captured shares, by simulation (many fresh draws)."""
    values = []
    for r in range(reps):
        pairs, _ = _population(10_000 + r, p_a, p_b)
        every = np.ones(N_TYPES, dtype=bool)
        values.append(np.mean([captured_share(a, every) - captured_share(b, every) for a, b in pairs]))
    return float(np.mean(values))


def test_paired_type_and_document_bootstrap_covers_a_planted_difference_and_zero_for_equal_saes() -> None:
    every = np.ones(N_TYPES, dtype=bool)
    truth = _true_difference(0.6, 0.35)
    assert truth > 0.15
    covered = excluded_zero = 0
    reps = 60
    for r in range(reps):
        pairs, _ = _population(r, 0.6, 0.35)
        ci = paired_share_difference(pairs, every, 300, seed=r)
        covered += ci.low <= truth <= ci.high
        excluded_zero += ci.low > 0
        equal, _ = _population(500 + r, 0.5, 0.5)
        # Equal SAEs: the true difference is exactly 0 by symmetry.
        zero = paired_share_difference(equal, every, 300, seed=r)
        covered += zero.low <= 0 <= zero.high
    assert covered / (2 * reps) >= 0.88
    # Three seeds give t with 2 degrees of freedom: conservative, so a 0.23 difference over
    # 60 types is detected about a third of the time, never the wrong way.
    assert excluded_zero / reps >= 0.3


def test_counts_give_back_the_sample_and_resampling_types_widens_the_interval() -> None:
    rng = np.random.default_rng(1)
    support = rng.poisson(1.0, (N_TYPES, N_DOCS))
    support[:, 0] += 1
    counts = _sae(rng, rng.random(N_TYPES) < 0.5, support)
    f1 = 2 * counts.tp.sum(1) / (counts.fires.sum(1) + counts.support.sum(1))
    every = np.ones(N_TYPES, dtype=bool)
    assert captured_share(counts, every) == pytest.approx(np.mean(f1 >= 0.5))
    ci = share_interval([counts], every, 400, seed=0)
    assert ci.low < ci.estimate < ci.high
    # With types resampled, the interval is at least the binomial width over 60 types.
    assert ci.high - ci.low > 2 * 1.96 * np.sqrt(0.25 / N_TYPES) * 0.8
    # A subset: shares of the selected types only.
    first = np.arange(N_TYPES) < 20
    assert captured_share(counts, first) == pytest.approx(np.mean(f1[:20] >= 0.5))
    with pytest.raises(ValueError, match="different types or test documents"):
        other = TypeCounts(counts.token_ids + 1, *[getattr(counts, k) for k in ("frequency", "tp", "fires", "support")],
                           counts.docs, 0.5)  # fmt: skip
        paired_share_difference([(counts, other)], every, 50, seed=0)


def test_normalised_cumulative_curve_by_hand() -> None:
    """Three types, rarest first after sorting: test tokens 1, 2, 7; captured: the rarest
    and the commonest. x = cumulative token share, y = cumulative captured-token share."""
    support = np.array([[2.0], [7.0], [1.0]])  # types in frequency order 2e-5, 1e-3, 1e-6
    tp = np.array([[0.0], [7.0], [1.0]])
    counts = TypeCounts(np.arange(3), np.array([2e-5, 1e-3, 1e-6]), tp, tp.copy(), support, ["d0"], 0.5)
    x, y = normalised_cumulative([counts])
    np.testing.assert_allclose(x, [0.1, 0.3, 1.0])
    np.testing.assert_allclose(y, [1 / 8, 1 / 8, 1.0])


def test_documents_are_resampled_within_each_held_out_set() -> None:
    docs = [f"general/g{i}" for i in range(7)] + [f"subdomain/s{i}" for i in range(3)]
    weights = stratified_weights(docs, 200, np.random.default_rng(0))
    assert (weights[:, :7].sum(1) == 7).all() and (weights[:, 7:].sum(1) == 3).all()
    assert weights[:, 7:].std() > 0  # and within a set the draws vary

"""Bootstrap over documents: FVU of a resample is the FVU of its rows; a paired interval
includes 0 for planted equal SAEs and excludes it for a planted difference; intervals
cover a known mean at about the nominal rate."""

from __future__ import annotations

import numpy as np
import pytest

from ssae_steps.bootstrap import (
    family_level,
    fvu_metric,
    interval,
    paired_difference,
    paired_seed_difference,
    ratio,
    resample_weights,
    seed_interval,
)


def _documents(rng: np.random.Generator, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens per document and each token's document, with doc-level shifts of the mean."""
    tokens = rng.integers(5, 60, n_docs)
    return tokens, np.repeat(np.arange(n_docs), tokens)


def test_fvu_of_a_resample_is_the_fvu_of_its_rows() -> None:
    rng = np.random.default_rng(0)
    tokens, doc = _documents(rng, 30)
    x = rng.normal(size=(len(doc), 6)) + rng.normal(size=(30, 6))[doc] * 2 + 5
    err = rng.gamma(2.0, size=len(doc))
    per_doc = [np.bincount(doc, weights=w) for w in (err, np.square(x).sum(1))]
    sum_x = np.stack([np.bincount(doc, weights=x[:, j]) for j in range(6)], 1)
    metric = fvu_metric(per_doc[0], tokens, sum_x, per_doc[1])
    weights = resample_weights(30, 3, seed=1)
    for w in weights:
        rows = np.concatenate([np.flatnonzero(doc == d) for d in range(30) for _ in range(int(w[d]))])
        direct = err[rows].sum() / np.square(x[rows] - x[rows].mean(0)).sum()
        assert metric(w[None])[0] == pytest.approx(direct, rel=1e-9)
    assert metric(np.ones((1, 30)))[0] == pytest.approx(err.sum() / np.square(x - x.mean(0)).sum(), rel=1e-9)


def _two_saes(rng: np.random.Generator, n_docs: int, effect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-document squared error of SAEs a and b on the same documents: documents differ a
    lot in difficulty (shared), each SAE adds its own noise; b's error is ``effect`` higher."""
    tokens = rng.integers(5, 60, n_docs).astype(float)
    difficulty = rng.lognormal(0, 0.8, n_docs)
    a = tokens * difficulty * rng.normal(1, 0.1, n_docs)
    b = tokens * difficulty * rng.normal(1 + effect, 0.1, n_docs)
    return tokens, a, b


def test_paired_interval_includes_zero_for_equal_saes_and_excludes_it_for_a_real_difference() -> None:
    excluded_equal, excluded_planted, paired_only = 0, 0, 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        tokens, a, b = _two_saes(rng, 80, effect=0.0)
        diff = paired_difference(ratio(a, tokens), ratio(b, tokens), 80, samples=400, seed=seed)
        excluded_equal += diff.excludes_zero()
        assert diff.low <= diff.estimate <= diff.high

        tokens, a, b = _two_saes(rng, 80, effect=0.1)
        diff = paired_difference(ratio(b, tokens), ratio(a, tokens), 80, samples=400, seed=seed)
        excluded_planted += diff.low > 0
        ia, ib = (interval(ratio(e, tokens), 80, samples=400, seed=seed) for e in (a, b))
        paired_only += ia.high > ib.low  # the separate intervals overlap, the paired one does not
    assert excluded_equal <= 6  # nominal 5% of 40 = 2
    assert excluded_planted == 40
    assert paired_only >= 30  # pairing removes the document-difficulty variance both share


def test_interval_covers_a_known_mean_at_about_the_nominal_rate() -> None:
    """A ratio metric (mean per token) of documents with doc-level effects: the 95% interval
    holds the population value in about 95% of 300 synthetic samples."""
    covered = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        tokens = rng.integers(5, 60, 60).astype(float)
        per_token = rng.gamma(2.0, 0.5, 60)  # population mean 1.0 per token (independent of length)
        sums = tokens * per_token + rng.normal(0, 1, 60) * np.sqrt(tokens)
        ci = interval(ratio(sums, tokens), 60, samples=500, seed=10_000 + seed)
        covered += ci.low <= 1.0 <= ci.high
    assert 0.88 <= covered / 300 <= 0.99


def test_interval_is_seeded_and_nan_safe() -> None:
    metric = ratio(np.arange(10.0), np.ones(10))
    assert interval(metric, 10, 200, seed=3) == interval(metric, 10, 200, seed=3)
    assert interval(metric, 10, 200, seed=3) != interval(metric, 10, 200, seed=4)
    empty = interval(ratio(np.zeros(10), np.zeros(10)), 10, 200, seed=0)
    assert np.isnan(empty.estimate) and np.isnan(empty.low)
    few = interval(ratio(np.arange(3.0), np.ones(3)), 3, 200, seed=0)  # below MIN_DOCS: no interval
    assert few.estimate == 1.0 and np.isnan(few.low) and np.isnan(few.high) and not few.excludes_zero()


def test_seed_bootstrap_adds_the_spread_between_seeds_and_only_that() -> None:
    rng = np.random.default_rng(3)
    values, tokens = rng.normal(1.0, 0.3, 50), rng.integers(5, 40, 50).astype(float)
    one = ratio(values * tokens, tokens)
    single = interval(one, 50, 800, seed=2)
    # Identical seeds: the estimate of one seed, and the document bootstrap's normal interval
    # (close to its percentile interval).
    same = seed_interval([one, one, one], 50, 800, seed=2)
    assert same.estimate == pytest.approx(single.estimate)
    assert (same.low, same.high) == pytest.approx((single.low, single.high), rel=0.05)
    # Seeds that differ by a shift: the estimate is their mean and the interval widens.
    shifted = [ratio((values + s) * tokens, tokens) for s in (-0.5, 0.0, 0.5)]
    spread = seed_interval(shifted, 50, 800, seed=2)
    assert spread.estimate == pytest.approx(single.estimate)
    assert spread.high - spread.low > 3 * (single.high - single.low)
    # Paired seeds whose differences are all positive: a difference excluding zero.
    pairs = [(ratio((values + 0.2 + s) * tokens, tokens), shifted[i]) for i, s in enumerate((-0.5, 0.0, 0.5))]
    diff = paired_seed_difference(pairs, 50, 800, seed=2)
    assert diff.estimate == pytest.approx(0.2) and diff.excludes_zero()


def test_seed_interval_covers_a_zero_difference_at_about_the_nominal_rate() -> None:
    """Three seeds whose true difference is 0 and whose training noise dominates: the
    interval must exclude 0 in about 5% of replications (resampling the three seeds with
    replacement excluded it in about a quarter of them)."""
    rng = np.random.default_rng(11)
    tokens = rng.integers(5, 40, 30).astype(float)
    excluded, reps = 0, 300
    for rep in range(reps):
        base = rng.normal(1.0, 0.05, 30)
        pairs = [(ratio((base + rng.normal(0, 0.3)) * tokens, tokens), ratio(base * tokens, tokens)) for _ in range(3)]
        excluded += paired_seed_difference(pairs, 30, 200, seed=rep).excludes_zero()
    assert excluded / reps < 0.1


def _null_family(rng: np.random.Generator, m: int, rep: int, level: float) -> list[bool]:
    """m paired comparisons whose true difference is 0 (three seeds each, training noise and
    document noise both present): for each, whether its interval at ``level`` excludes 0."""
    tokens = rng.integers(5, 40, 30).astype(float)
    out = []
    for i in range(m):
        base = rng.normal(1.0, 0.05, 30)
        pairs = [
            (
                ratio((base + rng.normal(0, 0.1) + rng.normal(0, 0.05, 30)) * tokens, tokens),
                ratio(base * tokens, tokens),
            )
            for _ in range(3)
        ]
        out.append(paired_seed_difference(pairs, 30, 200, seed=1000 * rep + i, level=level).excludes_zero())
    return out


def test_family_wise_intervals_widen_with_the_family_and_keep_family_wise_coverage() -> None:
    """Bonferroni: each of m intervals at 1 - 0.05/m. On m = 6 planted nulls, replicated, some
    interval excludes 0 in at most ~5% of replications (plus sampling tolerance); the
    unadjusted 95% intervals do so far more often, so the test fails without the adjustment."""
    assert family_level(1) == pytest.approx(0.95) and family_level(8) == pytest.approx(1 - 0.05 / 8)
    rng = np.random.default_rng(5)
    tokens = rng.integers(5, 40, 30).astype(float)
    base = rng.normal(1.0, 0.05, 30)
    pairs = [(ratio((base + rng.normal(0, 0.1)) * tokens, tokens), ratio(base * tokens, tokens)) for _ in range(3)]
    widths = [
        (lambda ci: ci.high - ci.low)(paired_seed_difference(pairs, 30, 400, seed=0, level=family_level(m)))
        for m in (1, 2, 4, 8)
    ]
    assert widths == sorted(widths) and widths[-1] > 1.2 * widths[0]

    reps, m = 400, 6
    adjusted = [any(_null_family(np.random.default_rng(r), m, r, family_level(m))) for r in range(reps)]
    unadjusted = [any(_null_family(np.random.default_rng(r), m, r, 0.95)) for r in range(reps)]
    # Binomial standard error at 5% over 400 replications is 1.1 points. (With
    # Welch-Satterthwaite degrees of freedom the adjusted rate was about 15%.)
    assert np.mean(adjusted) <= 0.05 + 0.03
    assert np.mean(unadjusted) > 0.15

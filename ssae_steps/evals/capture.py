"""Captured token types with documents and types resampled together: the paper's
"proportion of tokens with SAE features" (its Figs. 2 and 6) with intervals that carry both
sources of sampling error, and the paired differences of two SAEs.

A type is *captured* when the latent chosen for it on validation detects it on the test
documents with F1 at least the threshold (``ssae_steps.evals.tail``). Two things are
sampled: the test documents (the F1 of a type moves with them) and the token types
themselves (the share is a mean over types that stand for many more). One bootstrap
resample draws both - document weights ``w`` (within each held-out set, since detection
pools the subdomain and general test text) and type weights ``u``, each a multinomial
draw - and recomputes every type's F1 from its per-document counts (``2 w·tp / (w·fires +
w·support)``) before taking the ``u``-weighted share; a type that no drawn document
contains has no test F1 and drops out of that resample, as ``not_on_test`` types do from
the sample. A paired difference applies the same ``(w, u)`` to both SAEs, and with several
training seeds pairs seed s with seed s and adds the seeds' spread
(``ssae_steps.bootstrap.interval_from_draws``). Drawing documents and types independently
counts their interaction's variance in both, so the intervals lean wide, not narrow.

:func:`normalised_cumulative` gives the paper's Fig. 6: types from rarest to commonest, the
cumulative share of test tokens against the cumulative share of the tokens whose type is
captured, normalised per SAE to reach 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssae_steps.bootstrap import LEVEL, MIN_DOCS, Interval, interval_from_draws

ShareMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``metric(doc_weights [R, docs], type_weights [R, types]) -> [R]``."""


@dataclass(frozen=True)
class TypeCounts:
    """One SAE's detection of each evaluated token type, per test document."""

    token_ids: np.ndarray
    frequency: np.ndarray
    """General-pool frequency of each type."""
    tp: np.ndarray
    fires: np.ndarray
    support: np.ndarray
    """``[types, docs]``: see ``ssae_steps.evals.tail.test_doc_counts``."""
    docs: list[str]
    threshold: float
    _captured: dict[bytes, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    """:meth:`captured` per document-weight matrix: every bin and comparison of a report
    resamples the same documents (one seed), so each SAE's F1s are computed once."""

    @classmethod
    def from_result(cls, types: dict[str, Any]) -> TypeCounts:
        """From the ``types`` section of an evaluation JSON."""
        counts = types["test_counts"]
        shape = (len(types["token_id"]), len(counts["docs"]))
        dense = {}
        for key in ("tp", "fires", "support"):
            matrix = np.zeros(shape)
            np.add.at(matrix, (np.asarray(counts["type"], int), np.asarray(counts["doc"], int)), counts[key])
            dense[key] = matrix
        return cls(
            np.asarray(types["token_id"], dtype=np.int64),
            np.asarray(types["general_frequency"], dtype=np.float64),
            dense["tp"],
            dense["fires"],
            dense["support"],
            list(counts["docs"]),
            float(types["detection_f1"]),
        )

    def captured(self, doc_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(captured, present)``, each ``[R, types]``, for each row of document weights."""
        key = hashlib.blake2b(np.ascontiguousarray(doc_weights).tobytes(), digest_size=16).digest()
        key += str(doc_weights.shape).encode()
        if key not in self._captured:
            tp, fires, support = (doc_weights @ m.T for m in (self.tp, self.fires, self.support))
            with np.errstate(invalid="ignore", divide="ignore"):
                f1 = 2 * tp / (fires + support)
            present = support > 0
            if len(self._captured) > 8:
                self._captured.clear()
            self._captured[key] = (present & (f1 >= self.threshold), present)
        return self._captured[key]


def share_metric(counts: TypeCounts, types: np.ndarray) -> ShareMetric:
    """The captured share of the types selected by the boolean ``types``."""

    def metric(doc_weights: np.ndarray, type_weights: np.ndarray) -> np.ndarray:
        captured, present = counts.captured(doc_weights)
        weight = type_weights * present * types
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weight * captured).sum(-1) / weight.sum(-1)

    return metric


def captured_share(counts: TypeCounts, types: np.ndarray) -> float:
    """The captured share of the selected types on the test documents themselves."""
    return float(share_metric(counts, types)(np.ones((1, len(counts.docs))), np.ones((1, len(types))))[0])


def _check_same(seeds: list[TypeCounts]) -> None:
    first = seeds[0]
    for other in seeds[1:]:
        if other.docs != first.docs or not np.array_equal(other.token_ids, first.token_ids):
            raise ValueError("SAEs compared on captured types were scored on different types or test documents")


def stratified_weights(docs: list[str], samples: int, rng: np.random.Generator) -> np.ndarray:
    """``[samples, docs]`` draw counts, each held-out set's documents (the ``set/`` prefix of
    their keys) resampled within that set, so every resample keeps each set's size."""
    strata = np.array([d.split("/", 1)[0] for d in docs])
    weights = np.zeros((samples, len(docs)))
    for stratum in dict.fromkeys(strata):
        members = np.flatnonzero(strata == stratum)
        weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=samples)
    return weights


def type_doc_interval(
    metrics: list[ShareMetric], docs: list[str], types: np.ndarray, samples: int, seed: int, level: float = LEVEL
) -> Interval:
    """Seed mean of ``metrics`` (one per seed, or per seed pair) with its interval over the
    types selected by the boolean ``types``, the test documents (within each held-out set:
    :func:`stratified_weights`) and those types resampled together (module docstring)."""
    selected, n_docs = np.flatnonzero(types), len(docs)
    if not metrics or len(selected) < 1 or n_docs < 1:
        return Interval(float("nan"), float("nan"), float("nan"))
    values = np.array([m(np.ones((1, n_docs)), np.ones((1, len(types))))[0] for m in metrics])
    if n_docs < MIN_DOCS or len(selected) < MIN_DOCS:
        return Interval(float(values.mean()), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    doc_weights = stratified_weights(docs, samples, rng)
    type_weights = np.zeros((samples, len(types)))
    type_weights[:, selected] = rng.multinomial(len(selected), np.full(len(selected), 1 / len(selected)), size=samples)
    draws = np.mean([m(doc_weights, type_weights) for m in metrics], axis=0)
    return interval_from_draws(values, draws, level)


def share_interval(
    seeds: list[TypeCounts], types: np.ndarray, samples: int, seed: int, level: float = LEVEL
) -> Interval:
    """An SAE's captured share of the selected types (mean over its seeds)."""
    _check_same(seeds)
    metrics = [share_metric(c, types) for c in seeds]
    return type_doc_interval(metrics, seeds[0].docs, types, samples, seed, level)


def _difference(a: ShareMetric, b: ShareMetric) -> ShareMetric:
    return lambda doc_weights, type_weights: a(doc_weights, type_weights) - b(doc_weights, type_weights)


def paired_share_difference(
    pairs: list[tuple[TypeCounts, TypeCounts]], types: np.ndarray, samples: int, seed: int, level: float = LEVEL
) -> Interval:
    """Captured share of SAE a minus SAE b over the selected types, seed pairs ``(a_s,
    b_s)``, the same documents and types drawn for both sides."""
    _check_same([c for pair in pairs for c in pair])
    metrics = [_difference(share_metric(a, types), share_metric(b, types)) for a, b in pairs]
    return type_doc_interval(metrics, pairs[0][0].docs, types, samples, seed, level)


def normalised_cumulative(seeds: list[TypeCounts]) -> tuple[np.ndarray, np.ndarray]:
    """The paper's Fig. 6 for one SAE (seed mean): types ordered from rarest to commonest in
    the general pool; ``x`` the cumulative share of their test tokens, ``y`` the cumulative
    share of the test tokens whose type is captured, normalised to end at 1 (all zeros if
    the SAE captures no type)."""
    _check_same(seeds)
    first = seeds[0]
    order = np.argsort(first.frequency, kind="stable")
    tokens = first.support.sum(1)[order]
    x = np.cumsum(tokens) / max(tokens.sum(), 1.0)
    ones = np.ones((1, len(first.docs)))
    curves = []
    for counts in seeds:
        captured_tokens = counts.captured(ones)[0][0][order] * tokens
        total = captured_tokens.sum()
        curves.append(np.cumsum(captured_tokens) / total if total else np.zeros_like(x))
    return x, np.mean(curves, axis=0)

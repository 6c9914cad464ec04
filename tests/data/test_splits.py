"""Validation/test parts of held-out documents: disjoint, covering, stable when documents
are added, and independent of the corpus's own held-out hash."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ssae_steps.data.corpus import _unit_hash
from ssae_steps.data.splits import heldout_part, in_test_part


def _ids(start: int, stop: int) -> list[str]:
    return [hashlib.sha1(f"document {i}".encode()).hexdigest()[:16] for i in range(start, stop)]


def test_parts_are_disjoint_cover_the_set_and_have_the_configured_share() -> None:
    ids = _ids(0, 4000)
    validation = {d for d in ids if heldout_part(d, 0.5) == "validation"}
    test = {d for d in ids if heldout_part(d, 0.5) == "test"}
    assert not validation & test and validation | test == set(ids)
    assert len(validation) / len(ids) == pytest.approx(0.5, abs=0.03)
    assert sum(heldout_part(d, 0.2) == "validation" for d in ids) / len(ids) == pytest.approx(0.2, abs=0.03)
    # A larger validation fraction only moves test documents into validation.
    assert {d for d in ids if heldout_part(d, 0.2) == "validation"} <= validation


def test_parts_are_stable_when_documents_are_added() -> None:
    before = {d: heldout_part(d, 0.5) for d in _ids(0, 1000)}
    grown = _ids(0, 1000) + _ids(1000, 3000)
    rng = np.random.default_rng(0)
    after = {d: heldout_part(d, 0.5) for d in rng.permutation(grown)}
    assert {d: after[d] for d in before} == before


def test_rows_follow_their_document() -> None:
    ids = _ids(0, 50)
    rows = np.array([ids[i] for i in np.random.default_rng(1).integers(0, 50, 2000)], dtype=object)
    mask = in_test_part(rows, 0.5)
    assert mask.tolist() == [heldout_part(d, 0.5) == "test" for d in rows]
    assert 0 < mask.mean() < 1


def test_parts_are_independent_of_the_corpus_heldout_hash() -> None:
    """Among the documents a corpus holds out (its hash of (seed, doc_id) < 0.2) the
    validation share is still the configured one, for any corpus seed."""
    ids = _ids(0, 20_000)
    for seed in (0, 7):
        held = [d for d in ids if _unit_hash(seed, d) < 0.2]
        share = sum(heldout_part(d, 0.5) == "validation" for d in held) / len(held)
        assert share == pytest.approx(0.5, abs=0.03)

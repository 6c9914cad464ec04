"""Which token types and tail concepts are evaluated is chosen on the validation part of the
held-out text alone; "rare" means the same (general-pool frequency at most the cutoff) in
the tail concepts, the report's frequency bins and the TERM study."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssae_steps.activations.sets import write_activation_set
from ssae_steps.data.splits import heldout_part
from ssae_steps.evals.compare import Bootstrap
from ssae_steps.evals.config import TailConfig
from ssae_steps.evals.frequency_report import frequency_bins, in_frequency_bin, recall_by_frequency
from ssae_steps.evals.tail import is_rare, tail_tokens, type_detection, write_tail_table
from ssae_steps.evals.term_study import captured_type_share
from tests.evals.planted import planted_types

VALIDATION_FRACTION = 0.5
COMMON = list(range(20, 30))


def _docs(part: str, count: int = 4) -> list[str]:
    names = (f"doc{i}" for i in range(1000))
    return [d for d in names if heldout_part(d, VALIDATION_FRACTION) == part][:count]


def _write(path: Path, tokens: list[int], docs: list[str] | None = None) -> Path:
    acts = np.random.default_rng(len(tokens)).normal(size=(len(tokens), 4)).astype(np.float32)
    return write_activation_set(acts, path / "manifest.json", doc_ids=docs, token_ids=tokens)


def _tail_tables(tmp: Path, model_dir: Path, validation_extra: list[int], test_extra: list[int]) -> tuple:
    """Tail concepts and token types from planted sets. The pool: 20,000 common tokens and
    tokens 10-13 once each (frequency 5e-5, rare); the seed documents: the common tokens and
    10-13 often (specific). Held out: 4 validation and 4 test documents of common tokens and
    two 10s each, plus ``validation_extra`` / ``test_extra`` in each document of that part."""
    general = [t for t in COMMON for _ in range(2000)] + [10, 11, 12, 13]
    seed = [t for t in COMMON for _ in range(100)] + [t for t in (10, 11, 12, 13) for _ in range(50)]
    heldout, doc_ids = [], []
    for part, extra in (("validation", validation_extra), ("test", test_extra)):
        for doc in _docs(part):
            tokens = COMMON + [10, 10] + extra
            heldout += tokens
            doc_ids += [doc] * len(tokens)
    cfg = TailConfig(min_ratio=4.0, max_general_frequency=1e-4, min_count=3)
    out = tmp / "tail_tokens.csv"
    write_tail_table(
        cfg,
        _write(tmp / "seed", seed),
        _write(tmp / "general", general),
        _write(tmp / "heldout", heldout, doc_ids),
        model_dir,
        out,
        tmp / "token_types.csv",
        validation_fraction=VALIDATION_FRACTION,
    )
    with out.open() as handle:
        concepts = [int(r["token_id"]) for r in csv.DictReader(handle)]
    types = pd.read_csv(tmp / "token_types.csv")
    return concepts, types["token_id"].tolist(), types


def test_the_type_set_and_tail_concepts_ignore_test_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    base = _tail_tables(tmp_path / "base", tiny_model_dir, [], [])
    assert base[0] == [10] and base[1] == [10, *COMMON]
    assert (base[2]["validation_count"] == 4 * np.where(base[2]["token_id"] == 10, 2, 1)).all()
    # Token 11 (a would-be tail concept) and 30 (never in the pool) three times in every
    # test document: nothing changes.
    in_test = _tail_tables(tmp_path / "test", tiny_model_dir, [], [11, 11, 11, 30, 30, 30])
    assert in_test[:2] == base[:2]
    # The same rows in the validation documents: both are chosen.
    in_validation = _tail_tables(tmp_path / "validation", tiny_model_dir, [11, 11, 11, 30, 30, 30], [])
    assert in_validation[0] == [10, 11]
    assert in_validation[1] == [10, 11, *COMMON, 30]


def test_a_type_absent_from_test_is_not_evaluable_for_every_sae() -> None:
    """Types 0 and 1 are chosen (on validation); type 1 has no test row: it is listed as not
    evaluable on test and left out of the shares, whatever the SAE does."""
    validation = (np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]), np.array([5, 5, 6, 6]), np.array(["a"] * 4))
    test = (np.array([0, 0, 2]), np.array([0, 1]), np.array([5, 5]), np.array(["b", "b", "c"]))
    for latent_on_test in (5, 6):
        activity = {"validation": [validation], "test": [(test[0], test[1], np.full(2, latent_on_test), test[3])]}
        found = type_detection(activity, [0, 1], np.array([1e-5, 1e-5]), 8, 0.5)
        assert found["token_id"] == [0] and found["not_on_test"] == [1]
        assert found["captured"] == [latent_on_test == 5]


def test_a_type_at_exactly_the_rare_cutoff_is_rare_in_the_report_the_term_study_and_the_tail() -> None:
    cutoff = 1e-4
    frequencies = np.array([0.0, 3e-5, 1.0 / 10_000, np.nextafter(1e-4, 1.0), 4e-4, 2e-3])
    assert frequencies[2] == cutoff
    captured = [True, False, True, True, False, True]
    result = {"types": planted_types(captured, frequencies.tolist())}
    expected = np.array([True, True, True, False, False, False])
    np.testing.assert_array_equal(is_rare(frequencies, cutoff), expected)
    # TERM study: rare types are types 0-2.
    rare = captured_type_share([result], "rare", cutoff, Bootstrap(50, 0))
    assert rare["n_types_rare"] == 3 and rare["captured_rare"] == pytest.approx(2 / 3)
    # Report: the cumulative bin up to 1e-4 holds the same types; the type at 1e-4 sits in
    # the decade that ends there.
    bins = frequency_bins(frequencies)
    assert (1e-5, 1e-4) in bins
    np.testing.assert_array_equal(in_frequency_bin(frequencies, 1e-5, 1e-4, cumulative=True), expected)
    np.testing.assert_array_equal(
        in_frequency_bin(frequencies, 1e-5, 1e-4, cumulative=False), [False, True, True, False, False, False]
    )
    run = "ssae/dense/finetune-t0-k8"
    table = pd.DataFrame({"run": [run], "label": ["SSAE dense"], "family": ["SSAE"], "k": [8]})
    curves = recall_by_frequency({run: (result, {})}, table, 8, Bootstrap(50, 0), {run: [run]})
    row = curves[curves["cumulative"] & (curves["frequency_high"] == cutoff)].iloc[0]
    assert row["n_types"] == 3 and row["captured_share"] == pytest.approx(2 / 3)
    # Tail concepts: a token whose pool frequency is exactly the cutoff is rare enough (2),
    # one just above it is not (3).
    general = np.array([0, 9_997, 1, 2])  # token 2 at 1e-4 exactly, 3 at 2e-4
    subdomain = np.array([0, 100, 50, 50])
    rows = tail_tokens(subdomain, general, np.array([0, 9, 9, 9]), TailConfig(min_count=5))
    assert [r["token_id"] for r in rows] == [2]

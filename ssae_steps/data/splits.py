"""Validation and test parts of a held-out set, by document.

Each held-out document is in ``validation`` or ``test`` by a hash of its ``doc_id`` alone
(salted, so the parts are independent of the corpus's train/held-out hash, which also hashes
``doc_id``). Adding or removing documents never moves another one, and since ``doc_id`` is
a hash of the text, the same text is in the same part in every corpus. No activation is
re-cached: evaluation splits the cached held-out rows by their ``doc_id`` column.

Anything chosen (the best run, the latent that detects a concept) is chosen on
``validation``; every reported number is measured on ``test``.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

SALT = "ssae.heldout_part"
Part = Literal["validation", "test"]


def unit_hash(doc_id: str) -> float:
    """A uniform number in [0, 1) from ``doc_id`` alone."""
    digest = hashlib.sha1(f"{SALT}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def heldout_part(doc_id: str, validation_fraction: float) -> Part:
    """``validation`` for about ``validation_fraction`` of documents, ``test`` for the rest."""
    return "validation" if unit_hash(doc_id) < validation_fraction else "test"


def in_test_part(doc_ids: np.ndarray, validation_fraction: float) -> np.ndarray:
    """Per row, whether its document is in the test part (each distinct id hashed once)."""
    docs, inverse = np.unique(np.asarray(doc_ids, dtype=object).astype(str), return_inverse=True)
    in_test = np.array([heldout_part(d, validation_fraction) == "test" for d in docs], dtype=bool)
    return in_test[inverse.reshape(-1)]

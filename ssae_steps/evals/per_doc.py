"""Per-document sums of an SAE's evaluation on the test part of each held-out set, from
which the report bootstraps intervals over test documents.

Beside each SAE's metrics (``RUN.json``), ``RUN.per_doc.parquet`` holds one row per (set,
test document) with :data:`PER_DOC_COLUMNS`: token count, sum of squared error, sum of x
and of ||x||^2 (so the FVU of any resample is ``sum err / (sum ||x||^2 - N ||mean||^2)``
with the resample's own mean), L0 sum, and over the scored windows the scored tokens
(``loss_tokens``: each window's predictions of its 2nd to last token; the BOS-to-first-token
prediction, which no splice changes, is left out: ``spliced_loss.scored_positions``) with
their clean and spliced cross-entropy and KL sums.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssae_steps.bootstrap import Metric, fvu_metric, ratio
from ssae_steps.files import atomic_path

LOSS_COLUMNS = ["loss_tokens", "clean_ce", "spliced_ce", "kl"]
PER_DOC_COLUMNS = ["set", "doc_id", "tokens", "sq_err", "sum_sq", "l0_sum", *LOSS_COLUMNS, "sum_x"]


def per_doc_path(run_json: str | Path) -> Path:
    """Where the per-document sums of the evaluation ``RUN.json`` are: ``RUN.per_doc.parquet``."""
    path = Path(run_json)
    return path.with_name(path.name.removesuffix(".json") + ".per_doc.parquet")


def doc_stats(doc_ids: np.ndarray, acts: np.ndarray, sq_err: np.ndarray, l0: np.ndarray) -> dict[str, np.ndarray]:
    """Per-document sums (documents sorted by id) of rows with squared error ``sq_err`` and
    ``l0`` active latents: ``doc_id``, ``tokens``, ``sq_err``, ``sum_sq`` (sum of ||x||^2),
    ``l0_sum`` and ``sum_x`` ([docs, d_model])."""
    docs, inverse = np.unique(np.asarray(doc_ids).astype(str), return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(docs)))
    x = acts.astype(np.float64)
    return {
        "doc_id": docs,
        "tokens": np.bincount(inverse, minlength=len(docs)),
        "sq_err": np.bincount(inverse, weights=sq_err, minlength=len(docs)),
        "sum_sq": np.bincount(inverse, weights=np.square(x).sum(-1), minlength=len(docs)),
        "l0_sum": np.bincount(inverse, weights=l0, minlength=len(docs)),
        "sum_x": np.add.reduceat(x[order], starts, axis=0) if len(docs) else np.zeros((0, acts.shape[1])),
    }


def add_window_losses(
    stats: dict[str, np.ndarray], windows: list[tuple[str, list[int]]], losses: dict[str, np.ndarray]
) -> None:
    """Add the losses of the scored ``(doc_id, token ids)`` windows to ``stats`` as
    per-document sums (:data:`LOSS_COLUMNS`)."""
    index = np.searchsorted(stats["doc_id"], [doc for doc, _ in windows])
    for column, key in zip(LOSS_COLUMNS, ["tokens", "clean_ce", "spliced_ce", "kl"], strict=True):
        stats[column] = np.bincount(index, weights=losses[key], minlength=len(stats["doc_id"]))


def write_per_doc(path: str | Path, per_set: dict[str, dict[str, np.ndarray]]) -> None:
    """One row per (set, test document) with :data:`PER_DOC_COLUMNS`, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [{"set": np.full(len(stats["doc_id"]), name), **stats} for name, stats in per_set.items()]
    arrays = {c: pa.array(np.concatenate([p[c] for p in parts])) for c in PER_DOC_COLUMNS if c != "sum_x"}
    sum_x = np.concatenate([p["sum_x"] for p in parts])
    arrays["sum_x"] = pa.FixedSizeListArray.from_arrays(pa.array(sum_x.reshape(-1)), sum_x.shape[1])
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(arrays), tmp)


def read_per_doc(path: str | Path) -> dict[str, Any]:
    """``set name -> per-document DataFrame`` (rows sorted by doc_id; ``sum_x`` holds arrays)."""
    import pyarrow.parquet as pq

    frame = pq.read_table(path).to_pandas()
    return {name: part.sort_values("doc_id").reset_index(drop=True) for name, part in frame.groupby("set")}


def doc_metrics(frame: Any) -> dict[str, Metric]:
    """Bootstrap-ready metrics (``ssae_steps.bootstrap``) of one set's per-document table."""
    loss_tokens = frame["loss_tokens"].to_numpy()
    return {
        "fvu": fvu_metric(frame["sq_err"], frame["tokens"], np.stack(frame["sum_x"].to_numpy()), frame["sum_sq"]),
        "l0": ratio(frame["l0_sum"], frame["tokens"]),
        "spliced_loss": ratio(frame["spliced_ce"], loss_tokens),
        "delta_ce": ratio(frame["spliced_ce"] - frame["clean_ce"], loss_tokens),
        "kl": ratio(frame["kl"], loss_tokens),
    }

"""Tail concepts of a subdomain and how well an SAE represents them.

Definition (also in docs/evaluation.md): a *tail concept* is a token id that is
- specific: its frequency in the subdomain's seed documents is at least ``min_ratio``
  times its frequency in the general pool (add-one smoothed counts), and
- rare overall: its general-pool frequency is at most ``max_general_frequency``
  (:func:`is_rare`, the one meaning of "rare" in every evaluation), and
- evaluable: it occurs at least ``min_count`` times in the *validation* part of the
  subdomain's held-out text (``ssae_steps.data.splits``; the test part is never counted,
  so nothing about the test documents enters the choice).
At most ``max_concepts`` of them are kept, the most specific first.

Per SAE, on held-out text (subdomain and general held-out sets together, so a latent
that fires on everything is not a detector):
- tail vs head reconstruction: FVU restricted to tail-token rows and to all other rows
  (both against the set mean);
- dedicated latents: for each concept, the latent whose firing (activation > 0) best
  detects "this token is the concept" by F1 on the *validation* part of the held-out
  documents (``ssae_steps.data.splits``); that latent's F1 is then measured on the
  *test* part, and the concept is *captured* when the test F1 is at least
  ``detection_f1``. Tail-concept recall = captured / concepts that occur in both parts.

Recall against frequency, as the paper plots it: the same detection for *every* token type
that occurs at least ``min_count`` times in the validation part of the subdomain's held-out
text (not only the tail concepts), each with its general-pool frequency, so the share of
types an SAE captures can be read off per frequency decade (``ssae_steps.evals.report``).

A chosen type or concept that no test row of either held-out set contains has no test F1:
it is *not evaluable on test*, left out of every captured share and of recall (listed
under ``not_on_test``), and since that depends on the text alone it is the same for every
SAE. Its count is reported beside the share.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ssae_steps.cli import run
from ssae_steps.data.splits import in_test_part
from ssae_steps.evals.config import TailConfig
from ssae_steps.files import atomic_path

log = logging.getLogger("ssae.tail_concepts")
Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Activity = dict[str, list[Part]]
"""An SAE's firing on the held-out sets, per part (``validation``, ``test``): one
``(token_ids, active_rows, active_latents, doc_keys)`` per set, rows numbered within the
set, ``doc_keys`` each row's document (unique across sets: ``set/doc_id``)."""


def is_rare(frequency: np.ndarray | float, cutoff: float) -> np.ndarray:
    """Whether a general-pool frequency is *rare* under ``cutoff``: at most it. The one
    definition behind the tail concepts' ``max_general_frequency``, the report's cumulative
    frequency bins (every type up to an edge) and the TERM study's rare types."""
    return np.asarray(frequency, dtype=np.float64) <= cutoff


def general_frequencies(general_counts: np.ndarray) -> np.ndarray:
    """Each token id's share of the general pool's training tokens."""
    return np.asarray(general_counts, dtype=np.float64) / max(float(np.sum(general_counts)), 1.0)


def validation_counts(manifest: str | Path, validation_fraction: float) -> np.ndarray:
    """Occurrences of each token id (index = token id) in the *validation* documents of a
    held-out activation set; its test documents are not counted."""
    from ssae_steps.activations.sets import read_columns

    rows = read_columns(manifest, ["doc_id", "token_id"])
    doc_ids, token_ids = rows["doc_id"], rows["token_id"].astype(np.int64)
    return np.bincount(
        token_ids[~in_test_part(doc_ids, validation_fraction)], minlength=int(token_ids.max(initial=-1)) + 1
    )


def _padded(counts: np.ndarray, size: int) -> np.ndarray:
    return np.pad(counts, (0, max(0, size - len(counts))))[:size].astype(np.float64)


def tail_tokens(
    subdomain_counts: np.ndarray, general_counts: np.ndarray, validation_counts: np.ndarray, cfg: TailConfig
) -> list[dict[str, float]]:
    """Tail concepts as rows ``{token_id, subdomain_count, general_count, ratio,
    validation_count}``, most specific first; ``validation_counts``: occurrences in the
    validation part of the subdomain's held-out text (:func:`validation_counts`)."""
    size = max(len(subdomain_counts), len(general_counts), len(validation_counts))
    sub, gen, held = (_padded(c, size) for c in (subdomain_counts, general_counts, validation_counts))
    sub_freq = (sub + 1) / (sub.sum() + size)
    gen_freq = (gen + 1) / (gen.sum() + size)
    ratio = sub_freq / gen_freq
    keep = (ratio >= cfg.min_ratio) & is_rare(general_frequencies(gen), cfg.max_general_frequency)
    keep &= (held >= cfg.min_count) & (sub > 0)
    order = np.flatnonzero(keep)
    order = order[np.argsort(-ratio[order], kind="stable")][: cfg.max_concepts]
    return [
        {
            "token_id": int(t),
            "subdomain_count": int(sub[t]),
            "general_count": int(gen[t]),
            "ratio": float(ratio[t]),
            "validation_count": int(held[t]),
        }
        for t in order
    ]


def concept_detection(
    active_rows: np.ndarray,
    active_latents: np.ndarray,
    token_ids: np.ndarray,
    concepts: list[int],
    d_sae: int,
    latents: list[int] | None = None,
) -> list[dict[str, float]]:
    """Per concept, how well one latent detects it on an evaluation set whose row ``r`` has
    token ``token_ids[r]``, from the SAE's active (row, latent) pairs: the best latent by F1,
    or the given ``latents[c]`` (chosen on other text) scored here."""
    fires = np.bincount(active_latents, minlength=d_sae)
    concept_index = np.full(int(max(token_ids.max(initial=0), max(concepts, default=0))) + 1, -1)
    concept_index[np.asarray(concepts, dtype=np.int64)] = np.arange(len(concepts))
    row_concept = concept_index[token_ids]
    hit = row_concept[active_rows] >= 0
    flat = row_concept[active_rows[hit]] * d_sae + active_latents[hit]
    true_pos = np.bincount(flat, minlength=len(concepts) * d_sae).reshape(len(concepts), d_sae)
    support = np.bincount(row_concept[row_concept >= 0], minlength=len(concepts))
    out = []
    for c, token in enumerate(concepts):
        f1 = 2 * true_pos[c] / np.maximum(fires + support[c], 1)
        best = int(f1.argmax()) if latents is None else int(latents[c])
        tp = int(true_pos[c, best])
        out.append(
            {
                "token_id": int(token),
                "latent": best,
                "f1": float(f1[best]),
                "precision": tp / max(int(fires[best]), 1),
                "recall": tp / max(int(support[c]), 1),
                "support": int(support[c]),
            }
        )
    return out


def tail_recall(detections: list[dict[str, float]], threshold: float) -> float:
    if not detections:
        return float("nan")
    return sum(d["f1"] >= threshold for d in detections) / len(detections)


def _pooled(parts: list[Part]) -> Part:
    """The sets' parts as one: ``(active_rows, active_latents, token_ids, doc_keys)``."""
    rows, latents, tokens, docs, offset = [], [], [], [], 0
    for token_ids, active_rows, active_latents, doc_keys in parts:
        rows.append(active_rows + offset)
        latents.append(active_latents)
        tokens.append(token_ids)
        docs.append(np.asarray(doc_keys).astype(str))
        offset += len(token_ids)
    return np.concatenate(rows), np.concatenate(latents), np.concatenate(tokens), np.concatenate(docs)


def detections(activity: Activity, concepts: list[int], d_sae: int, chunk: int = 256) -> list[dict[str, Any]]:
    """Each concept's latent chosen on the validation rows of all sets, scored on the test
    rows (``chunk`` concepts at a time: the counts are a concepts x d_sae matrix)."""
    validation, test = _pooled(activity["validation"]), _pooled(activity["test"])
    out = []
    for start in range(0, len(concepts), chunk):
        part = concepts[start : start + chunk]
        chosen = concept_detection(*validation[:3], part, d_sae)
        scored = concept_detection(*test[:3], part, d_sae, latents=[d["latent"] for d in chosen])
        out += [
            {**t, "validation_f1": v["f1"], "validation_support": v["support"]}
            for v, t in zip(chosen, scored, strict=True)
        ]
    return out


def _evaluable(found: list[dict[str, Any]]) -> list[bool]:
    """Per detection, whether the concept occurs in both parts (it has a validation-chosen
    latent and a test F1)."""
    return [bool(d["support"] and d["validation_support"]) for d in found]


def tail_detection(activity: Activity, concepts: list[int], d_sae: int, threshold: float) -> dict[str, Any]:
    """Tail-concept recall and mean test F1 over the concepts that occur in both parts
    (:func:`detections`), with every concept's detection; ``not_on_test``: the concepts
    left out (no test row), the same for every SAE."""
    found = detections(activity, concepts, d_sae)
    keep = _evaluable(found)
    evaluable = [d for d, k in zip(found, keep, strict=True) if k]
    return {
        "concepts": len(concepts),
        "evaluable": len(evaluable),
        "not_on_test": [d["token_id"] for d, k in zip(found, keep, strict=True) if not k],
        "recall": tail_recall(evaluable, threshold),
        "mean_best_f1": float(np.mean([d["f1"] for d in evaluable])) if evaluable else math.nan,
        "detections": found,
    }


def type_detection(
    activity: Activity, types: list[int], frequencies: np.ndarray, d_sae: int, threshold: float
) -> dict[str, Any]:
    """Every token type chosen on validation counts (:func:`token_types`): its general-pool
    frequency, test F1 of its validation-chosen latent, and whether that captures it
    (F1 >= ``threshold``). A type no test row contains has no test F1 and is listed under
    ``not_on_test`` instead (not counted as missed; the same for every SAE).
    ``test_counts``: the chosen latents' counts per test document (:func:`test_doc_counts`),
    from which ``ssae_steps.evals.capture`` resamples documents and types together."""
    found = detections(activity, types, d_sae)
    keep = _evaluable(found)
    kept = [d for d, k in zip(found, keep, strict=True) if k]
    return {
        "token_id": [types[i] for i, k in enumerate(keep) if k],
        "general_frequency": [float(frequencies[i]) for i, k in enumerate(keep) if k],
        "f1": [d["f1"] for d in kept],
        "captured": [d["f1"] >= threshold for d in kept],
        "not_on_test": [types[i] for i, k in enumerate(keep) if not k],
        "detection_f1": threshold,
        "test_counts": test_doc_counts(
            _pooled(activity["test"]), [d["token_id"] for d in kept], [d["latent"] for d in kept]
        ),
    }


def test_doc_counts(test: Part, types: list[int], latents: list[int]) -> dict[str, list]:
    """Per type and test document, with the type's chosen latent: ``tp`` (rows of the type
    where it fires), ``fires`` (rows where it fires) and ``support`` (rows of the type), so
    that the test F1 of any reweighting of the documents is ``2 tp / (fires + support)``.
    Sparse: ``docs`` (sorted document keys), then one entry per nonzero (``type`` index
    into ``types``, ``doc`` index into ``docs``)."""
    active_rows, active_latents, token_ids, doc_keys = test
    docs, doc_of_row = np.unique(doc_keys, return_inverse=True)
    doc_of_row = doc_of_row.reshape(-1)
    order = np.argsort(active_latents, kind="stable")
    rows_by_latent, sorted_latents = active_rows[order], active_latents[order]
    out: dict[str, list] = {"docs": docs.tolist(), "type": [], "doc": [], "tp": [], "fires": [], "support": []}
    for index, (token, latent) in enumerate(zip(types, latents, strict=True)):
        low, high = np.searchsorted(sorted_latents, [latent, latent + 1])
        fired = rows_by_latent[low:high]
        fires = np.bincount(doc_of_row[fired], minlength=len(docs))
        tp = np.bincount(doc_of_row[fired[token_ids[fired] == token]], minlength=len(docs))
        support = np.bincount(doc_of_row[token_ids == token], minlength=len(docs))
        nonzero = np.flatnonzero(fires + support)
        out["type"] += [index] * len(nonzero)
        out["doc"] += nonzero.tolist()
        out["tp"] += tp[nonzero].tolist()
        out["fires"] += fires[nonzero].tolist()
        out["support"] += support[nonzero].tolist()
    return out


def token_types(general_counts: np.ndarray, validation_counts: np.ndarray, min_count: int) -> list[dict[str, Any]]:
    """Every token type with at least ``min_count`` occurrences in the validation part of the
    subdomain's held-out text (:func:`validation_counts`), as rows ``{token_id,
    validation_count, general_count, general_frequency}``."""
    size = max(len(general_counts), len(validation_counts))
    gen, held = _padded(general_counts, size), _padded(validation_counts, size)
    frequency = general_frequencies(gen)
    return [
        {
            "token_id": int(t),
            "validation_count": int(held[t]),
            "general_count": int(gen[t]),
            "general_frequency": float(frequency[t]),
        }
        for t in np.flatnonzero(held >= min_count)
    ]


def read_token_types(path: str | Path) -> tuple[list[int], np.ndarray]:
    """Token ids and general-pool frequencies of a :func:`token_types` table."""
    with Path(path).open() as handle:
        rows = list(csv.DictReader(handle))
    return [int(r["token_id"]) for r in rows], np.array([float(r["general_frequency"]) for r in rows])


def write_tail_table(
    cfg: TailConfig,
    subdomain_train: str | Path,
    general_train: str | Path,
    subdomain_heldout: str | Path,
    model_dir: str | Path,
    out: str | Path,
    types_out: str | Path | None = None,
    *,
    validation_fraction: float,
) -> list[dict[str, Any]]:
    """Count tokens in the three activation sets (of the held-out one, its validation part
    only: ``validation_fraction`` as in ``evaluation.validation_fraction``), pick the tail
    concepts, write them as CSV (with each token's text); ``types_out``: every token type
    chosen for evaluation (:func:`token_types`)."""
    from transformers import AutoTokenizer

    from ssae_steps.activations.sets import token_counts

    general, validation = token_counts(general_train), validation_counts(subdomain_heldout, validation_fraction)
    if types_out is not None:
        types = token_types(general, validation, cfg.min_count)
        with atomic_path(types_out) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["token_id", "validation_count", "general_count", "general_frequency"]
            )
            writer.writeheader()
            writer.writerows(types)
        log.info("%d token types with >= %d validation occurrences", len(types), cfg.min_count)
    rows = tail_tokens(token_counts(subdomain_train), general, validation, cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    for row in rows:
        row["token"] = tokenizer.decode([row["token_id"]])
    fields = ["token_id", "token", "subdomain_count", "general_count", "ratio", "validation_count"]
    with atomic_path(out) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    log.info("%d tail concepts; most specific: %s", len(rows), [r["token"] for r in rows[:15]])
    return rows


def tail_concepts_command(
    params: Annotated[TailConfig, "JSON object of evaluation.tail"],
    subdomain_train: Annotated[Path, "manifest of the seed set's activations"],
    general_train: Annotated[Path, "manifest of the pool's training activations"],
    subdomain_heldout: Path,
    model_dir: Path,
    out: Path,
    validation_fraction: Annotated[float, "evaluation.validation_fraction: only validation documents are counted"],
    types_out: Annotated[Path | None, "CSV of every token type with >= min_count validation occurrences"] = None,
) -> None:
    """Pick the subdomain's tail concepts (and list every token type to evaluate), on the
    validation part of the held-out text."""
    write_tail_table(
        params,
        subdomain_train,
        general_train,
        subdomain_heldout,
        model_dir,
        out,
        types_out,
        validation_fraction=validation_fraction,
    )


def main(argv: list[str] | None = None) -> int:
    return run(tail_concepts_command, argv)


if __name__ == "__main__":
    sys.exit(main())

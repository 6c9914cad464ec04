"""Training text of the biography SSAEs and of the swap control: one table per set, every
row in split ``train``, which :mod:`ssae_steps.activations.cache` caches like any other set
and :mod:`ssae_steps.sae.train` finetunes the GSAE on (the same recipe for every set).

Sets (``--text``):

- ``bios``: the training biographies of :mod:`ssae_steps.debias.bios` (split ``train``):
  real articles and, with counterfactual copies on, their gender-swapped copies. The
  biography SSAE of the main variant ("copies").
- ``bios_real``: the same real articles, no copy. The biography SSAE of the "real only"
  variant, in which no training data - probes, gender latents or SAE - holds swapped text.
- ``swap``: the swap control - non-biography documents of the general pool's training
  split, each with its gender-swapped copy made by the same swaps
  (:func:`ssae_steps.debias.bios.swap_gender`). Finetuned like the biography SSAE, it
  separates "finetuned on biographies" from "finetuned on gender-swapped pairs".

The swap control's documents:

- non-biography: not a person article (:func:`is_biography`) - its ``topic`` is not
  "People" and its ``description`` names no profession
  keyword of :mod:`ssae_steps.debias.bios` or other person noun ("founder") and holds no
  life or reign dates ("(1809-1882)", "(born ...)", "from 690 to 705"; this also drops a
  few dynasties and periods). Gods, mythological and fictional figures, works of fiction
  and articles such as "Mother" or "Women's rights" stay. A pool with neither label is
  refused: nothing would keep biographies (the case study's test articles among them) out;
- in the pool's training split and not held out by a subdomain (``exclude_heldout_of``),
  as for the GSAE;
- at least :data:`MIN_SWAPS` gendered words swapped, so that the two texts of a pair differ;
- the densest in gendered words (per character) first, until their characters reach those
  of the real articles in ``bios``: the control's pairs differ about as much as the
  biographies' do (the summaries give both densities) and it trains on about as many
  distinct tokens (fewer where the pool has too few such documents: the stage logs it).
  Every set is finetuned for the same number of tokens (``training.ssae.tokens``), so a
  smaller set is read more times.

Each set also gets a JSON summary (documents, copies, characters, gendered words per
1,000 characters) that the case study's summary shows beside its results.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from ssae_steps.cli import run
from ssae_steps.config import ConfigError
from ssae_steps.debias.bios import PROFESSION_WORD, SWAP_WORD, swap_gender
from ssae_steps.files import atomic_path, write_json

log = logging.getLogger("ssae.debias.text")
TEXT_SETS = ("bios", "bios_real", "swap")
BIOGRAPHY_TOPICS = frozenset({"People"})
# Life or reign dates in a Wikipedia short description: "(1809–1882)", "(c. 980–1037)",
# "(born 1958)", "Empress of China from 690 to 705".
LIFE_DATES = re.compile(
    r"\([^()]*\d[^()]*[–-][^()]*\d[^()]*\)|\((?:born|died|b\.|d\.|fl\.|r\.)\s|\bfrom (?:c\. ?)?\d{2,4}\b",
    re.IGNORECASE,
)
# Person nouns a description can hold beyond the profession keywords ("Founder of Buddhism").
PERSON_WORD = re.compile(
    r"\b(philosopher|scholar|founder|prophet|saint|theologian|monk|pope|mystic|preacher|explorer|conqueror)s?\b",
    re.IGNORECASE,
)
MIN_SWAPS = 2
"""Gendered words a swap-control document must have (as the pronoun rule's 2 for biographies)."""


def is_biography(labels: dict[str, Any]) -> bool:
    """A person article, by the pool's labels (where it has them): topic "People", or a
    description that names a profession (as the biographies' labels are read) or another
    person noun, or holds life or reign dates. Mythological and fictional figures stay."""
    description = str(labels.get("description") or "")
    return labels.get("topic") in BIOGRAPHY_TOPICS or bool(
        PROFESSION_WORD.search(description) or PERSON_WORD.search(description) or LIFE_DATES.search(description)
    )


def swapped_words(text: str) -> int:
    return len(SWAP_WORD.findall(text))


def _rows(doc_ids: list[str], texts: list[str], copy: list[bool], sources: list[str], origin: str) -> dict:
    return {
        "doc_id": doc_ids,
        "text": texts,
        "split": ["train"] * len(texts),
        "kind": ["copy" if c else "real" for c in copy],
        "origin": [origin] * len(texts),
        "counterfactual": copy,
        "source_doc": sources,
    }


def biography_text(bios: str | Path, real_only: bool) -> dict[str, list[Any]]:
    """The training biographies (split ``train``), without their copies if ``real_only``."""
    import pyarrow.parquet as pq

    table = pq.read_table(bios).to_pandas()
    if "counterfactual" not in table:
        table["counterfactual"] = False
    if "source_doc" not in table:
        table["source_doc"] = table["doc_id"]
    rows = table[(table["split"] == "train") & ~(table["counterfactual"] & real_only)]
    return _rows(
        rows["doc_id"].tolist(),
        rows["text"].tolist(),
        [bool(c) for c in rows["counterfactual"]],
        rows["source_doc"].tolist(),
        "biography",
    )


def swap_control_text(
    bios: str | Path, pool: str | Path, exclude_heldout_of: list[str | Path] | None = None
) -> dict[str, list[Any]]:
    """Non-biography pool training documents with their gender-swapped copies, matched in
    characters to the real training biographies (see module docstring)."""
    import pyarrow.parquet as pq

    from ssae_steps.data.corpus import doc_id_for, heldout_ids

    biographies = biography_text(bios, real_only=True)
    target = sum(len(t) for t in biographies["text"])
    names = set(pq.read_schema(pool).names)
    labels = [c for c in ("topic", "description") if c in names]
    data = pq.read_table(pool, columns=["doc_id", "text", "split", *labels]).to_pydict()
    if not any(value for c in labels for value in data[c]):
        # Without labels no article can be told to be a biography, and the control would
        # take biographies (test articles among them) as "non-biography" text.
        raise ConfigError(
            f"file {pool}: the swap control needs the pool's `topic` or `description` labels to "
            "leave biographies out; set debias.swap_control: false for this pool"
        )
    blocked: set[str] = set()
    for other in exclude_heldout_of or []:
        blocked |= heldout_ids(other)
    candidates = []
    for i, (doc_id, text, split) in enumerate(zip(data["doc_id"], data["text"], data["split"], strict=True)):
        if split != "train" or doc_id in blocked or is_biography({c: data[c][i] for c in labels}):
            continue
        swaps = swapped_words(text)
        if swaps >= MIN_SWAPS:
            candidates.append((-swaps / max(len(text), 1), doc_id, text))
    if not candidates:
        raise ConfigError(
            f"debias.swap_control: no non-biography training document of {pool} has {MIN_SWAPS} gendered "
            "words to swap; turn the control off"
        )
    chosen: list[tuple[str, str]] = []
    characters = 0
    for _, doc_id, text in sorted(candidates):
        if characters >= target:
            break
        chosen.append((doc_id, text))
        characters += len(text)
    if characters < target:
        log.warning(
            "swap control: %d characters of non-biography text with gendered words, fewer than the %d of the "
            "real training biographies; it trains on these (more passes)",
            characters, target,
        )  # fmt: skip
    doc_ids, texts, copy, sources = [], [], [], []
    seen = set(d for d, _ in chosen)
    for doc_id, text in chosen:
        swapped = swap_gender(text)
        doc_ids += [doc_id]
        texts += [text]
        copy += [False]
        sources += [doc_id]
        if doc_id_for(swapped) not in seen:
            seen.add(doc_id_for(swapped))
            doc_ids += [doc_id_for(swapped)]
            texts += [swapped]
            copy += [True]
            sources += [doc_id]
    log.info(
        "swap control: %d of %d candidate documents (%d characters; the real biographies: %d)",
        len(chosen), len(candidates), characters, target,
    )  # fmt: skip
    return _rows(doc_ids, texts, copy, sources, "pool")


def text_summary(rows: dict[str, list[Any]], text_set: str) -> dict[str, Any]:
    real = [t for t, c in zip(rows["text"], rows["counterfactual"], strict=True) if not c]
    characters = sum(len(t) for t in rows["text"])
    return {
        "set": text_set,
        "documents": len(rows["text"]),
        "real": len(real),
        "copies": len(rows["text"]) - len(real),
        "characters": characters,
        "real_characters": sum(len(t) for t in real),
        "gendered_words_per_1000_characters": round(
            1000 * sum(swapped_words(t) for t in rows["text"]) / max(characters, 1), 2
        ),
    }


def write_finetune_text(
    text_set: str,
    bios: str | Path,
    out: str | Path,
    summary: str | Path,
    pool: str | Path | None = None,
    exclude_heldout_of: list[str | Path] | None = None,
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if text_set == "swap":
        if pool is None:
            raise ConfigError("--pool: the swap control needs the general pool's table")
        rows = swap_control_text(bios, pool, exclude_heldout_of)
    else:
        rows = biography_text(bios, real_only=text_set == "bios_real")
    if not rows["text"]:
        raise ConfigError(f"file {bios}: no training biographies")
    with atomic_path(out) as tmp:
        pq.write_table(pa.table(rows), tmp)
    info = text_summary(rows, text_set)
    write_json(summary, info)
    log.info("wrote %s: %s", out, info)
    return info


def finetune_text_command(
    text: Annotated[Literal["bios", "bios_real", "swap"], "which training text"],
    bios: Annotated[Path, "the biographies table"],
    out: Annotated[Path, "the set's table (parquet, every row in split train)"],
    summary: Annotated[Path, "its JSON summary"],
    pool: Annotated[Path | None, "swap: the general pool's table"] = None,
    exclude_heldout_of: Annotated[list[Path] | None, "swap: tables whose held-out documents to skip"] = None,
) -> None:
    """Write the training text of a biography SSAE or of the swap control."""
    write_finetune_text(text, bios, out, summary, pool, exclude_heldout_of)


def main(argv: list[str] | None = None) -> int:
    return run(finetune_text_command, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Corpus stage: normalise every configured source into one Parquet table per corpus.

Columns: ``doc_id`` (content hash, so the same text has the same id in every corpus),
``text``, ``source``, ``split`` (``train`` or ``heldout``), ``n_chars`` and string label
columns (``title``, ``topic``, ...; null where a source has none).

The held-out split is chosen by hashing ``(seed, doc_id)``, so it does not move when other
documents are added. Later stages never train on ``heldout`` rows. Corpora are built
independently (so changing the subdomain never rebuilds, and re-embeds, the general pool);
the same text has the same ``doc_id`` everywhere, so a stage that trains on the general
corpus drops the subdomain's held-out documents by id (:func:`heldout_ids`).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import re
import sys
import unicodedata
from pathlib import Path
from typing import Annotated, Any

from tqdm import tqdm

from ssae_steps.cli import run
from ssae_steps.config import ConfigError
from ssae_steps.data.config import CorpusConfig
from ssae_steps.data.sources import read_source
from ssae_steps.files import atomic_path, write_json

log = logging.getLogger("ssae.corpus")

CORE_COLUMNS = ("doc_id", "text", "source", "split", "n_chars")


def normalise_text(text: str) -> str:
    """NFC, unix newlines, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def doc_id_for(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _unit_hash(seed: int, doc_id: str) -> float:
    digest = hashlib.sha1(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def heldout_ids(table_path: str | Path) -> set[str]:
    """Ids of a corpus' held-out documents (to keep them out of another corpus' training)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(table_path, columns=["doc_id", "split"])
    return set(table.filter(pc.equal(table["split"], "heldout"))["doc_id"].to_pylist())


def build_corpus(
    name: str,
    cfg: CorpusConfig,
    seed: int,
    out_table: str | Path,
    out_summary: str | Path,
) -> dict[str, Any]:
    """Read, normalise, de-duplicate and split ``cfg``'s sources; write table and summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"corpora.{name}"
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    stats = collections.Counter[str]()
    per_source: dict[str, int] = collections.Counter()
    label_names: list[str] = []
    for i, source in enumerate(cfg.sources):
        for raw, labels in tqdm(
            read_source(source, f"{where}.sources[{i}]"),
            desc=f"{name}: {source.label}",
            unit=" docs",
            file=sys.stderr,
            mininterval=2,
        ):
            text = normalise_text(raw)
            if len(text) < cfg.min_chars:
                stats["too_short"] += 1
                continue
            doc_id = doc_id_for(text)
            if doc_id in seen:
                stats["duplicates"] += 1
                continue
            seen.add(doc_id)
            for key in labels:
                if key not in label_names and key not in CORE_COLUMNS:
                    label_names.append(key)
            rows.append({"doc_id": doc_id, "text": text, "source": source.label, "labels": labels})
            per_source[source.label] += 1
    if not rows:
        raise ConfigError(f"{where}.sources: no documents of at least min_chars={cfg.min_chars} characters")
    if cfg.max_docs is not None and len(rows) > cfg.max_docs:
        keep = set(sorted((r["doc_id"] for r in rows), key=lambda d: _unit_hash(seed + 1, d))[: cfg.max_docs])
        rows = [r for r in rows if r["doc_id"] in keep]
    for row in rows:
        row["split"] = "heldout" if _unit_hash(seed, row["doc_id"]) < cfg.heldout_fraction else "train"
    n_heldout = sum(r["split"] == "heldout" for r in rows)
    if n_heldout == 0 or n_heldout == len(rows):
        raise ConfigError(
            f"{where}.heldout_fraction: {cfg.heldout_fraction} of {len(rows)} documents leaves an empty "
            f"{'held-out' if n_heldout == 0 else 'training'} split; add documents or change the fraction"
        )

    columns: dict[str, list[Any]] = {c: [] for c in CORE_COLUMNS}
    columns.update({label: [] for label in label_names})
    for row in rows:
        for c in ("doc_id", "text", "source", "split"):
            columns[c].append(row[c])
        columns["n_chars"].append(len(row["text"]))
        for label in label_names:
            columns[label].append(row["labels"].get(label))
    schema = pa.schema(
        [(c, pa.int64() if c == "n_chars" else pa.string()) for c in columns],
        metadata={"ssae.corpus": name, "ssae.role": cfg.role, "ssae.seed": str(seed)},
    )
    table = pa.table(columns, schema=schema)
    with atomic_path(out_table) as tmp:
        pq.write_table(table, tmp, compression="zstd")

    summary = {
        "corpus": name,
        "role": cfg.role,
        "documents": len(rows),
        "train_documents": len(rows) - n_heldout,
        "heldout_documents": n_heldout,
        "characters": int(sum(columns["n_chars"])),
        "heldout_characters": int(
            sum(n for n, s in zip(columns["n_chars"], columns["split"], strict=True) if s == "heldout")
        ),
        "documents_per_source": dict(per_source),
        "dropped": dict(stats),
        "label_columns": label_names,
    }
    if "topic" in label_names:
        summary["top_topics"] = collections.Counter(t for t in columns["topic"] if t).most_common(15)
    write_json(out_summary, summary)
    log.info(
        "%s: %d documents (%d held out), %.1f MB of text",
        name,
        len(rows),
        n_heldout,
        summary["characters"] / 1e6,
    )
    return summary


def read_corpus(path: str | Path, split: str | None = None) -> Any:
    """Load a corpus table as a pandas DataFrame, optionally one split only."""
    import pyarrow.parquet as pq

    filters = [("split", "=", split)] if split else None
    return pq.read_table(path, filters=filters).to_pandas()


def build_corpus_command(
    name: Annotated[str, "corpus name (the key under `corpora`)"],
    params: Annotated[dict[str, Any], "the corpus config"],
    out_table: Path,
    out_summary: Path,
    seed: int = 0,
) -> None:
    """Read a corpus's sources and write its document table and summary."""
    build_corpus(name, CorpusConfig.from_dict(params, f"corpora.{name}"), seed, out_table, out_summary)


def main(argv: list[str] | None = None) -> int:
    return run(build_corpus_command, argv)


if __name__ == "__main__":
    sys.exit(main())

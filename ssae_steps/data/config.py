"""Configuration of the corpora and their text sources (torch-free: the workflow imports it to check config)."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ssae_steps.config import ConfigError, from_mapping, require_at_least

SourceKind = Literal["wiki_summaries", "wikibooks_recipes", "python_docs", "jsonl", "parquet", "txt", "hf_dataset"]


FILE_KINDS = ("jsonl", "parquet", "txt")


@dataclass
class SourceConfig:
    """One text source of a corpus, plus optional filters applied to its records."""

    kind: SourceKind
    """Reader to use (see the module docstring)."""
    path: str | None = None
    """File, directory or glob for jsonl/parquet/txt."""
    name: str | None = None
    """Dataset name for hf_dataset."""
    subset: str | None = None
    """Dataset configuration name for hf_dataset."""
    split: str = "train"
    """Dataset split for hf_dataset."""
    text_field: str = "text"
    """Column/key holding the document text (jsonl, parquet, hf_dataset)."""
    label_fields: list[str] = field(default_factory=list)
    """Columns/keys copied into the corpus table as string labels."""
    split_on: Literal["file", "paragraph", "line"] = "file"
    """How a txt file is cut into documents."""
    topics: list[str] = field(default_factory=list)
    """Keep only records whose ``topic`` label is one of these (empty: keep all)."""
    keywords: list[str] = field(default_factory=list)
    """Keep only records mentioning one of these words (case-insensitive, whole words)."""
    exclude_keywords: list[str] = field(default_factory=list)
    """Drop records mentioning one of these words."""
    max_docs: int | None = None
    """Keep at most this many records from this source (after filters, in source order)."""

    def validate(self, where: str) -> None:
        if self.kind in FILE_KINDS and not self.path:
            raise ConfigError(f"{where}.path: required for a {self.kind} source")
        if self.kind == "hf_dataset" and not self.name:
            raise ConfigError(f"{where}.name: required for an hf_dataset source")
        require_at_least(where, 1, max_docs=self.max_docs)

    @property
    def label(self) -> str:
        """Short name recorded in the corpus ``source`` column."""
        if self.kind in FILE_KINDS:
            return f"{self.kind}:{Path(self.path or '').name}"
        if self.kind == "hf_dataset":
            return f"hf:{self.name}"
        return self.kind


def expand_paths(pattern: str, where: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise ConfigError(f"{where}.path: no file matches {pattern!r}")
    return files


@dataclass
class CorpusConfig:
    """One named corpus: where its text comes from and how it is split."""

    sources: list[SourceConfig]
    """Text sources, read in order; exact duplicate texts are kept once."""
    role: Literal["general", "subdomain"] = "general"
    """``general`` trains the general SAE; ``subdomain`` seeds retrieval and the SSAE."""
    heldout_fraction: float = 0.1
    """Fraction of documents kept out of every training stage, for evaluation."""
    min_chars: int = 200
    """Documents shorter than this (after normalisation) are dropped."""
    max_docs: int | None = None
    """Keep at most this many documents (a deterministic hash-ordered sample)."""

    def validate(self, where: str) -> None:
        if not self.sources:
            raise ConfigError(f"{where}.sources: at least one source is required")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"{where}.heldout_fraction: must be in (0, 1), got {self.heldout_fraction}")
        require_at_least(where, 1, min_chars=self.min_chars)
        require_at_least(where, 2, max_docs=self.max_docs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> CorpusConfig:
        return from_mapping(cls, data, where)

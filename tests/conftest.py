from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def wiki_texts(limit: int = 400, topic: str | None = None) -> list[dict[str, str]]:
    """Real English records from the shipped Wikipedia summaries package."""
    from ssae_steps.text_sources import read_wiki_summaries

    out = []
    for text, labels in read_wiki_summaries():
        if len(text) >= 200 and (topic is None or labels["topic"] == topic):
            out.append({"text": text, **labels})
            if len(out) >= limit:
                break
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [r["text"] for r in wiki_texts(600)]
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts)


@pytest.fixture(scope="session")
def small_corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A general and a physical-sciences jsonl file of real Wikipedia summaries."""
    root = tmp_path_factory.mktemp("corpora")
    files = {}
    for name, topic, limit in [("general", None, 240), ("physics", "Physical sciences", 60)]:
        path = root / f"{name}.jsonl"
        with path.open("w") as handle:
            for row in wiki_texts(limit, topic):
                handle.write(json.dumps(row) + "\n")
        files[name] = path
    return files

"""The finetuning texts of the biography SSAEs and the swap control: what each SAE reads."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssae_steps.activations.cache import select_documents
from ssae_steps.config import ConfigError
from ssae_steps.data.corpus import doc_id_for
from ssae_steps.debias.bios import BiosConfig, build_biographies, swap_gender
from ssae_steps.debias.finetune_text import MIN_SWAPS, is_biography, swapped_words, write_finetune_text


def biographies(tmp_path: Path) -> Path:
    """A biographies table with counterfactual copies, from a local file of 30 articles per group."""
    rows = [
        {"hard_text": f"Ann {i} of {p}: she wrote; her work." if g else f"Tom {i} of {p}: he wrote; his work.",
         "profession": p, "gender": g}
        for i in range(30)
        for p in ("a", "b")
        for g in (0, 1)
    ]  # fmt: skip
    source = tmp_path / "bios.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = BiosConfig(source="local", path=str(source), professions=["a", "b"], test_per_group=5, counterfactual=True)
    build_biographies(cfg, seed=0, out=tmp_path / "bios.parquet")
    return tmp_path / "bios.parquet"


def test_the_real_only_biography_ssae_reads_no_copy(tmp_path: Path) -> None:
    """The cache reads the set's ``train`` documents (the same selection the
    cache_bios_activations rule makes): for ``bios_real`` these are exactly the real
    training articles, and no counterfactual copy - while ``bios`` holds both."""
    table = pq.read_table(biographies(tmp_path)).to_pandas()
    train = table[table["split"] == "train"]
    copies = set(train.loc[train["counterfactual"], "doc_id"])
    real = set(train.loc[~train["counterfactual"], "doc_id"])
    assert copies and real and not copies & real

    read = {}
    for text_set in ("bios", "bios_real"):
        out = tmp_path / f"{text_set}.parquet"
        info = write_finetune_text(text_set, tmp_path / "bios.parquet", out, tmp_path / f"{text_set}.json")
        doc_ids, _, labels = select_documents(out, "train", [])
        read[text_set] = set(doc_ids)
        assert json.loads((tmp_path / f"{text_set}.json").read_text()) == info
    assert read["bios_real"] == real and not read["bios_real"] & copies
    assert read["bios"] == real | copies  # the main variant's biography SSAE reads both
    assert info["copies"] == 0 and info["real"] == len(real)
    # Not a copy by any other route either: no row of bios_real is the swap of another.
    texts = set(table.loc[table["doc_id"].isin(read["bios_real"]), "text"])
    assert not {swap_gender(t) for t in texts} & texts


def pool_table(tmp_path: Path, rows: list[dict]) -> Path:
    columns = {key: [r.get(key) for r in rows] for key in ("text", "split", "topic", "description")}
    columns["doc_id"] = [doc_id_for(t) for t in columns["text"]]
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def test_the_swap_control_reads_non_biography_text_with_the_same_swaps(tmp_path: Path) -> None:
    bios = biographies(tmp_path)
    novel = "The queen loved her son. She gave him her crown, and he ruled with his wife beside him."
    myth = "Hera was the wife of Zeus. She was his sister too; her anger followed him and his sons."
    held_by_subdomain = "The king and his brother met; he said his mother had told him."
    rows = [
        {"text": novel, "split": "train", "topic": "Arts", "description": "1877 novel by Leo Tolstoy"},
        {"text": myth, "split": "train", "topic": "Philosophy and religion", "description": "Greek goddess"},
        # Biographies, by the labels: a person article, life dates, reign dates, a profession.
        {"text": "He was born in Ohio. His father was a farmer.", "split": "train", "topic": "People"},
        {"text": "He ruled Egypt. His wife outlived him.", "split": "train", "topic": "Uncategorized",
         "description": "Pharaoh of Egypt from 51 to 30 BC"},
        {"text": "She sang at court; her songs pleased him.", "split": "train", "topic": "Arts",
         "description": "English singer (1901–1960)"},
        {"text": "He founded a sect; his sons followed him.", "split": "train", "topic": "Uncategorized",
         "description": "Founder of a religion"},
        # Too few gendered words, held out of the pool, held out by the subdomain.
        {"text": "A castle where a king once stayed, on a hill.", "split": "train", "topic": "Arts"},
        {"text": "He sailed; his ship sank and his crew saved him.", "split": "heldout", "topic": "History"},
        {"text": held_by_subdomain, "split": "train", "topic": "History"},
    ]  # fmt: skip
    pool = pool_table(tmp_path, rows)
    subdomain = tmp_path / "subdomain.parquet"
    pq.write_table(pa.table({"doc_id": [doc_id_for(held_by_subdomain)], "split": ["heldout"]}), subdomain)

    out = tmp_path / "swap.parquet"
    info = write_finetune_text("swap", bios, out, tmp_path / "swap.json", pool, [subdomain])
    chosen = pq.read_table(out).to_pandas()
    doc_ids, _, _ = select_documents(out, "train", [])
    assert set(doc_ids) == set(chosen["doc_id"])  # every row is read by the cache
    originals = chosen[~chosen["counterfactual"]]
    # Non-biography pool training text only (the pool here has less than the biographies'
    # characters, so every such document is taken).
    assert set(originals["text"]) == {novel, myth}
    assert not set(chosen["doc_id"]) & set(pq.read_table(bios).to_pandas()["doc_id"])
    # Each with its copy, made by the biographies' swaps.
    copies = chosen[chosen["counterfactual"]].set_index("source_doc")["text"]
    for row in originals.itertuples():
        assert copies[row.doc_id] == swap_gender(row.text) != row.text
    assert copies[doc_id_for(novel)].startswith("The king loved his daughter. He gave her his crown")
    assert info["real"] == info["copies"] == 2 and info["gendered_words_per_1000_characters"] > 0

    # Matched in characters: with a target below the pool's supply, the densest come first.
    many = [
        {"text": f"Tale {i}: " + "he saw her. " * (i + 1) + "x" * 400, "split": "train", "topic": "Arts"}
        for i in range(200)
    ]
    write_finetune_text("swap", bios, out, tmp_path / "s.json", pool_table(tmp_path, many))
    chosen = pq.read_table(out).to_pandas()
    real_chars = sum(len(t) for t in chosen.loc[~chosen["counterfactual"], "text"])
    table = pq.read_table(bios).to_pandas()
    target = sum(len(t) for t in table.loc[(table["split"] == "train") & ~table["counterfactual"], "text"])
    assert target <= real_chars < target + max(len(r["text"]) for r in many)
    densest = sorted(many, key=lambda r: -swapped_words(r["text"]) / len(r["text"]))
    assert list(chosen.loc[~chosen["counterfactual"], "text"]) == [r["text"] for r in densest[: len(chosen) // 2]]


def test_the_swap_control_refuses_a_pool_without_labels(tmp_path: Path) -> None:
    """Without topic or description no biography can be left out, so the control would read
    biographies (the case study's test articles among them) as non-biography text."""
    bios = biographies(tmp_path)
    pool = pool_table(tmp_path, [{"text": "He wrote; his book pleased her.", "split": "train"}])
    with pytest.raises(ConfigError, match="set debias.swap_control: false"):
        write_finetune_text("swap", bios, tmp_path / "s.parquet", tmp_path / "s.json", pool)


def test_the_swap_control_needs_gendered_non_biography_text(tmp_path: Path) -> None:
    bios = biographies(tmp_path)
    pool = pool_table(tmp_path, [{"text": "He wrote; his book.", "split": "train", "topic": "People"}])
    with pytest.raises(ConfigError, match="debias.swap_control: no non-biography training document"):
        write_finetune_text("swap", bios, tmp_path / "s.parquet", tmp_path / "s.json", pool)
    assert MIN_SWAPS == 2 and not is_biography({"topic": "Arts", "description": "Ancient Greek goddess"})
    assert is_biography({"description": "Semi-legendary Chinese philosopher, founder of Taoism"})

"""Compare the data-selection strategies of one subdomain: sizes, overlap between the
retrieved sets (Jaccard), and what was retrieved (topic mix when the corpora carry a
``topic`` label: the share of retrieved documents in the seed set's own topic is a
direct, label-based measure of retrieval precision)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from ssae_steps.cli import run, save_figure
from ssae_steps.files import write_json, write_text

log = logging.getLogger("ssae.retrieval_report")


def compare_strategies(tables: list[str | Path]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    frames = {}
    for path in tables:
        df = pq.read_table(path).to_pandas()
        frames[str(df["strategy"].iloc[0]) if len(df) else Path(path).parent.name] = df
    retrieved = {s: set(df.loc[df["origin"] == "retrieved", "doc_id"]) for s, df in frames.items()}
    names = list(frames)
    overlap = {
        a: {
            b: (
                len(retrieved[a] & retrieved[b]) / len(retrieved[a] | retrieved[b])
                if retrieved[a] | retrieved[b]
                else None
            )
            for b in names
        }
        for a in names
    }
    seed_topic = None
    any_df = next(iter(frames.values()))
    if "topic" in any_df.columns:
        seeds = any_df.loc[any_df["origin"] == "seed", "topic"].dropna()
        seed_topic = seeds.mode().iloc[0] if len(seeds) else None
    rows = []
    for name, df in frames.items():
        got = df[df["origin"] == "retrieved"]
        row = {
            "strategy": name,
            "documents": len(df),
            "tokens": int(df["n_tokens"].sum()),
            "seed_tokens": int(df.loc[df["origin"] == "seed", "n_tokens"].sum()),
            "retrieved_documents": len(got),
            "retrieved_tokens": int(got["n_tokens"].sum()),
            "median_score": float(got["score"].median()) if got["score"].notna().any() else None,
        }
        if seed_topic is not None:
            row["retrieved_in_seed_topic"] = float((got["topic"] == seed_topic).mean()) if len(got) else None
            row["retrieved_topics"] = got["topic"].fillna("(none)").value_counts().to_dict()
        rows.append(row)
    return {"seed_topic": seed_topic, "strategies": rows, "jaccard_retrieved": overlap}


def _markdown(result: dict[str, Any], subdomain: str) -> str:
    lines = [f"# Data selection for `{subdomain}`", ""]
    head = "| strategy | docs | tokens | seed tokens | retrieved docs | retrieved tokens | median score |"
    if result["seed_topic"]:
        head += f" retrieved in '{result['seed_topic']}' |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["strategies"]:
        score = f"{r['median_score']:.4g}" if r["median_score"] is not None else "-"
        counts = [r[k] for k in ("documents", "tokens", "seed_tokens", "retrieved_documents", "retrieved_tokens")]
        line = f"| {r['strategy']} | " + " | ".join(f"{c:,}" for c in counts) + f" | {score} |"
        if result["seed_topic"]:
            share = r.get("retrieved_in_seed_topic")
            line += f" {share:.1%} |" if share is not None else " - |"
        lines.append(line)
    names = [r["strategy"] for r in result["strategies"]]
    lines += ["", "Jaccard overlap of the retrieved documents (seed documents excluded):", ""]
    lines += ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for a in names:
        cells = [f"{v:.2f}" if (v := result["jaccard_retrieved"][a][b]) is not None else "-" for b in names]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Scores are not comparable across strategies (cosine for dense, BM25 for bm25, "
        "TracIn influence on the seed set's GSAE loss for the *_tracin strategies).",
    ]
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], subdomain: str, out_plot: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["strategies"]
    names = [r["strategy"] for r in rows]
    with_topics = result["seed_topic"] is not None
    fig, axes = plt.subplots(1, 3 if with_topics else 2, figsize=(16 if with_topics else 11, 4.5))
    ax = axes[0]
    seed = np.array([r["seed_tokens"] for r in rows])
    got = np.array([r["retrieved_tokens"] for r in rows])
    ax.bar(names, seed, label="seed")
    ax.bar(names, got, bottom=seed, label="retrieved")
    ax.set_ylabel("tokens")
    ax.set_title("Corpus size per strategy")
    ax.legend()
    ax = axes[1]
    matrix = np.array(
        [[np.nan if (v := result["jaccard_retrieved"][a][b]) is None else v for b in names] for a in names]
    )
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w" if matrix[i, j] < 0.6 else "k")
    ax.set_title("Overlap of retrieved documents (Jaccard)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if with_topics:
        ax = axes[2]
        topics: list[str] = []
        for r in rows:
            for t in r["retrieved_topics"]:
                if t not in topics:
                    topics.append(t)
        bottom = np.zeros(len(rows))
        colours = plt.get_cmap("tab20").colors
        for i, topic in enumerate(topics):
            share = np.array([r["retrieved_topics"].get(topic, 0) / max(r["retrieved_documents"], 1) for r in rows])
            ax.bar(names, share, bottom=bottom, label=topic, color=colours[i % len(colours)])
            bottom += share
        ax.set_ylabel("share of retrieved documents")
        ax.set_title("Topics of retrieved documents")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.suptitle(f"Data selection for {subdomain}")
    fig.tight_layout()
    save_figure(fig, out_plot)


def retrieval_report(
    tables: list[str | Path], subdomain: str, out_md: str | Path, out_json: str | Path, out_plot: str | Path
) -> dict[str, Any]:
    result = compare_strategies(tables)
    write_json(out_json, result)
    write_text(out_md, _markdown(result, subdomain))
    _plot(result, subdomain, out_plot)
    log.info("compared %d strategies for %s", len(result["strategies"]), subdomain)
    return result


def main(argv: list[str] | None = None) -> int:
    return run(retrieval_report, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Corpus overview: one table and one figure comparing all corpora at a glance
(documents per split and source, document-length distributions)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ssae_steps.cli import run, save_figure
from ssae_steps.files import atomic_path

log = logging.getLogger("ssae.corpus_overview")


def corpus_overview(tables: list[str | Path], out_plot: str | Path, out_table: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    frames = {}
    for path in tables:
        table = pq.read_table(path, columns=["source", "split", "n_chars"])
        name = (table.schema.metadata or {}).get(b"ssae.corpus", Path(path).parent.name.encode()).decode()
        frames[name] = table.to_pandas()

    rows = []
    for name, df in frames.items():
        for source, part in df.groupby("source"):
            rows.append(
                {
                    "corpus": name,
                    "source": source,
                    "documents": len(part),
                    "heldout_documents": int((part["split"] == "heldout").sum()),
                    "characters": int(part["n_chars"].sum()),
                    "median_chars": float(part["n_chars"].median()),
                }
            )
    summary = pd.DataFrame(rows)
    with atomic_path(out_table) as tmp:
        summary.to_csv(tmp, index=False)

    fig, (ax_len, ax_src) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.logspace(np.log10(100), np.log10(max(df["n_chars"].max() for df in frames.values()) + 1), 40)
    for name, df in frames.items():
        ax_len.hist(
            df["n_chars"], bins=bins, histtype="step", linewidth=1.5, density=True, label=f"{name} ({len(df):,} docs)"
        )
    ax_len.set_xscale("log")
    ax_len.set_xlabel("document length (characters)")
    ax_len.set_ylabel("density")
    ax_len.set_title("Document lengths")
    ax_len.legend()
    labels = [f"{r.corpus}\n{r.source}" for r in summary.itertuples()]
    train = summary["documents"] - summary["heldout_documents"]
    ax_src.barh(labels, train, label="train")
    ax_src.barh(labels, summary["heldout_documents"], left=train, label="held out")
    ax_src.set_xlabel("documents")
    ax_src.set_title("Documents per corpus and source")
    ax_src.invert_yaxis()
    ax_src.legend()
    fig.tight_layout()
    save_figure(fig, out_plot)
    log.info("wrote %s and %s", out_plot, out_table)


def main(argv: list[str] | None = None) -> int:
    return run(corpus_overview, argv)


if __name__ == "__main__":
    sys.exit(main())

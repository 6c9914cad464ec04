"""Gather the parts of a corpus's embedding computed by several jobs into its vectors and
meta (:func:`ssae_steps.retrieval.embed.gather_embeddings`): the scatter/gather of a large pool."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from ssae_steps.cli import run
from ssae_steps.retrieval.embed import gather_embeddings


def gather_embeddings_command(
    parts: Annotated[list[Path], "the parts' meta files (each beside its .npy)"], out_vectors: Path, out_meta: Path
) -> None:
    """Gather the parts of a corpus's embedding into one array and meta file."""
    gather_embeddings(parts, out_vectors, out_meta)


def main(argv: list[str] | None = None) -> int:
    return run(gather_embeddings_command, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Gather the parts of a corpus's embedding computed by several jobs into its vectors and
meta (:func:`ssae_steps.retrieval.embed.gather_embeddings`): the scatter/gather of a large pool."""

from __future__ import annotations

import argparse
import sys

from ssae_steps.config import run_stage
from ssae_steps.retrieval.embed import gather_embeddings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", required=True, help="the parts' meta files (each beside its .npy)")
    parser.add_argument("--out-vectors", required=True)
    parser.add_argument("--out-meta", required=True)
    args = parser.parse_args(argv)
    return run_stage(lambda: gather_embeddings(args.parts, args.out_vectors, args.out_meta))


if __name__ == "__main__":
    sys.exit(main())

"""Gather the parts of an activation set cached by several jobs into the set's manifest
(:func:`ssae_steps.activations.cache.gather_parts`): the scatter/gather of a large pool."""

from __future__ import annotations

import argparse
import sys

from ssae_steps.activations.cache import gather_parts
from ssae_steps.config import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", required=True, help="the part manifests")
    parser.add_argument("--manifest", required=True, help="the set's manifest to write")
    args = parser.parse_args(argv)
    return run_stage(lambda: gather_parts(args.parts, args.manifest))


if __name__ == "__main__":
    sys.exit(main())

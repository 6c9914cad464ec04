"""Caching a large set in parts (scatter/gather, ``activations.parts`` > 1 in the workflow).

A set's shards are split into ``parts`` contiguous runs (:func:`part_shards`). Job i of the
scatter (:func:`ssae_steps.activations.cache.cache_activations` with ``part=(i, n)``)
computes only the batches that hold rows of its run, writes those shards and a part
manifest with its raw statistics; :func:`gather_parts` then writes the set's manifest.
Every part cuts the same windows in the same order and keys its shards with the set's run
key, so the gathered shards are the very files one job would write (same rows, boundaries
and bytes), and the trainer reads the set unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any

from ssae_steps.activations.shards import SHARD_PATTERN
from ssae_steps.activations.writer import RunningStats
from ssae_steps.cli import run
from ssae_steps.config import ConfigError, part_range
from ssae_steps.files import write_json

log = logging.getLogger("ssae.activations")


def part_shards(total_rows: int, shard_tokens: int, part: int, parts: int) -> tuple[int, int]:
    """Shard indices ``[first, last)`` part ``part`` of ``parts`` writes: the set's shards
    in contiguous runs of near-equal length."""
    return part_range(math.ceil(total_rows / shard_tokens), part, parts, "activations.parts")


def gather_parts(part_manifests: list[str | Path], manifest: str | Path) -> dict[str, Any]:
    """The set's manifest from its parts': shards in order, statistics merged from the
    parts' sums; parts of different runs or with gaps fail."""
    parts = sorted((json.loads(Path(p).read_text()) for p in part_manifests), key=lambda m: m["part"])
    if not parts:
        raise ConfigError("activations.parts: no part manifests to gather")
    n = parts[0]["parts"]
    if [m["part"] for m in parts] != list(range(n)) or any(m["parts"] != n for m in parts):
        raise ConfigError(f"{manifest}: parts {[m['part'] for m in parts]} are not 0..{n - 1} of one split")
    if len({m["run_key"] for m in parts}) != 1:
        raise ConfigError(f"{manifest}: parts from different runs (run keys differ); rerun the parts")
    expected = 0
    for m in parts:
        first, last = m["shard_range"]
        if first != expected or [s["file"] for s in m["shards"]] != [
            SHARD_PATTERN.format(i) for i in range(first, last)
        ]:
            raise ConfigError(f"{manifest}: part {m['part']} holds shards {m['shard_range']}, expected from {expected}")
        expected = last
    info = {k: v for k, v in parts[0].items() if k not in ("part", "parts", "shard_range", "raw_stats")}
    info["shards"] = [s for m in parts for s in m["shards"]]
    info["tokens"] = sum(s["rows"] for s in info["shards"])
    info["stats"] = RunningStats.merged([m["raw_stats"] for m in parts]).summary()
    info["seconds"] = round(sum(m["seconds"] for m in parts), 2)
    info["tokens_per_second"] = round(info["tokens"] / max(info["seconds"], 1e-9), 1)
    info["gathered_parts"] = n
    write_json(manifest, info)
    log.info("gathered %d parts: %d tokens in %d shards", n, info["tokens"], len(info["shards"]))
    return info


def gather_command(
    parts: Annotated[list[Path], "the part manifests"],
    manifest: Annotated[Path, "the set's manifest to write"],
) -> None:
    """Gather the parts of an activation set cached by several jobs into the set's manifest."""
    gather_parts(list(parts), manifest)


def main(argv: list[str] | None = None) -> int:
    return run(gather_command, argv)


if __name__ == "__main__":
    sys.exit(main())

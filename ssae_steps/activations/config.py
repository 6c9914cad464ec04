"""Configuration of the activation cache (torch-free: the workflow imports it to check config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ssae_steps.config import (
    from_mapping,
    require_at_least,
)


@dataclass
class ActivationConfig:
    """How activations are computed and stored."""

    context_length: int = 128
    """Tokens per window, BOS included."""
    batch_size: int = 16
    """Windows per forward pass."""
    dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the activation vectors."""
    shard_tokens: int = 65_536
    """Rows (tokens) per shard (written in record batches of 4,096 rows, the reader's unit)."""
    max_train_tokens: int | None = 400_000
    """Cap on tokens cached from a training set (whole windows of a seeded uniform sample
    of its documents)."""
    max_heldout_tokens: int | None = 50_000
    """Cap on tokens cached from a held-out (evaluation) set (sampled the same way)."""
    parts: int = 1
    """Jobs the general pool's training set is cached in (scatter/gather; the shards are
    the same whatever the number)."""

    def validate(self, where: str) -> None:
        require_at_least(where, 2, context_length=self.context_length)
        require_at_least(
            where,
            1,
            batch_size=self.batch_size,
            shard_tokens=self.shard_tokens,
            parts=self.parts,
            max_train_tokens=self.max_train_tokens,
            max_heldout_tokens=self.max_heldout_tokens,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "activations") -> ActivationConfig:
        return from_mapping(cls, data, where)

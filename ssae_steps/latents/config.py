"""Configuration of the latent lineage (torch-free: the workflow imports it to check config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssae_steps.config import ConfigError, from_mapping


@dataclass
class LineageConfig:
    kept_cosine: float = 0.9
    """Decoder cosine at or above which (with the correlation) an SSAE latent is kept."""
    new_cosine: float = 0.5
    """Decoder cosine below which an SSAE latent is new (and a GSAE latent without such a
    match dropped)."""
    kept_correlation: float = 0.5
    """Activation correlation with the matched GSAE latent needed to count as kept."""
    contexts: int = 5
    """Browser: top-activating held-out contexts per latent."""
    context_before: int = 10
    """Browser: tokens shown before the firing token."""
    context_after: int = 3
    """Browser: tokens shown after it."""
    logit_tokens: int = 8
    """Browser: tokens each decoder direction promotes most through the unembedding."""
    page_size: int = 100
    """Browser: latents listed per page."""

    def validate(self, where: str) -> None:
        for key in ("kept_cosine", "new_cosine", "kept_correlation"):
            if not -1 <= getattr(self, key) <= 1:
                raise ConfigError(f"{where}.{key}: must be in [-1, 1], got {getattr(self, key)}")
        if self.new_cosine > self.kept_cosine:
            raise ConfigError(f"{where}.new_cosine: {self.new_cosine} is above kept_cosine {self.kept_cosine}")
        for key in ("contexts", "logit_tokens", "page_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "lineage") -> LineageConfig:
        return from_mapping(cls, data, where)

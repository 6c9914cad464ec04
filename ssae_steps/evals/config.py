"""Configuration of the evaluations (torch-free: the workflow imports it to check config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssae_steps.config import ConfigError, from_mapping, require_at_least


@dataclass
class TailConfig:
    min_ratio: float = 4.0
    """Subdomain/general frequency ratio a tail token needs."""
    max_general_frequency: float = 1e-4
    """Largest general-pool frequency (per token) of a tail token: rare means at most this
    (``ssae_steps.evals.tail.is_rare``), here and in the TERM study."""
    min_count: int = 5
    """Fewest occurrences in the validation part of the subdomain held-out text (tail
    concepts and the token types evaluated; the test part is never counted)."""
    max_concepts: int = 200
    detection_f1: float = 0.5
    """A concept is captured when one latent detects it with at least this F1."""

    def validate(self, where: str) -> None:
        if self.min_ratio <= 0 or self.max_general_frequency <= 0 or not 0 < self.detection_f1 <= 1:
            raise ConfigError(f"{where}: min_ratio, max_general_frequency > 0 and detection_f1 in (0, 1] required")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "evaluation.tail") -> TailConfig:
        return from_mapping(cls, data, where)


@dataclass
class TermStudyConfig:
    """The workflow's ``term_study`` section (``enabled`` aside)."""

    tilts: list[float] = field(default_factory=lambda: [0.0, 1.0, 10.0, 100.0, 500.0])
    """Tilts to train; must include 0 (plain ERM, the reference of every comparison)."""
    extra_ks: list[int] = field(default_factory=lambda: [16])
    """k values besides the main k (one seed each): the paper finds TERM competitive only in
    a narrow L0 band."""
    seeds: int = 2
    """Training seeds at the main k (the first of ``training.seeds``)."""

    def validate(self, where: str) -> None:
        if 0.0 not in self.tilts or any(t < 0 for t in self.tilts) or len(set(self.tilts)) != len(self.tilts):
            raise ConfigError(f"{where}.tilts: distinct values >= 0 including 0 (the ERM reference), got {self.tilts}")
        if self.seeds < 1:
            raise ConfigError(f"{where}.seeds: at least 1, got {self.seeds}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "term_study") -> TermStudyConfig:
        return from_mapping(cls, data, where)


@dataclass
class EvaluationConfig:
    loss_tokens: int = 8192
    """Tokens per evaluation set scored with the SAE spliced in (full forward passes)."""
    batch_size: int = 8
    """Windows per forward pass."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of tokens counts as dense."""
    validation_fraction: float = 0.5
    """Share of each held-out set's documents (by a hash of doc_id) in the validation part,
    where choices are made (including which token types and tail concepts are evaluated);
    the rest is the test part that every reported number comes from."""
    bootstrap_samples: int = 1000
    """Resamples of test documents behind each 95% interval."""
    tail: TailConfig = field(default_factory=TailConfig)
    top_latents: int = 12
    """Latents shown (with contexts) for the main SSAE."""
    contexts_per_latent: int = 5

    def validate(self, where: str) -> None:
        require_at_least(where, 1, loss_tokens=self.loss_tokens, batch_size=self.batch_size)
        require_at_least(where, 1, top_latents=self.top_latents, contexts_per_latent=self.contexts_per_latent)
        require_at_least(where, 10, bootstrap_samples=self.bootstrap_samples)
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"{where}.validation_fraction: must be between 0 and 1, got {self.validation_fraction}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "evaluation") -> EvaluationConfig:
        return from_mapping(cls, data, where)

"""Configuration of the evaluations (torch-free: the workflow imports it to check config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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
    seeds: int = 3
    """Training seeds at the main k (the first of ``training.seeds``): the largest tilt
    against ERM is a primary comparison by default, which needs at least two."""

    def validate(self, where: str) -> None:
        if 0.0 not in self.tilts or any(t < 0 for t in self.tilts) or len(set(self.tilts)) != len(self.tilts):
            raise ConfigError(f"{where}.tilts: distinct values >= 0 including 0 (the ERM reference), got {self.tilts}")
        if self.seeds < 1:
            raise ConfigError(f"{where}.seeds: at least 1, got {self.seeds}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "term_study") -> TermStudyConfig:
        return from_mapping(cls, data, where)


PRIMARY_METRICS = {
    "evaluation": ("fvu", "delta_ce", "kl", "rare_capture"),
    "term": ("fvu", "delta_ce", "kl", "rare_capture"),
    "debias": ("shift_worst_group", "shift_retrain_worst_group"),
}
"""Metrics a primary comparison may name, per study. ``rare_capture``: the captured share
of the evaluated token types that are rare (general-pool frequency at most
``tail.max_general_frequency``)."""


@dataclass
class PrimaryComparison:
    """One comparison stated in advance (``evaluation.primary``).

    - ``evaluation``: ``sae`` a retrieval strategy (its SSAE by the first recipe of
      ``training.ssae`` at the main k), ``reference`` ``gsae`` or ``control``;
    - ``term``: ``sae`` ``largest_tilt``, ``reference`` ``erm`` (the TERM study at the main k);
    - ``debias``: ``sae`` and ``reference`` SAEs of the case study's main variant
      (``ssae_bios``, ``gsae``, ...).
    """

    study: Literal["evaluation", "term", "debias"]
    sae: str
    reference: str
    metric: str

    def validate(self, where: str) -> None:
        if self.metric not in PRIMARY_METRICS.get(self.study, ()):
            raise ConfigError(f"{where}.metric: {self.metric!r} is not one of {PRIMARY_METRICS.get(self.study)}")
        if self.study == "evaluation" and self.reference not in ("gsae", "control"):
            raise ConfigError(f"{where}.reference: gsae or control, got {self.reference!r}")
        if self.study == "term" and (self.sae, self.reference) != ("largest_tilt", "erm"):
            raise ConfigError(f"{where}: a term comparison is sae: largest_tilt, reference: erm")

    def label(self) -> str:
        return f"{self.sae} - {self.reference}: {self.metric} ({self.study})"


def default_primary() -> list[PrimaryComparison]:
    """The paper's claims: the dense SSAE against the GSAE and the matched-compute control on
    subdomain FVU, ΔCE and rare-type capture; TERM's largest tilt against ERM on rare-type
    capture; the biography SSAE against the GSAE on SHIFT worst-group accuracy."""
    evaluation = [
        PrimaryComparison("evaluation", "dense", reference, metric)
        for reference in ("gsae", "control")
        for metric in ("fvu", "delta_ce", "rare_capture")
    ]
    return [
        *evaluation,
        PrimaryComparison("term", "largest_tilt", "erm", "rare_capture"),
        PrimaryComparison("debias", "ssae_bios", "gsae", "shift_worst_group"),
    ]


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
    primary: list[PrimaryComparison] = field(default_factory=default_primary)
    """Comparisons stated in advance, with family-wise intervals; every other is exploratory."""
    top_latents: int = 12
    """Latents shown (with contexts) for the main SSAE."""
    contexts_per_latent: int = 5

    def validate(self, where: str) -> None:
        require_at_least(where, 1, loss_tokens=self.loss_tokens, batch_size=self.batch_size)
        require_at_least(where, 1, top_latents=self.top_latents, contexts_per_latent=self.contexts_per_latent)
        require_at_least(where, 10, bootstrap_samples=self.bootstrap_samples)
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"{where}.validation_fraction: must be between 0 and 1, got {self.validation_fraction}")
        for i, comparison in enumerate(self.primary):
            comparison.validate(f"{where}.primary[{i}]")
        labels = [c.label() for c in self.primary]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}.primary: a comparison is listed twice")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "evaluation") -> EvaluationConfig:
        return from_mapping(cls, data, where)


def resolve_primary(
    primary: list[PrimaryComparison],
    *,
    strategies: list[str],
    ssae_run_of: dict[str, str],
    gsae_run: str,
    term_runs: tuple[str, str] | None,
    debias: bool,
    where: str = "evaluation.primary",
) -> list[dict[str, Any]]:
    """The primary comparisons this run makes, each as ``{label, study, run, reference_run,
    metric, set}`` with the run names the reports use: ``ssae_run_of`` maps a strategy to
    its SSAE (main recipe, main k), ``term_runs`` is ``(largest tilt, ERM)`` or None when
    the TERM study is off; debias entries need the case study on. A comparison the run does
    not make - its study is off, or a strategy it names (the control is ``random``'s SSAE)
    is not in ``retrieval.strategies`` - is left out of the family, with a warning naming
    the entry. A debias entry naming an SAE the case study does not train stays in the family
    (its summary says "not computed"), so ``m`` then overcounts, which only widens."""
    import logging

    family = []
    for i, c in enumerate(primary):
        entry = {"label": c.label(), "study": c.study, "metric": c.metric, "set": "subdomain"}
        if c.study == "evaluation":
            needed = [c.sae] + (["random"] if c.reference == "control" else [])
            missing = [s for s in needed if s not in strategies]
            if missing:
                logging.getLogger("ssae.primary").warning(
                    "%s[%d] (%s): strategy %r is not in retrieval.strategies; left out of the family",
                    where, i, c.label(), missing[0],
                )  # fmt: skip
                continue
            reference = gsae_run if c.reference == "gsae" else ssae_run_of["random"]
            family.append({**entry, "run": ssae_run_of[c.sae], "reference_run": reference})
        elif c.study == "term" and term_runs is not None:
            family.append({**entry, "run": term_runs[0], "reference_run": term_runs[1]})
        elif c.study == "debias" and debias:
            family.append({**entry, "run": c.sae, "reference_run": c.reference, "set": "main variant"})
        else:
            off = "term_study.enabled" if c.study == "term" else "debias.enabled"
            logging.getLogger("ssae.primary").warning(
                "%s[%d] (%s): %s is off; left out of the family", where, i, c.label(), off
            )
    return family

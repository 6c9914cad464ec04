"""Configuration of the debiasing case study (torch-free: the workflow imports it to check config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssae_steps.config import ConfigError, from_mapping, require_at_least
from ssae_steps.debias.bios import BiosConfig


@dataclass
class DebiasConfig:
    data: BiosConfig = field(default_factory=BiosConfig)
    n_latents: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100])
    """Numbers of gender latents ablated (the reported one is chosen on validation)."""
    random_repeats: int = 3
    """Random-latent baseline: draws per N."""
    probe_l2: float = 0.01
    """L2 penalty of the logistic-regression probes (on standardised inputs)."""
    batch_size: int = 16
    """Documents per forward pass."""
    ssae_tilt: float = 0.0
    """Tilted ERM temperature of the biography SSAE (finetuned from the GSAE), set here
    rather than taken from training.ssae.tilts, so that a tilt sweep leaves it alone."""
    swap_control: bool = True
    """Also finetune the GSAE, by the biography SSAE's recipe, on non-biography pool text
    with the same gender swaps (each document and its swapped copy) and report it beside the
    others; only where the biographies have counterfactual copies."""
    sparse_probing_k: list[int] = field(default_factory=lambda: [1, 2, 5, 20])
    """k of the k-sparse probes."""
    bootstrap_samples: int = 1000
    """Document resamples of each interval."""

    def validate(self, where: str) -> None:
        require_at_least(where, 1, random_repeats=self.random_repeats, batch_size=self.batch_size)
        require_at_least(where, 100, bootstrap_samples=self.bootstrap_samples)
        if self.ssae_tilt < 0:
            raise ConfigError(f"{where}.ssae_tilt: must be >= 0, got {self.ssae_tilt}")
        require_at_least(where, 1, **{f"n_latents[{i}]": n for i, n in enumerate(self.n_latents)})
        require_at_least(where, 1, **{f"sparse_probing_k[{i}]": k for i, k in enumerate(self.sparse_probing_k)})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "debias") -> DebiasConfig:
        return from_mapping(cls, data, where)

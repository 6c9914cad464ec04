"""Configuration of SAEs and their training plan (torch-free: the workflow imports it to check config and name runs)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ssae_steps.config import (
    ConfigError,
    from_mapping,
    require_at_least,
)

Architecture = Literal["topk", "batchtopk", "matryoshka", "jumprelu", "relu"]


BATCH_TOPK = ("batchtopk", "matryoshka")


@dataclass
class SAEConfig:
    """Shape and sparsity mechanism of one SAE."""

    architecture: Architecture = "topk"
    """topk: exactly k active latents; batchtopk: k active latents per token on average over
    a training batch, one learned threshold at inference; matryoshka: batchtopk whose nested
    prefixes each reconstruct; jumprelu: learned thresholds; relu: L1 penalty."""
    d_in: int = 640
    """Width of the hooked activations (the model's d_model)."""
    d_sae: int = 8192
    """Number of latents."""
    k: int = 32
    """TopK: active latents per token; BatchTopK/Matryoshka: their mean over a training batch."""
    l1_coefficient: float = 5.0
    """ReLU: weight of the decoder-norm-weighted L1 penalty."""
    l0_coefficient: float = 1.0
    """JumpReLU: weight of the (straight-through) L0 penalty."""
    jumprelu_bandwidth: float = 0.001
    """JumpReLU: width of the rectangle kernel of the straight-through estimator."""
    jumprelu_init_threshold: float = 0.001
    """JumpReLU: initial threshold of every latent."""
    batchtopk_threshold_beta: float = 0.9
    """BatchTopK/Matryoshka: decay of the running estimate of the inference threshold (the
    smallest activation BatchTopK kept in a batch); the first batch sets it."""
    matryoshka_prefixes: list[int] = field(default_factory=list)
    """Matryoshka: increasing latent counts, the last equal to d_sae; each prefix
    ``[:m]`` (+ b_dec) is trained to reconstruct on its own. Empty: d_sae/16, d_sae/4, d_sae."""

    def validate(self, where: str) -> None:
        require_at_least(where, 1, d_in=self.d_in, d_sae=self.d_sae, k=self.k)
        if self.k > self.d_sae:
            raise ConfigError(f"{where}.k: {self.k} exceeds d_sae={self.d_sae}")
        beta = self.batchtopk_threshold_beta
        if not 0 <= beta < 1:
            raise ConfigError(f"{where}.batchtopk_threshold_beta: must be in [0, 1), got {beta}")
        prefixes = self.matryoshka_prefixes
        if prefixes and self.architecture != "matryoshka":
            raise ConfigError(
                f"{where}.matryoshka_prefixes: only used by architecture 'matryoshka' (this is {self.architecture!r})"
            )
        if prefixes and (prefixes[0] < 1 or any(b <= a for a, b in zip(prefixes, prefixes[1:], strict=False))):
            raise ConfigError(f"{where}.matryoshka_prefixes: must be positive and strictly increasing, got {prefixes}")
        if prefixes and prefixes[-1] != self.d_sae:
            raise ConfigError(
                f"{where}.matryoshka_prefixes: the last prefix must be d_sae={self.d_sae} (all latents), got {prefixes}"
            )

    def prefixes(self) -> list[int]:
        """Latent counts whose prefixes are trained to reconstruct: ``matryoshka_prefixes``
        (default d_sae/16, d_sae/4, d_sae) for Matryoshka, ``[d_sae]`` otherwise."""
        if self.architecture != "matryoshka":
            return [self.d_sae]
        if self.matryoshka_prefixes:
            return list(self.matryoshka_prefixes)
        return sorted({m for m in (self.d_sae // 16, self.d_sae // 4, self.d_sae) if m >= 1})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "sae") -> SAEConfig:
        return from_mapping(cls, data, where)


TiltScale = Literal["batch_mean", "none"]


@dataclass
class TrainConfig:
    """One SAE training run."""

    sae: SAEConfig = field(default_factory=SAEConfig)
    """Architecture and width (``d_in`` is taken from the activations)."""
    init: Literal["scratch", "finetune"] = "scratch"
    """scratch: random init; finetune: start from the SAE given as ``init_from``."""
    tilt: float = 0.0
    """Tilted ERM temperature t; 0 is plain ERM. Applies to the reconstruction term only
    (not to the sparsity or AuxK terms), for every architecture."""
    tilt_scale: TiltScale = "batch_mean"
    """batch_mean: tilt each token's loss relative to the batch's (detached) mean loss, so
    that t means the same reweighting whatever the loss scale (a token at r times the mean
    gets weight proportional to exp(t r)); none: tilt the raw losses, as Li et al. write
    TERM (then t's effect depends on the units of the loss)."""
    lr: float | None = None
    """Peak learning rate; None: sparsify's width rule ``base / sqrt(d_sae / 2**14)`` with
    the optimiser's base (:data:`BASE_LR`: Adam 1.4e-3, signum 5e-3), for Adam also times
    ``(batch_size / 1024) ** 0.25`` (:func:`effective_lr`)."""
    optimizer: Literal["adam", "signum"] = "adam"
    """adam: Adam (betas 0.9, 0.999); signum: sparsify's default, schedule-free SignSGD
    (momentum 0.95; the saved SAE holds the schedule-free average)."""
    # The schedule, projection and AuxK-scale defaults are the recipe bench/bench_train.py
    # measured best (with Adam's base lr they keep a high lr stable at batch 1024).
    warmup_fraction: float = 0.05
    """Share of the run's steps over which the learning rate rises linearly (from lr / W
    at the first of those W steps) to lr."""
    lr_decay: Literal["linear", "cosine", "none"] = "linear"
    """Decay of the learning rate to about 0 over the last ``decay_fraction`` of the steps."""
    decay_fraction: float = 0.2
    """Share of the run's steps (at its end) over which the learning rate decays."""
    project_decoder_grad: bool = True
    """Remove from each decoder row's gradient its component along the (unit-norm) row
    before the optimiser step (rows are renormalised after it either way)."""
    batch_size: int = 1024
    """Tokens per step (a few hundred thousand tokens need many small steps more than big ones)."""
    epochs: float = 1.0
    """Passes over the activation set (fractions allowed); ignored when ``tokens`` is set."""
    tokens: int | None = None
    """Training tokens (steps = tokens // batch_size), however large the set: the set is
    repeated or cut as needed."""
    aux_k: int = 256
    """TopK: latents in the AuxK reconstruction of the residual."""
    aux_coefficient: float = 1 / 32
    aux_dead_fraction_scale: bool = True
    """Weight the AuxK loss by ``min(n_dead / aux_k, 1)`` (sparsify's dead-fraction scale)."""
    dead_after_tokens: int = 100_000
    """A latent that has not fired for this many tokens counts as dead."""
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0

    def validate(self, where: str) -> None:
        require_at_least(where, 1, batch_size=self.batch_size, aux_k=self.aux_k, log_every=self.log_every)
        require_at_least(where, 1, checkpoint_every=self.checkpoint_every, dead_after_tokens=self.dead_after_tokens)
        if self.tilt < 0 or (self.lr is not None and self.lr <= 0) or self.epochs <= 0:
            raise ConfigError(f"{where}: tilt must be >= 0, lr and epochs > 0")
        for key in ("warmup_fraction", "decay_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{where}.{key}: must be between 0 and 1, got {getattr(self, key)}")
        require_at_least(where, self.batch_size, tokens=self.tokens)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "training") -> TrainConfig:
        return from_mapping(cls, data, where)


@dataclass
class GeneralSAEPlan:
    """The general SAE (GSAE): trained from scratch on the general pool, or imported."""

    pretrained: str | None = None
    """SAELens-format directory (cfg.json + sae_weights.safetensors) to use instead of
    training; its d_in must be the model's d_model and its architecture training.sae's."""
    epochs: float = 1.0
    snapshots: int = 4
    """Weight snapshots the first seed's GSAE keeps for TracIn reranking (0: none)."""


@dataclass
class SpecialisedSAEPlan:
    """Specialised SAEs (SSAEs): one per selection strategy x init x tilt."""

    inits: list[Literal["finetune", "scratch"]] = field(default_factory=lambda: ["finetune", "scratch"])
    tilts: list[float] = field(default_factory=lambda: [0.0, 2.0])
    tokens: int = 200_000
    """Training tokens of every SSAE, whatever its set's size: equal steps and tokens for
    every strategy (a smaller set, such as the seed documents alone, is repeated)."""

    def validate(self, where: str) -> None:
        if not self.inits or not self.tilts:
            raise ConfigError(f"{where}: inits and tilts need at least one value each")
        if any(t < 0 for t in self.tilts):
            raise ConfigError(f"{where}.tilts: must be >= 0, got {self.tilts}")


PER_RUN_KEYS = ("init", "tilt", "epochs", "tokens", "seed")


DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class TrainingPlan:
    """The workflow's ``training`` section: shared settings (a :class:`TrainConfig` without
    the per-run keys init/tilt/epochs/tokens/seed), the GSAE and SSAE plans, extra k values
    for the Pareto sweep, and the training seeds."""

    shared: TrainConfig
    gsae: GeneralSAEPlan
    ssae: SpecialisedSAEPlan
    k_sweep: list[int]
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    """The first trains every SAE; the others repeat the main comparison (the GSAE and each
    strategy's SSAE with the first init and tilt, at the main k), so its numbers carry an
    interval across seeds. An SSAE of seed s finetunes the GSAE of seed s."""
    seed_strategies: list[str] | None = None
    """Strategies whose SSAE gets every seed (None: all); the others train the first seed
    only. Lets a time-limited run repeat just the comparison it reports."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "training") -> TrainingPlan:
        data = dict(data or {})
        for key in PER_RUN_KEYS:
            if key in data:
                raise ConfigError(f"{where}.{key}: set per run (training.gsae / training.ssae / training.seeds)")
        gsae = from_mapping(GeneralSAEPlan, data.pop("gsae", None), f"{where}.gsae")
        ssae = from_mapping(SpecialisedSAEPlan, data.pop("ssae", None), f"{where}.ssae")
        k_sweep = data.pop("k_sweep", [])
        seeds = data.pop("seeds", list(DEFAULT_SEEDS))
        if (
            not isinstance(seeds, list)
            or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise ConfigError(f"{where}.seeds: expected a non-empty list of distinct integers >= 0, got {seeds!r}")
        if not isinstance(k_sweep, list) or any(isinstance(k, bool) or not isinstance(k, int) for k in k_sweep):
            raise ConfigError(f"{where}.k_sweep: expected a list of integers, got {k_sweep!r}")
        seed_strategies = data.pop("seed_strategies", None)
        if seed_strategies is not None and (
            not isinstance(seed_strategies, list) or not all(isinstance(x, str) for x in seed_strategies)
        ):
            raise ConfigError(f"{where}.seed_strategies: expected a list of strategy names, got {seed_strategies!r}")
        shared = TrainConfig.from_dict(data, where)
        for k in k_sweep:
            replace(shared.sae, k=k).validate(f"{where}.k_sweep")
        if gsae.pretrained is not None and k_sweep:
            raise ConfigError(f"{where}.k_sweep: needs a trained GSAE (training.gsae.pretrained is set)")
        return cls(shared, gsae, ssae, k_sweep, seeds, seed_strategies)

    def run_config(self, role: Literal["gsae", "ssae"], init: str, tilt: float, k: int, seed: int) -> TrainConfig:
        length = {"epochs": self.gsae.epochs, "tokens": None} if role == "gsae" else {"tokens": self.ssae.tokens}
        run = replace(self.shared, sae=replace(self.shared.sae, k=k), init=init, tilt=tilt, seed=seed, **length)
        run.validate("training")
        return run

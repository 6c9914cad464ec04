"""The run's declared comparisons (``evaluation.primary``) and how every comparison row is
judged: primary ones get a family-wise interval - Bonferroni, each at ``1 - 0.05/m`` for the
``m`` primary comparisons of the whole run (evaluation, TERM study and debias together), so
all of them cover at once with probability at least 95% - and only a primary comparison of
at least two paired training seeds can be a *finding*, when that interval excludes zero.
Every other row is exploratory: its unadjusted interval is shown and it is never called a
finding. (An imported GSAE is one fixed SAE: paired with every seed of an SSAE, the
comparison carries the SSAE's training variance, and there is none on the GSAE's side.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ssae_steps.bootstrap import Interval, family_level


@dataclass(frozen=True)
class Family:
    """The run's primary comparisons (``resolve_primary`` entries) and their number ``m``,
    which sets every primary interval's level: ``size`` stays the run's when
    :meth:`of_study` keeps only one study's entries."""

    primary: tuple[dict[str, Any], ...] = ()
    run_size: int | None = None

    @property
    def size(self) -> int:
        return len(self.primary) if self.run_size is None else self.run_size

    @property
    def level(self) -> float:
        return family_level(self.size)

    def of_study(self, study: str) -> Family:
        """The entries of one study (evaluation, term, debias), at the run's family size."""
        return Family(tuple(p for p in self.primary if p["study"] == study), self.size)

    def entry(self, run: str, reference_run: str, set_name: str, metric: str) -> dict[str, Any] | None:
        for p in self.primary:
            if (p["run"], p["reference_run"], p["set"], p["metric"]) == (run, reference_run, set_name, metric):
                return p
        return None


def judged(row: dict[str, Any], family: Family, seed_pairs: int, family_interval: Interval | None) -> dict[str, Any]:
    """``row`` with its role: ``primary`` (with ``family_ci_low/high`` at the family's level)
    or ``exploratory``; ``training_variance`` whether two or more seed pairs were compared
    (so both sides' training randomness is in the interval; an imported GSAE, one fixed SAE
    paired with every seed, has none to include); ``finding`` only for a primary row with
    training variance whose family-wise interval excludes zero."""
    training_variance = seed_pairs >= 2
    primary = family_interval is not None
    return {
        **row,
        "role": "primary" if primary else "exploratory",
        "family_size": family.size,
        "family_ci_low": family_interval.low if primary else math.nan,
        "family_ci_high": family_interval.high if primary else math.nan,
        "training_variance": training_variance,
        "finding": bool(primary and training_variance and family_interval.excludes_zero()),
    }


def declared_row(compared: Any, entry: dict[str, Any]) -> Any | None:
    """The row of a comparisons table (``run``, ``reference_run``, ``set``, ``metric``
    columns) that a declared ``entry`` names, or None when the run made no such comparison."""
    if compared.empty:
        return None
    rows = compared[
        (compared["run"] == entry["run"])
        & (compared["reference_run"] == entry["reference_run"])
        & (compared["set"] == entry["set"])
        & (compared["metric"] == entry["metric"])
    ]
    return None if rows.empty else rows.iloc[0]


def exploratory(compared: Any) -> Any:
    """The rows of a comparisons table that are not primary."""
    return compared[compared["role"] != "primary"] if "role" in compared else compared

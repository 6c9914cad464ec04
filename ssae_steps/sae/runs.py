"""Names of trained SAEs, built and parsed here only (torch-free: the workflow names its
runs with it, the reports read them back).

``gsae/k32`` is a general SAE; ``ssae/dense/finetune-t2-k32`` an SSAE (strategy, init,
tilt, k). A training seed other than the first adds ``-sS``. The ``random`` strategy's
SSAE is the ``control`` family.
"""

from __future__ import annotations

import math
import re
from typing import Any

CONTROL_STRATEGY = "random"
RUN_NAME = re.compile(
    r"^(?P<base>gsae/k(?P<gk>\d+)|ssae/(?P<strategy>\w+)/(?P<init>\w+)-t(?P<tilt>[0-9.e+-]+)-k(?P<k>\d+))"
    r"(?P<seed>-s\d+)?$"
)


def tilt_label(tilt: float) -> str:
    return f"{tilt:g}"


def seed_suffix(seed: int, first_seed: int) -> str:
    """Run-name suffix of a training seed: none for the first, ``-sS`` for the others."""
    return "" if seed == first_seed else f"-s{seed}"


def gsae_run(k: int, suffix: str = "") -> str:
    return f"gsae/k{k}{suffix}"


def ssae_recipe(init: str, tilt: float, k: int | None = None, suffix: str = "") -> str:
    """``finetune-t2-k32[-sS]``: an SSAE's directory under its strategy (without ``-kK`` when
    ``k`` is None, for a family of runs over k)."""
    return f"{init}-t{tilt_label(tilt)}" + ("" if k is None else f"-k{k}") + suffix


def ssae_run(strategy: str, recipe: str) -> str:
    """``ssae/STRATEGY/RECIPE``, ``recipe`` from :func:`ssae_recipe`."""
    return f"ssae/{strategy}/{recipe}"


def _match(name: str) -> re.Match[str]:
    m = RUN_NAME.match(name)
    if m is None:
        raise ValueError(f"unrecognised SAE run name {name!r}")
    return m


def parse_run(name: str) -> dict[str, Any]:
    """``gsae/k32`` or ``ssae/dense/finetune-t2-k32`` -> its parts. A training seed's suffix
    (``-s1``) is left out."""
    m = _match(name)
    if m["gk"]:
        return {"family": "GSAE", "strategy": "-", "init": "-", "tilt": math.nan, "k": int(m["gk"])}
    family = "control" if m["strategy"] == CONTROL_STRATEGY else "SSAE"
    return {"family": family, "strategy": m["strategy"], "init": m["init"], "tilt": float(m["tilt"]), "k": int(m["k"])}


def suffix_of(name: str) -> str:
    """The training-seed suffix of a run name (``-s1``), or ``""``."""
    return _match(name)["seed"] or ""


def seed_groups(names: list[str]) -> dict[str, list[str]]:
    """``run -> the runs of its seeds``, in order of first appearance; within a group the
    run without a seed suffix first, then by seed."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_match(name)["base"], []).append(name)
    return {base: sorted(runs, key=lambda n: int(suffix_of(n)[2:] or -1)) for base, runs in groups.items()}

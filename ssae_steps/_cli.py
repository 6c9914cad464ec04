"""Shared pieces of the stage command lines: compute-device arguments and figure output."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ssae_steps._config import resolve_device
from ssae_steps._io import atomic_path


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")


def device_from(args: argparse.Namespace) -> str:
    """Apply ``--threads`` and resolve ``--device`` (``auto`` -> cuda when visible)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def save_figure(fig: Any, path: str | Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

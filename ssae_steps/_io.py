"""Atomic file output: a killed job must never leave a file that looks complete."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success.

    Works for files and directories. The temporary name starts with a dot and carries
    the pid, so a crashed run leaves only hidden debris that the next run removes.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary path for {final}")
        if final.is_dir() and not final.is_symlink():
            _remove(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> None:
    """Delete ``.NAME.tmp-*`` leftovers of earlier killed runs next to ``path``."""
    final = Path(path)
    if final.parent.is_dir():
        for leftover in final.parent.glob(f".{final.name}.tmp-*"):
            _remove(leftover)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)

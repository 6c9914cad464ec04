"""Atomic file output: a killed job must never leave a file that looks complete."""

from __future__ import annotations

import hashlib
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


STEPS_DIR = Path(__file__).resolve().parent


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def tree_digest(path: str | os.PathLike[str]) -> str:
    """Content hash of a file, or of every file under a directory (relative names and
    bytes), so resumable work keys on what an input holds rather than where it lives."""
    root = Path(path)
    if root.is_file():
        return file_sha256(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: nothing to fingerprint")
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(root)).encode() + b"\0" + file_sha256(file).encode())
    return digest.hexdigest()


def code_fingerprint(*modules: str) -> str:
    """Fingerprint of the ``ssae_steps`` modules a stage runs (``_io`` and ``_config``
    always count). The workflow puts it into each rule's params, and the resumable stages
    into their run keys, so an edit never gets old work back."""
    digest = hashlib.sha1()
    for module in ("_io", "_config", *modules):
        digest.update((STEPS_DIR / f"{module}.py").read_bytes())
    return digest.hexdigest()[:12]

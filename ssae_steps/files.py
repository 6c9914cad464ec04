"""Atomic file output: a killed job must never leave a file that looks complete."""

from __future__ import annotations

import ast
import functools
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


PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


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


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """Source file of an ``ssae_steps`` module or package (its ``__init__.py``) in
    ``package_dir``, or None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(module: str, source: Path, package_dir: Path) -> set[str]:
    """``ssae_steps`` modules named by any import statement in ``source``, at any depth
    (imports inside functions count: they run when the stage runs)."""
    names = _imported_names(module, source.name == "__init__.py", source.read_bytes())
    return {name for name in names if module_file(name, package_dir) is not None}


@functools.lru_cache(maxsize=512)
def _imported_names(module: str, is_package: bool, source: bytes) -> frozenset[str]:
    # Keyed on the source bytes: the workflow fingerprints ~30 rules from the same modules.
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # `from package import module` imports the module too.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def import_closure(entry: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every ``ssae_steps`` module that running ``entry`` can import, transitively, with the
    packages that contain them (importing ``a.b.c`` runs ``a`` and ``a.b`` first)."""
    if module_file(entry, package_dir) is None:
        raise ValueError(f"{entry}: not a module of {PACKAGE}")
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imported_modules(module, module_file(module, package_dir), package_dir))  # type: ignore[arg-type]
    return sorted(seen)


def code_fingerprint(entry: str, package_dir: Path = PACKAGE_DIR) -> str:
    """Fingerprint of the code a stage runs: the source of ``entry`` and of every module it
    imports, read from the imports themselves rather than from a hand-kept list. The
    workflow puts it into each rule's params and the resumable stages into their run keys,
    so an edit to anything a stage imports never gets old work back."""
    digest = hashlib.sha1()
    for module in import_closure(entry, package_dir):
        source = module_file(module, package_dir)
        digest.update(module.encode() + b"\0" + source.read_bytes() + b"\0")  # type: ignore[union-attr]
    return digest.hexdigest()[:12]

"""Code fingerprints follow imports: every rule fingerprints the module it runs, and the
fingerprint changes exactly when a module that the entry imports (transitively) changes.

The expected import sets come from the standard library's ``modulefinder``, which reads
compiled bytecode (imports inside functions included) — independent of the AST walk in
``ssae_steps.files``."""

from __future__ import annotations

import re
import shutil
from modulefinder import ModuleFinder
from pathlib import Path

import pytest

from ssae_steps.files import code_fingerprint, import_closure

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "workflow" / "rules"
ENTRY = re.compile(r"-m (ssae_steps(?:\.\w+)+)")
CODE = re.compile(r'code=code_version\("([\w.]+)"\)')


def rule_blocks() -> dict[str, str]:
    blocks = {}
    for smk in sorted(RULES.glob("*.smk")):
        for part in re.split(r"(?m)^(?=(?:rule|checkpoint) \w+:)", smk.read_text())[1:]:
            blocks[re.match(r"(?:rule|checkpoint) (\w+):", part)[1]] = part
    return blocks


def named_commands() -> dict[str, str]:
    """Shell commands shared by several rules, ``NAME = ("... -m ssae_steps.X ...")``, by name."""
    commands = {}
    for smk in sorted(RULES.glob("*.smk")):
        for name, body in re.findall(r"(?ms)^([A-Z][A-Z_]+) = \((.*?)^\)", smk.read_text()):
            commands[name] = body
    return commands


def shell_entry(block: str, commands: dict[str, str]) -> str | None:
    """The module a rule's shell command runs with ``-m``, also through a named command."""
    shell = block.split("shell:", 1)[1] if "shell:" in block else ""
    shell = re.split(r"(?m)^\S", shell, maxsplit=1)[0]  # the rule ends at the next top-level line
    found = ENTRY.findall(shell)
    for name in re.findall(r"^\s+([A-Z][A-Z_]+)\s*$", shell, re.M):
        found += ENTRY.findall(commands[name])
    assert len(set(found)) <= 1, found
    return found[0] if found else None


def rule_entries() -> dict[str, str]:
    entries = {}
    commands = named_commands()
    for name, block in rule_blocks().items():
        codes = CODE.findall(block)
        entry = shell_entry(block, commands)
        assert (entry is None) == (not codes), f"rule {name}: runs {entry} but fingerprints {codes}"
        if entry is not None:
            assert codes == [entry], f"rule {name}: runs {entry} but fingerprints {codes}"
            entries[name] = entry
    return entries


def imported_by(entry: str) -> set[str]:
    finder = ModuleFinder(path=[str(REPO)])
    finder.import_hook(entry)
    return {name for name in finder.modules if name == "ssae_steps" or name.startswith("ssae_steps.")}


def test_every_rule_fingerprints_the_module_it_runs() -> None:
    entries = rule_entries()
    # The stages of the workflow, not a sample: every rule that runs a step is here.
    assert len(entries) >= 30
    assert {"train_ssae", "select_data", "rerank_tracin", "evaluate_sae", "debias", "lineage"} <= set(entries)
    for entry in set(entries.values()):
        assert import_closure(entry), entry


def test_the_closure_is_what_the_entry_imports() -> None:
    for entry in sorted(set(rule_entries().values())):
        assert set(import_closure(entry)) == imported_by(entry), entry


def test_an_edit_changes_the_fingerprint_of_exactly_the_stages_that_import_it(tmp_path: Path) -> None:
    """Edit each module in turn: every rule whose entry imports it (directly or not) gets a
    new fingerprint, so Snakemake reruns it and what depends on it; no other rule does."""
    package = tmp_path / "ssae_steps"
    shutil.copytree(REPO / "ssae_steps", package, ignore=shutil.ignore_patterns("__pycache__"))
    entries = sorted(set(rule_entries().values()))
    importers = {entry: imported_by(entry) for entry in entries}
    before = {entry: code_fingerprint(entry, package) for entry in entries}
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 40
    for path in modules:
        relative = path.relative_to(tmp_path).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        changed = {entry for entry in entries if code_fingerprint(entry, package) != before[entry]}
        path.write_bytes(original)
        assert changed == {entry for entry in entries if module in importers[entry]}, module


def test_fingerprint_names_a_missing_module() -> None:
    with pytest.raises(ValueError, match="ssae_steps.nowhere"):
        code_fingerprint("ssae_steps.nowhere")

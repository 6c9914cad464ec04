"""The documentation cannot drift from the code: the configuration reference is what the
generator makes of the current schema, the README stays short, every relative link and
anchor resolves, every module, test and benchmark the pages name exists, and the README's
stage table names the module each rule runs."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md")), REPO / "results" / "README.md"]


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_config_reference", DOCS / "generate_config_reference.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_configuration_reference_is_generated_from_the_current_schema(generator: ModuleType) -> None:
    expected = generator.render(yaml.safe_load(generator.SCHEMA.read_text(encoding="utf-8")))
    assert (DOCS / "configuration.md").read_text(encoding="utf-8") == expected, (
        "docs/configuration.md is out of date: run python docs/generate_config_reference.py"
    )
    check = subprocess.run(
        [sys.executable, str(DOCS / "generate_config_reference.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def _descriptions(node: object, path: tuple = ()) -> list[tuple]:
    """Paths of every description in the schema, nested ones included."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                found.append(path)
            else:
                found += _descriptions(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _descriptions(value, (*path, i))
    return found


def test_the_check_fails_when_the_schema_changes(generator: ModuleType, tmp_path: Path) -> None:
    schema = yaml.safe_load(generator.SCHEMA.read_text(encoding="utf-8"))
    current = tmp_path / "configuration.md"
    current.write_text((DOCS / "configuration.md").read_text(encoding="utf-8"), encoding="utf-8")
    assert generator.main(["--schema", str(generator.SCHEMA), "--out", str(current), "--check"]) == 0

    # Every description the schema holds, top-level to the corpus sources', is on the page.
    paths = _descriptions(schema)
    assert len(paths) > 100
    for path in (paths[0], paths[len(paths) // 2], paths[-1]):
        changed = yaml.safe_load(generator.SCHEMA.read_text(encoding="utf-8"))
        node = changed
        for key in path:
            node = node[key]
        node["description"] = "A description nobody wrote."
        changed_schema = tmp_path / "schema.yaml"
        changed_schema.write_text(yaml.safe_dump(changed, sort_keys=False), encoding="utf-8")
        assert generator.main(["--schema", str(changed_schema), "--out", str(current), "--check"]) == 1, path

    # A new nested key, too; regenerating brings the page up to date again.
    changed = yaml.safe_load(generator.SCHEMA.read_text(encoding="utf-8"))
    changed["properties"]["training"]["properties"]["gsae"]["properties"]["new_key"] = {
        "type": "integer",
        "default": 3,
        "description": "A key added to the schema.",
    }
    changed_schema.write_text(yaml.safe_dump(changed, sort_keys=False), encoding="utf-8")
    assert generator.main(["--schema", str(changed_schema), "--out", str(current), "--check"]) == 1
    assert generator.main(["--schema", str(changed_schema), "--out", str(current)]) == 0
    text = current.read_text(encoding="utf-8")
    assert "| `new_key` | integer | `3` | A key added to the schema. |" in text
    assert generator.main(["--schema", str(changed_schema), "--out", str(current), "--check"]) == 0


def test_readme_is_at_most_250_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page."""
    anchors: set[str] = set()
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))
    for heading in re.findall(r"(?m)^#{1,6} +(.+?) *#*$", text):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link} (no file {path})")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {path.name})")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in _links(README)}
    missing = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not missing, f"README.md does not point at docs/{missing}"


def _module_exists(dotted: str) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _dotted_name_exists(dotted: str) -> bool:
    """``ssae_steps.a.b`` is a module, or a module plus one name defined in it."""
    if _module_exists(dotted):
        return True
    module, _, name = dotted.rpartition(".")
    if not _module_exists(module):
        return False
    base = REPO.joinpath(*module.split("."))
    source = (base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py").read_text()
    return re.search(rf"(?m)^(?:def|class) {name}\b|^{name}\b.*=", source) is not None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_modules_tests_and_benchmarks_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = []
    for dotted in set(re.findall(r"\bssae_steps(?:\.[a-z_][a-z0-9_]*)+(?:\.[A-Z]\w*)?", text)):
        if not _dotted_name_exists(dotted):
            missing.append(dotted)
    for path in set(re.findall(r"\b(?:ssae_steps|tests|bench)/[\w/]*\w\.py\b", text)):
        if not (REPO / path).is_file():
            missing.append(path)
    # Paths inside a package, as the stage pages write them (`sae/kernels.py`).
    packages = "|".join(p.name for p in (REPO / "ssae_steps").iterdir() if (p / "__init__.py").is_file())
    for path in set(re.findall(rf"`((?:{packages})/\w+\.py)`", text)):
        if not (REPO / "ssae_steps" / path).is_file():
            missing.append(path)
    assert not missing, f"{page.relative_to(REPO)} names what does not exist: {sorted(missing)}"


def _rule_entries() -> dict[str, str]:
    """Each rule's entry module, from the fingerprint it passes (``code_version("...")``)."""
    entries = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule \w+:)", smk.read_text())[1:]:
            rule = re.match(r"rule (\w+):", block)[1]
            code = re.search(r'code_version\("ssae_steps\.([\w.]+)"\)', block)
            if code:
                entries[rule] = code[1]
    return entries


def test_the_readme_stage_table_names_the_module_each_rule_runs() -> None:
    text = README.read_text(encoding="utf-8")
    table = re.search(r"(?m)^\| stage \|.*\n\| -.*\n((?:\|.*\n)+)", text)
    assert table, "README.md has no stage table"
    rows = table[1].splitlines()
    entries = _rule_entries()
    assert len(entries) > 25
    wrong = []
    for rule, module in entries.items():
        row = [r for r in rows if f"`{rule}`" in r.split("|")[2]]
        if not row:
            wrong.append(f"{rule}: no row")
        elif f"`{module}`" not in row[0].split("|")[3]:
            wrong.append(f"{rule}: runs ssae_steps.{module}, not named in its row")
    for row in rows:
        for name in re.findall(r"`([a-z_][\w.]*)`", row.split("|")[3]):
            if not _module_exists(f"ssae_steps.{name}"):
                wrong.append(f"ssae_steps.{name}: no such module")
    assert not wrong, wrong

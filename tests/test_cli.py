"""The shared command-line runner: a stage's flags are its command function's signature."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from ssae_steps.cli import build_parser, run
from ssae_steps.config import ConfigError, from_mapping


@dataclass
class Settings:
    width: int = 4
    name: str = "x"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "settings") -> Settings:
        return from_mapping(cls, data, where)


def test_flags_follow_the_signature() -> None:
    seen: dict[str, Any] = {}

    def command(
        table: Path,
        mode: Literal["fast", "slow"],
        tables: list[Path],
        params: Settings,
        raw: dict[str, Any],
        part: Annotated[tuple[int, int] | None, "part I of N"] = None,
        seed: int = 0,
        scale: float = 1.5,
        out: str | Path | None = None,
        verbose: bool = False,
    ) -> None:
        seen.update(locals())

    argv = ["--table", "t.parquet", "--mode", "slow", "--tables", "a", "b", "--params", '{"width": 8}']
    argv += ["--raw", '{"k": [1]}', "--part", "1", "3", "--seed", "7", "--verbose"]
    assert run(command, argv) == 0
    assert seen["table"] == Path("t.parquet") and seen["tables"] == [Path("a"), Path("b")]
    assert seen["mode"] == "slow" and seen["raw"] == {"k": [1]}
    assert seen["params"] == Settings(width=8)
    assert seen["part"] == (1, 3) and seen["seed"] == 7 and seen["scale"] == 1.5
    assert seen["out"] is None and seen["verbose"] is True
    help_text = build_parser(command).format_help()
    assert "part I of N" in help_text and "{fast,slow}" in help_text


def test_missing_or_unknown_values_stop_the_parser() -> None:
    def command(table: Path, mode: Literal["fast", "slow"] = "fast") -> None:
        raise AssertionError("not reached")

    with pytest.raises(SystemExit):
        run(command, [])
    with pytest.raises(SystemExit):
        run(command, ["--table", "t", "--mode", "medium"])


def test_a_bad_config_key_is_named_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    def command(params: Settings) -> None:
        raise AssertionError("not reached")

    assert run(command, ["--params", '{"widht": 8}']) == 2
    err = capsys.readouterr().err
    assert "error: settings: unknown key(s) 'widht'" in err and "Traceback" not in err
    assert run(command, ["--params", "[1, 2]"]) == 2
    assert "--params: expected a JSON object" in capsys.readouterr().err


def test_config_errors_from_the_command_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    def command(table: Path) -> None:
        raise ConfigError(f"file {table}: has no rows")

    assert run(command, ["--table", "t.parquet"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: file t.parquet: has no rows")


def test_device_parameter_gets_device_and_threads() -> None:
    seen: dict[str, Any] = {}

    def command(device: str = "auto") -> None:
        seen["device"] = device

    assert run(command, ["--device", "cpu", "--threads", "1"]) == 0
    assert seen["device"] == "cpu"
    assert run(command, []) == 0
    assert seen["device"] in ("cpu", "cuda")  # auto resolves to what torch sees


def test_subcommands_dispatch() -> None:
    calls: list[tuple[str, Any]] = []

    def first(path: Path) -> None:
        """Do the first thing."""
        calls.append(("first", path))

    def second(count: int = 1) -> None:
        calls.append(("second", count))

    assert run({"first": first, "second": second}, ["second", "--count", "3"]) == 0
    assert run({"first": first, "second": second}, ["first", "--path", "p"]) == 0
    assert calls == [("second", 3), ("first", Path("p"))]
    with pytest.raises(SystemExit):
        run({"first": first, "second": second}, [])


def test_every_stage_module_uses_the_runner() -> None:
    """One pattern: no stage builds its own argparse parser."""
    root = Path(__file__).resolve().parents[1] / "ssae_steps"
    own = [p.relative_to(root) for p in root.rglob("*.py") if "argparse" in p.read_text() and p.name != "cli.py"]
    assert own == []
    result = subprocess.run(
        [sys.executable, "-m", "ssae_steps.data.corpus", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--out-table" in result.stdout

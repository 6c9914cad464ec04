"""One command-line pattern for every stage: the command line is the signature of a typed
function, and :func:`run` builds the parser from it.

A stage module ends with::

    def main(argv: list[str] | None = None) -> int:
        return run(build_corpus_command, argv)

where ``build_corpus_command(name: str, params: CorpusConfig, out_table: Path, ...)`` is a
plain function. Each parameter becomes ``--name-with-dashes``; one without a default is
required. Types map as follows:

- ``str``, ``int``, ``float``, ``Path`` (or ``str | Path``): one value of that type;
- ``bool``: a flag (``--x`` / ``--no-x``);
- ``Literal[...]``: one of its values;
- ``list[T]``: any number of values (``nargs="*"``);
- ``tuple[T, T] | None``: exactly two values (``--part I N``), or absent;
- a config dataclass (one with ``from_dict``): a JSON object, checked by ``from_dict``
  (errors name the config key);
- ``dict[str, Any]``: a JSON object; ``list[dict]``: a JSON array of objects;
- ``Annotated[T, "help"]``: ``T`` with that help text.

A parameter named ``device`` becomes ``--device {auto,cpu,cuda}`` plus ``--threads`` (torch
CPU threads, 0: torch's default), and the function receives the resolved device. Several
functions given as ``{name: function}`` become subcommands. Bad input (a
:class:`~ssae_steps.config.ConfigError`) ends in one ``error: ...`` line and exit status 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ssae_steps.config import ConfigError, resolve_device
from ssae_steps.files import atomic_path

Command = Callable[..., object]


def _unwrap(hint: Any) -> tuple[Any, str | None, bool]:
    """``hint`` without ``Annotated`` and ``| None``: (type, help, optional)."""
    help_text = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        help_text = next((e for e in extras if isinstance(e, str)), None)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
    return hint, help_text, optional


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag}: expected a JSON object, got {text!r}")
    return data


def _json_objects(text: str, flag: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ConfigError(f"{flag}: expected a JSON array of objects, got {text!r}")
    return data


def _is_object_list(hint: Any) -> bool:
    args = typing.get_args(hint)
    return (
        typing.get_origin(hint) is list and len(args) == 1 and (args[0] is dict or typing.get_origin(args[0]) is dict)
    )


def _scalar(hint: Any) -> Any:
    """The argparse ``type`` of a one-value hint: ``str | Path`` and ``PathLike`` read as str."""
    if hint in (str, int, float, Path):
        return hint
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if members and all(m in (str, Path) or typing.get_origin(m) is os.PathLike for m in members):
        return str
    return None


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and callable(getattr(hint, "from_dict", None))


def _add_argument(parser: argparse.ArgumentParser, param: inspect.Parameter, hint: Any) -> None:
    hint, help_text, optional = _unwrap(hint)
    flag = "--" + param.name.replace("_", "-")
    required = param.default is inspect.Parameter.empty
    kwargs: dict[str, Any] = {"dest": param.name, "help": help_text}
    if not required:
        kwargs["default"] = param.default
    origin = typing.get_origin(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        kwargs.setdefault("default", False)
        required = False
    elif _is_object_list(hint):
        kwargs["type"] = str
        kwargs["metavar"] = "JSON"
    elif origin is typing.Literal:
        kwargs["choices"] = list(typing.get_args(hint))
        kwargs["type"] = type(kwargs["choices"][0])
    elif origin is list:
        (item,) = typing.get_args(hint) or (str,)
        kwargs["nargs"] = "+" if required else "*"
        kwargs["type"] = _scalar(item) or item
    elif origin is tuple:
        items = typing.get_args(hint)
        kwargs["nargs"] = len(items)
        kwargs["type"] = items[0]
        kwargs["metavar"] = tuple(f"{param.name.upper()}{i}" for i in range(len(items)))
    elif _is_config(hint) or origin is dict:
        # Parsed in _call, inside the ConfigError handler, so a bad key is named.
        kwargs["type"] = str
        kwargs["metavar"] = "JSON"
    elif _scalar(hint) is not None:
        kwargs["type"] = _scalar(hint)
    else:
        raise TypeError(f"{param.name}: no command-line form for {hint!r}")
    parser.add_argument(flag, required=required and not optional, **kwargs)


def build_parser(command: Command, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The parser of ``command``'s signature (see the module docstring)."""
    doc = inspect.getdoc(command) or ""
    parser = parser or argparse.ArgumentParser(description=doc.split("\n\n")[0] or None)
    hints = typing.get_type_hints(command, include_extras=True)
    for param in inspect.signature(command).parameters.values():
        if param.name == "device":
            default = param.default if param.default is not param.empty else "auto"
            parser.add_argument("--device", default=default, choices=["auto", "cpu", "cuda"])
            parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
            continue
        _add_argument(parser, param, hints.get(param.name, str))
    return parser


def _call(command: Command, args: argparse.Namespace) -> None:
    hints = typing.get_type_hints(command)
    kwargs = {name: getattr(args, name) for name in inspect.signature(command).parameters}
    for name, value in kwargs.items():
        if name == "device" or value is None:
            continue
        hint = _unwrap(hints.get(name, str))[0]
        flag = "--" + name.replace("_", "-")
        if _is_config(hint):
            kwargs[name] = hint.from_dict(_json_object(value, flag))
        elif typing.get_origin(hint) is dict:
            kwargs[name] = _json_object(value, flag)
        elif _is_object_list(hint):
            kwargs[name] = _json_objects(value, flag)
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
    if "device" in kwargs:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        kwargs["device"] = resolve_device(args.device)
    command(**kwargs)


def run(commands: Command | Mapping[str, Command], argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) for ``commands`` and call it; log to stderr.
    Returns the exit status: 0, or 2 for bad input with one ``error: ...`` line."""
    if callable(commands):
        parser = build_parser(commands)
        chosen = commands
    else:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="_command", required=True)
        for name, command in commands.items():
            doc = (inspect.getdoc(command) or "").split("\n\n")[0]
            build_parser(command, sub.add_parser(name, help=doc, description=doc))
    args = parser.parse_args(argv)
    if not callable(commands):
        chosen = commands[args._command]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        _call(chosen, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def save_figure(fig: Any, path: str | Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

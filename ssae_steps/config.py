"""Build stage dataclasses from plain mappings with errors that name the bad key."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or an input file is unusable; the message names the key or file."""


def _check_type(value: Any, annotation: Any, where: str) -> None:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        errors = []
        for option in options:
            try:
                _check_type(value, option, where)
                return
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} is not of type {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            allowed = ", ".join(repr(a) for a in typing.get_args(annotation))
            raise ConfigError(f"{where}: {value!r} is not one of {allowed}")
        return
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        for i, item in enumerate(value):
            _check_type(item, item_type, f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Instantiate dataclass ``cls`` from ``data``; unknown keys and wrong types raise
    :class:`ConfigError` naming ``where.key``. Nested dataclass fields are built recursively."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; allowed: {', '.join(sorted(names))}"
        )
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{f.name}: required key is missing")
            continue
        value = data[f.name]
        hint = hints[f.name]
        key = f"{where}.{f.name}"
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = from_mapping(hint, value, key)  # type: ignore[arg-type]
            continue
        args = typing.get_args(hint)
        if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            kwargs[f.name] = [from_mapping(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
            continue
        _check_type(value, hint, key)
        kwargs[f.name] = list(value) if isinstance(value, tuple) else value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def require_at_least(where: str, minimum: int, **values: int | float | None) -> None:
    """Raise naming ``where.key`` for the first value below ``minimum`` (None passes)."""
    for key, value in values.items():
        if value is not None and value < minimum:
            raise ConfigError(f"{where}.{key}: must be >= {minimum}, got {value}")


def part_range(n: int, part: int, parts: int, key: str) -> tuple[int, int]:
    """``[start, stop)`` of part ``part`` of ``n`` items cut into ``parts`` contiguous runs of
    near-equal length (the scatter of a scatter/gather); a part that does not exist raises,
    naming ``key``."""
    if not 0 <= part < parts:
        raise ConfigError(f"{key}: part {part} of {parts} does not exist")
    return n * part // parts, n * (part + 1) // parts


def to_mapping(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


_SCALAR_TYPES = {"boolean": bool, "integer": int, "number": (int, float)}


def coerce_override_scalars(config: Any, schema: Mapping[str, Any]) -> Any:
    """Turn strings into the booleans and numbers the schema asks for, in place.

    Snakemake's ``--config key={...}`` parses nested values as strings (``"false"``,
    ``"16"``); without this a documented one-line override such as ``--config
    'term_study={"enabled": false}'`` fails validation. Only a string whose YAML reading has
    a type the schema allows (and where the schema does not allow strings) is replaced."""
    if isinstance(config, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in config.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                config[key] = coerce_override_scalars(value, sub)
    elif isinstance(config, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(config):
            config[i] = coerce_override_scalars(value, schema["items"])
    elif isinstance(config, str):
        allowed = schema.get("type", [])
        allowed = [allowed] if isinstance(allowed, str) else allowed
        wanted = [_SCALAR_TYPES[t] for t in allowed if t in _SCALAR_TYPES]
        if wanted and "string" not in allowed:
            import yaml

            try:
                parsed = yaml.safe_load(config)
            except yaml.YAMLError:
                return config
            # bool is an int in Python: only a schema that allows booleans takes one.
            if isinstance(parsed, bool) and "boolean" not in allowed:
                return config
            if isinstance(parsed, str):  # YAML reads "1e3" as a string; Python does not
                for kind, cast in (("integer", int), ("number", float)):
                    if kind in allowed:
                        try:
                            return cast(config)
                        except ValueError:
                            pass
            elif any(isinstance(parsed, t) for t in wanted):
                return parsed
    return config


def schema_errors(config: Mapping[str, Any], schema_path: str | Any) -> list[str]:
    """One line per JSON-Schema violation, each starting with the dotted config key."""
    from pathlib import Path

    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    lines = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        lines.append(f"{key or '<top level>'}: {error.message}")
    return lines


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no GPU (use 'auto' or 'cpu')")
    return name

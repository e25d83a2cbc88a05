"""Build frozen config dataclasses from plain mappings, strictly.

Defaults live only on the dataclass. A mapping (parsed YAML, `--set key=value` pairs, a
Ray Tune `param_space` sample) is checked once, at the edge: an unknown key is an error
that names the closest valid key; a value of the wrong type is an error naming the
field and the expected type. Strings from the command line are converted by the field's
declared type, never `eval`ed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

from scrutable.errors import UserError

T = TypeVar("T")


def suggest(name: Any, valid: list[str] | tuple[str, ...]) -> str:
    match = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'?" if match else f"valid keys: {', '.join(sorted(valid))}"


def from_mapping(cls: type[T], values: Mapping[str, Any], *, where: str = "config") -> T:
    """`cls(**values)` with unknown keys and wrong types reported as one-line UserErrors."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown key {key!r} in {where}: {suggest(key, tuple(fields))}")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid {where}: {exc}") from None


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check (and for strings from the command line, convert) `value` against a type hint."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, name)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{name}: got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise UserError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise UserError(f"{name} must be a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return origin(coerce(item, item_type, name) for item in value)
    if annotation is Any:
        return value
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return annotation(value)
        except ValueError:
            names = ", ".join(str(m.value) for m in annotation)
            raise UserError(f"{name} must be one of {names}, got {value!r}") from None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{name} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise UserError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UserError(f"{name} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{name} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{name} must be a string, got {value!r}")
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"{name} must be a mapping, got {value!r}")
        return from_mapping(annotation, value, where=name)
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{name} must be a mapping, got {value!r}")
        _, value_type = typing.get_args(annotation) or (str, Any)
        return {key: coerce(item, value_type, f"{name}.{key}") for key, item in value.items()}
    return value


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`["a.b=1", "c=x"]` -> `{"a.b": "1", "c": "x"}`; values stay strings until coerced."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out

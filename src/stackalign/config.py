"""One config style and one validation mechanism for the whole package.

A config is a stdlib ``@dataclass`` whose fields all have defaults and help text
(``field(default=..., metadata={"help": "..."})``, TRL's style): the library constructs it directly
(``ARGSConfig(k=10, w=0.5)``) and checks value ranges in ``__post_init__``. Recipes (YAML) reach the same
dataclasses through :func:`build`, which validates the data with a pydantic v2 model generated from the
dataclass — strict types (``k: 2.7``, ``k: true`` and ``k: "3"`` are errors, not 2, 1 and 3), no unknown keys
(with a "did you mean" suggestion), finite numbers only — and reports every problem with its path
(``methods[1].params.temprature: unknown key; did you mean 'temperature'?``).

Why pydantic and not ``HfArgumentParser``: recipes are nested (a list of methods, each with its own parameter
schema chosen by ``decoder``) and come from YAML, not argv; pydantic validates nested data with exact error
locations, and it is generated here from the same dataclasses, so a default or a help text is written once.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import reprlib
import types
from collections.abc import Iterable
from dataclasses import MISSING
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pydantic
from pydantic import ConfigDict, Field

__all__ = [
    "ConfigError",
    "FieldDoc",
    "RecipeError",
    "build",
    "clip",
    "clip_message",
    "describe",
    "did_you_mean",
    "field_doc",
    "format_errors",
    "help_of",
    "pydantic_model",
    "validate_with",
]

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A configuration problem; the message names the field's path. Each line of the message is cut to a few
    hundred characters: a message never repeats a huge bad value whole."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(clip_message(str(message)), *args)


class RecipeError(ConfigError):
    """A recipe problem; the message names the key."""


MAX_ECHO = 200  # characters of a bad value that an error message repeats
_ECHO = reprlib.Repr()
_ECHO.maxstring = _ECHO.maxother = MAX_ECHO
_ECHO.maxlist = _ECHO.maxtuple = _ECHO.maxdict = 8
_ECHO.maxlevel = 3


def clip(value: Any, limit: int = MAX_ECHO) -> str:
    """A bad value as an error message repeats it: its repr, at most about `limit` characters (a 50 MB string or
    a deep structure is shown by its start and its size, never whole)."""
    text = _ECHO.repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if isinstance(value, str) and len(value) > limit:
        text += f" ({len(value)} characters)"
    return text


def clip_message(message: str, line_limit: int = 600, max_lines: int = 40) -> str:
    """An error message as it is printed: each line at most `line_limit` characters, at most `max_lines` lines
    (the last resort against a message that repeats a huge value)."""
    lines = message.splitlines() or [""]
    out = [line if len(line) <= line_limit else line[:line_limit] + "... (cut)" for line in lines[:max_lines]]
    if len(lines) > max_lines:
        out.append(f"... ({len(lines) - max_lines} more lines)")
    return "\n".join(out)


def help_of(cls: type, name: str) -> str:
    """The help text of dataclass field ``name`` (``metadata["help"]``), or ""."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _schema_type(tp: Any) -> Any:
    """The type pydantic validates YAML data against: nested dataclasses become their generated models,
    ``tuple[X, ...]`` becomes ``list[X]`` (YAML has no tuples; the dataclass gets a tuple back)."""
    if dataclasses.is_dataclass(tp):
        return pydantic_model(tp)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_schema_type(a) for a in args)]  # noqa: UP007 - built from a tuple
    if origin is tuple:
        inner = args[0] if args else Any
        return list[_schema_type(inner)]
    if origin is list:
        return list[_schema_type(args[0])] if args else list
    if origin is dict:
        return dict[args[0], _schema_type(args[1])] if args else dict
    return tp


@functools.cache
def pydantic_model(cls: type) -> type[pydantic.BaseModel]:
    """A strict pydantic model with the fields, defaults and help texts of dataclass ``cls``."""
    hints = get_type_hints(cls)
    spec: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = default_of(f)
        kw = {"description": f.metadata.get("help", "")}
        if default is MISSING:
            spec[f.name] = (_schema_type(hints[f.name]), Field(**kw))
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            spec[f.name] = (_schema_type(hints[f.name]), Field(default_factory=f.default_factory, **kw))
        else:
            spec[f.name] = (_schema_type(hints[f.name]), Field(default=default, **kw))
    return pydantic.create_model(cls.__name__ + "Schema", __config__=STRICT, **spec)


def _join(path: str, loc: Iterable[Any]) -> str:
    out = path
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or "[" in str(part):  # pydantic's union/tag markers
            continue
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "recipe"


def did_you_mean(key: str, allowed: Iterable[str]) -> str | None:
    """The allowed key closest to a mistyped one (difflib, cutoff 0.6), or None."""
    close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
    return close[0] if close else None


def format_errors(exc: pydantic.ValidationError, path: str, model: type[pydantic.BaseModel]) -> str:
    """One line per problem: ``path: message`` with a suggestion for unknown keys."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        where = _join(path, loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            close = did_you_mean(str(loc[-1]), allowed)
            hint = f"; did you mean {close!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
            lines.append(f"{where}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{where}: required")
        else:
            lines.append(f"{where}: {err['msg'].lower()[:MAX_ECHO]}, got {clip(err.get('input'))}")
    return "\n".join(lines)


def _allowed_keys(model: type[pydantic.BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model that ``loc`` points into."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = _first_model(info.annotation)
    if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
        return list(current.model_fields)
    return []


def _first_model(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return tp
    for a in get_args(tp):
        m = _first_model(a)
        if m is not None:
            return m
    return None


def validate_with(model: type[pydantic.BaseModel], data: Any, path: str) -> dict:
    """Validate ``data`` against ``model``; returns the plain dict of validated values (defaults filled)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'recipe'}: expected a mapping, got {clip(data)}")
    try:
        values = model.model_validate(data).model_dump()
    except pydantic.ValidationError as e:
        raise ConfigError(format_errors(e, path, model)) from None
    problems = _value_problems(model, data, path)
    if problems:
        raise ConfigError("\n".join(problems))
    return values


INT_LIMIT = 2**63  # integers travel through torch and NumPy as int64


def _value_problems(model: type[pydantic.BaseModel], data: Any, path: str) -> list[str]:
    """Values the types let through that no field means: "" where the field's default is not "" (an empty
    string silently meaning "the default", or turning a metric off, is a mistake more often than a choice),
    and integers outside int64 (`seed: 2**70`). Nested configs too; one `path: problem` line each."""
    if not isinstance(data, dict):
        return []
    out = []
    for key, value in data.items():
        info = model.model_fields.get(str(key))
        if info is None:
            continue
        where = _join(path, [key])
        if value == "" and info.default != "":
            out.append(f"{where}: an empty string is not a value (leave the key out for its default)")
        elif isinstance(value, int) and not isinstance(value, bool) and not -INT_LIMIT <= value < INT_LIMIT:
            out.append(f"{where}: {clip(value, 40)} is out of range (integers are at most 2**63 - 1)")
        nested = _first_model(info.annotation)
        if nested is None:
            continue
        if isinstance(value, dict):
            out += _value_problems(nested, value, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                out += _value_problems(nested, item, f"{where}[{i}]")
    return out


def _instantiate(cls: type, values: dict, path: str):
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        kwargs[f.name] = _convert(hints[f.name], values[f.name], f"{path}.{f.name}" if path else f.name)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ range checks name the field
        msg = str(e)
        raise ConfigError(f"{path}.{msg}" if path else msg) from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return _instantiate(tp, value, path)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, path)
        return value
    if origin is tuple:
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is list and args:
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def build(cls: type, data: Any, path: str = ""):
    """Validate ``data`` (a mapping from YAML/JSON) against dataclass ``cls`` and construct it.

    Raises ConfigError naming the path of every bad field (unknown keys, wrong types, values out of range)."""
    values = validate_with(pydantic_model(cls), data, path)
    return _instantiate(cls, values, path)


# --------------------------------------------------------------------------------------------- docs


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    path: str
    type: str
    default: Any
    help: str


def type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def field_doc(cls: type, name: str, path: str | None = None) -> FieldDoc:
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == name:
            d = default_of(f)
            return FieldDoc(
                path or name, type_name(hints[name]), None if d is MISSING else d, help_of(cls, name)
            )
    raise KeyError(name)


def describe(cls: type, prefix: str = "") -> list[FieldDoc]:
    """Every field of ``cls`` (nested dataclasses flattened with dotted paths)."""
    hints = get_type_hints(cls)
    out: list[FieldDoc] = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += describe(tp, prefix=path + ".")
            continue
        out.append(field_doc(cls, f.name, path))
    return out

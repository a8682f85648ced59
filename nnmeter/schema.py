"""Typed config sections: build a dataclass from a YAML mapping, with errors that point at the key.

A section is a (frozen) dataclass whose fields carry their documentation and
constraints in ``field(metadata=...)``, made with :func:`setting`::

    @dataclass(frozen=True)
    class ProtocolSection:
        rounds: int = setting(30, "rounds of runs per model", minimum=1)

:func:`load_section` checks every key of the mapping (unknown keys, with a
did-you-mean), every value's type and constraint, and raises
:class:`~nnmeter.errors.ConfigError` naming file, key path, value and what is valid, in one line.

Types are strict: a ``str`` setting takes text only. YAML 1.1 reads an unquoted ``cpu_mask: 0x70`` as 112,
``070`` as 56, ``serial: 0123`` as 83 and ``on`` as true, so a number, a bool or a date there is refused with a
hint to quote the value, never turned back into text that is not what was written. A ``float`` setting takes
finite numbers only (``.nan`` passes every comparison, ``.inf`` overflows timeouts).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import types
import typing
from typing import Any, Mapping, TypeVar

from nnmeter.errors import ConfigError

T = TypeVar("T")


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    choices: typing.Iterable[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A dataclass field with documentation and constraints for :func:`load_section`.

    A list default is copied per instance (``default_factory``).
    """
    meta = {
        "doc": doc,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "maximum": maximum,
    }
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load_section(cls: type[T], data: Any, *, source: str, path: str) -> T:
    """``cls`` filled from the mapping ``data`` found at ``path`` in file ``source``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _WrongType(source, path, f"expected a mapping of keys, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls)) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key_text(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(source, _join(path, key), f"unknown key{hint}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(source, key_path, "is required", _doc_hint(f))
            continue
        values[name] = _convert(hints[name], data[name], f, source, key_path)
    return cls(**values)


def section_to_dict(section: Any) -> dict[str, Any]:
    """A plain mapping of a section (nested sections and tuples become dicts and lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(section)


class _WrongType(ConfigError):
    """The value is not of the setting's type at all (a union then tries its next type)."""


def _convert(hint: Any, value: Any, f: dataclasses.Field, source: str, key_path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, f, source, key_path)
            except _WrongType as e:
                if e.key_path != key_path:  # the value has this type's shape; something inside it is wrong
                    raise
                errors.append(e)
            # any other ConfigError (a bound, a choice) is about the value as this type: raised as it is
        if len(errors) == 1:
            raise errors[0]
        kinds = " or ".join(_kind(option) for option in options)
        raise _WrongType(source, key_path, f"{_show(value)} is not {kinds}", _doc_hint(f))
    if dataclasses.is_dataclass(hint):
        return load_section(typing.cast(type, hint), value, source=source, path=key_path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _WrongType(source, key_path, f"expected a list, got {_show(value)}", _doc_hint(f))
        item = args[0] if args else Any
        items = [_convert(item, v, f, source, f"{key_path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _WrongType(source, key_path, f"expected a mapping, got {_show(value)}", _doc_hint(f))
        return {
            key_text(k): _convert(args[1] if args else Any, v, f, source, _join(key_path, k)) for k, v in value.items()
        }
    if hint is Any:
        return value
    value = _scalar(hint, value, f, source, key_path)
    _check_constraints(value, f, source, key_path)
    return value


def _scalar(hint: Any, value: Any, f: dataclasses.Field, source: str, key_path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType(source, key_path, f"{_show(value)} is not true or false", _doc_hint(f))
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise _WrongType(source, key_path, f"{_show(value)} is not an integer", _doc_hint(f))
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _WrongType(source, key_path, f"{_show(value)} is not a number", _doc_hint(f))
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the floats
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(source, key_path, f"{_show(value)} is not a finite number", _doc_hint(f))
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        message, hint_text = _not_text(value, key_path)
        raise _WrongType(source, key_path, message, hint_text or _doc_hint(f))
    raise TypeError(f"unsupported setting type {hint!r} at {key_path}")


def _not_text(value: Any, key_path: str) -> tuple[str, str]:
    """The message and hint for a value that YAML did not read as text, for a setting that is text."""
    leaf = key_path.rsplit(".", 1)[-1]
    quote = "" if leaf.endswith("]") else f"{leaf}: "  # a list item is quoted as it is
    shown = _show(value)
    if isinstance(value, bool):
        words = ("true", "yes", "on") if value else ("false", "no", "off")
        return (
            f"{shown} is true or false, not text (YAML reads an unquoted yes, no, on or off as true or false)",
            f"write the value in quotes as you mean it: {quote}" + ", ".join(f'"{w}"' for w in words),
        )
    if isinstance(value, int):
        spellings = [f"0x{value:x}", f"0{value:o}"] if value >= 0 else []
        try:
            spellings.append(str(value))
        except ValueError:  # too many digits to write in decimal
            pass
        listed = ", ".join(f'"{s}"' for s in dict.fromkeys(spellings) if len(s) <= 40)
        return (
            f"{shown} is a number, not text (YAML reads an unquoted 0x70, 070 or 0123 as the number 112, 56 or 83)",
            f"write the value in quotes as you mean it: {quote}{listed}" if listed else "write the value in quotes",
        )
    if isinstance(value, float):
        return (
            f"{shown} is a number, not text (YAML reads an unquoted 1.5, 1.0e+3 or .inf as a number)",
            f'write the value in quotes as you mean it, e.g. {quote}"{shown}"',
        )
    if isinstance(value, (datetime.date, datetime.datetime)):
        return (
            f"{value.isoformat()} is a date, not text (YAML reads an unquoted 2024-01-31 as a date)",
            f'write the value in quotes: {quote}"{value.isoformat()}"',
        )
    if value is None:
        return "empty (null), not text", f'write {quote}"" for no value, or leave the key out for its default'
    return f"{shown} is not text", ""


def _check_constraints(value: Any, f: dataclasses.Field, source: str, key_path: str) -> None:
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        valid = ", ".join(str(c) for c in choices)
        raise ConfigError(source, key_path, f"{_show(value)} is not valid; valid: {valid}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return  # the bounds of an `int | str` setting are the number's
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and value < lo:
        raise ConfigError(source, key_path, f"{_show(value)} is below the minimum {lo}", _doc_hint(f))
    if hi is not None and value > hi:
        raise ConfigError(source, key_path, f"{_show(value)} is above the maximum {hi}", _doc_hint(f))


def _kind(hint: Any) -> str:
    """What a value of the type ``hint`` is, in words."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(hint, str(hint))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key_text(key)}" if path else key_text(key)


def key_text(key: Any) -> str:
    """A YAML key as it goes into a key path: as it is when it is short printable text, else its repr
    (so that an error message stays one line)."""
    if isinstance(key, str) and key and key.isprintable() and len(key) <= 60 and key.strip() == key:
        return key
    return _show(key)


def show_value(value: Any) -> str:
    """``repr(value)`` in one line of at most 60 characters, for error messages (any value YAML can make)."""
    try:
        text = repr(value)
    except ValueError:  # an integer over sys.get_int_max_str_digits() digits (a hex literal can be)
        return f"an integer of {value.bit_length():,} bits" if isinstance(value, int) else "a value"
    return text if len(text) <= 60 else text[:57] + "..."


_show = show_value


def _doc_hint(f: dataclasses.Field) -> str:
    return f.metadata.get("doc", "")

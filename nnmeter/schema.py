"""Typed config sections: build a dataclass from a YAML mapping, with errors that point at the key.

A section is a (frozen) dataclass whose fields carry their documentation and
constraints in ``field(metadata=...)``, made with :func:`setting`::

    @dataclass(frozen=True)
    class ProtocolSection:
        rounds: int = setting(30, "rounds of runs per model", minimum=1)

:func:`load_section` checks every key of the mapping (unknown keys, with a
did-you-mean), every value's type and constraint, and raises
:class:`~nnmeter.errors.ConfigError` naming file, key path, value and what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
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
        raise ConfigError(source, path, f"expected a mapping of keys, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
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
            except ConfigError as e:
                errors.append(e)
        raise errors[-1]
    if dataclasses.is_dataclass(hint):
        return load_section(hint, value, source=source, path=key_path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, key_path, f"expected a list, got {_show(value)}", _doc_hint(f))
        item = args[0] if args else Any
        items = [_convert(item, v, f, source, f"{key_path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(source, key_path, f"expected a mapping, got {_show(value)}", _doc_hint(f))
        return {str(k): _convert(args[1] if args else Any, v, f, source, _join(key_path, k)) for k, v in value.items()}
    if hint is Any:
        return value
    value = _scalar(hint, value, f, source, key_path)
    _check_constraints(value, f, source, key_path)
    return value


def _scalar(hint: Any, value: Any, f: dataclasses.Field, source: str, key_path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(source, key_path, f"{_show(value)} is not true or false", _doc_hint(f))
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, key_path, f"{_show(value)} is not an integer", _doc_hint(f))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(source, key_path, f"{_show(value)} is not a number", _doc_hint(f))
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads `cpu_mask: 70` or `serial: 0123` as numbers
        raise ConfigError(source, key_path, f"{_show(value)} is not a string", _doc_hint(f))
    raise TypeError(f"unsupported setting type {hint!r} at {key_path}")


def _check_constraints(value: Any, f: dataclasses.Field, source: str, key_path: str) -> None:
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        valid = ", ".join(str(c) for c in choices)
        raise ConfigError(source, key_path, f"{_show(value)} is not valid; valid: {valid}")
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and value < lo:
        raise ConfigError(source, key_path, f"{_show(value)} is below the minimum {lo}", _doc_hint(f))
    if hi is not None and value > hi:
        raise ConfigError(source, key_path, f"{_show(value)} is above the maximum {hi}", _doc_hint(f))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _doc_hint(f: dataclasses.Field) -> str:
    return f.metadata.get("doc", "")

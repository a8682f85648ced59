"""Reading YAML that people write or share (campaign.yaml, a predictor's manifest.yaml), strictly and boundedly.

PyYAML's ``safe_load`` builds no objects but still expands aliases (a 1 KB "billion laughs" file grows
tenfold per level), keeps the last of two equal keys silently, and reads YAML 1.1's ``0x70`` and ``070`` as
integers. :func:`load_yaml` refuses aliases, merge keys (``<<``) and duplicate keys, bounds the size and the
nesting, and raises :class:`~nnmeter.errors.ConfigError` naming the file, the line and what to do, in one line:
also for what PyYAML itself lets escape as ValueError, KeyError or AttributeError (``2001-13-01``, ``0x_``,
``!!bool maybe``, ``!!timestamp x``, a 5000-digit integer). :func:`read_yaml_file` reads a file with the same
bounds before it reads the whole of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from nnmeter.errors import ConfigError

#: The largest YAML text read (a campaign.yaml is a few KB, a manifest tens of KB).
MAX_YAML_BYTES = 1 << 20
#: The deepest nesting of mappings and lists read.
MAX_YAML_DEPTH = 32

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: What PyYAML's constructors raise, besides YAMLError, for scalars they cannot read.
_CONSTRUCTION_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, merge keys or duplicate keys, with a bound on nesting, and with a marked
    error for every scalar it cannot read."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not allowed: write the value out", event.start_mark
            )
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.MarkedYAMLError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTION_ERRORS as err:
            tag = str(node.tag).removeprefix("tag:yaml.org,2002:")
            what = f"{_show(node.value)} as {tag}" if isinstance(node, yaml.ScalarNode) else f"a {tag}"
            why = f" ({_show_error(err)})" if isinstance(err, ValueError) else ""
            raise yaml.MarkedYAMLError(
                None, None, f"cannot read {what}{why}: quote it to keep it text", node.start_mark
            ) from None

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if not isinstance(node, yaml.MappingNode):  # e.g. `!!map x`: the base class reports it
            return super().construct_mapping(node, deep=deep)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise yaml.MarkedYAMLError(
                    None, None, "merge keys (<<) are not allowed: write the keys out", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.MarkedYAMLError(
                    None, None, f"duplicate key {_show(key)}: it is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str | bytes, source: str) -> Any:
    """The values of the YAML ``text`` from the file ``source``; a ConfigError names the file, the line and the
    problem for malformed YAML, aliases, merge keys, duplicate keys, values YAML cannot read, text over
    :data:`MAX_YAML_BYTES` or nesting over :data:`MAX_YAML_DEPTH`. Its message is one line."""
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_YAML_BYTES:
        raise ConfigError(source, "", f"{size:,} bytes: larger than the {MAX_YAML_BYTES:,} a YAML file may have")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(source, "", f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or err.context or "not YAML"
        raise ConfigError(source, "", _one_line(f"malformed YAML at {where}{problem}")) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        character = f"#x{err.character:04x}" if isinstance(err.character, int) else repr(err.character)
        raise ConfigError(
            source, "", f"malformed YAML at line {line}, column {column}: character {character}: {err.reason}"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(source, "", _one_line(f"malformed YAML: {err}")) from None
    except RecursionError:
        raise ConfigError(source, "", f"nested deeper than {MAX_YAML_DEPTH} levels") from None
    except _CONSTRUCTION_ERRORS as err:  # raised outside a scalar (a collection being filled in)
        raise ConfigError(source, "", f"malformed YAML: {_show_error(err)}") from None


def read_yaml_file(path: str | os.PathLike[str], source: str | None = None) -> Any:
    """:func:`load_yaml` of the file at ``path`` (named ``source`` in errors, default the path); a file over
    :data:`MAX_YAML_BYTES` is refused before it is read, and one that cannot be read is a ConfigError too."""
    path = Path(path)
    source = str(path) if source is None else source
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_YAML_BYTES:
                raise ConfigError(
                    source, "", f"{size:,} bytes: larger than the {MAX_YAML_BYTES:,} a YAML file may have"
                )
            raw = file.read(MAX_YAML_BYTES + 1)  # a file that grows meanwhile is still bounded
    except OSError as err:
        raise ConfigError(source, "", f"cannot be read: {err.strerror or _show_error(err)}") from None
    return load_yaml(raw, source)


def _show(value: Any) -> str:
    """``repr(value)``, at most 60 characters (and an integer too long for ``repr``)."""
    try:
        text = repr(value)
    except ValueError:  # an integer over sys.get_int_max_str_digits() digits (a hex literal can be)
        return f"an integer of {value.bit_length():,} bits" if isinstance(value, int) else "a value"
    return text if len(text) <= 60 else text[:57] + "..."


def _show_error(err: BaseException) -> str:
    text = _one_line(str(err)) or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())

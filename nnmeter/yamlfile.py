"""Reading YAML that people write or share (campaign.yaml, a predictor's manifest.yaml), strictly and boundedly.

PyYAML's ``safe_load`` builds no objects but still expands aliases (a 1 KB "billion laughs" file grows
tenfold per level), keeps the last of two equal keys silently, and reads YAML 1.1's ``0x70`` and ``070`` as
integers. :func:`load_yaml` refuses aliases and duplicate keys, bounds the size and the nesting, and
raises :class:`~nnmeter.errors.ConfigError` naming the file, the line and what to do.
"""

from __future__ import annotations

from typing import Any

import yaml

from nnmeter.errors import ConfigError

#: The largest YAML text read (a campaign.yaml is a few KB, a manifest tens of KB).
MAX_YAML_BYTES = 1 << 20
#: The deepest nesting of mappings and lists read.
MAX_YAML_DEPTH = 32


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases or duplicate keys, and with a bound on nesting."""

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

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.MarkedYAMLError(None, None, f"duplicate key {key!r}: it is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str | bytes, source: str) -> Any:
    """The values of the YAML ``text`` from the file ``source``; a ConfigError names the file, the line and the
    problem for malformed YAML, aliases, duplicate keys, text over :data:`MAX_YAML_BYTES` or nesting over
    :data:`MAX_YAML_DEPTH`."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
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
        raise ConfigError(source, "", f"malformed YAML at {where}{err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(source, "", f"malformed YAML: {err}") from None
    except RecursionError:
        raise ConfigError(source, "", f"nested deeper than {MAX_YAML_DEPTH} levels") from None

"""campaign.yaml: render it for a backend (``nnmeter-build init``) and load it, checking every key.

The file has one section per part of the toolchain, each a dataclass of
:mod:`nnmeter.schema` settings: ``backend`` (``name`` plus the backend's own
``Config``), ``protocol`` (:class:`~nnmeter.backends.protocol.MeasurementProtocol`),
``rules``, ``kernels`` and ``evaluation``. The template's comments are taken from
the settings' docs, so the file and the code never disagree. It is read with
:func:`nnmeter.yamlfile.read_yaml_file` (no aliases, no duplicate keys, bounded), and the
template writes every free-text value in quotes (``cpu_mask: ""``), so that a value typed
into it stays text (unquoted, YAML reads ``0x70`` as 112).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from nnmeter.backends import backend_class, backend_names, load_backend_config
from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.errors import ConfigError
from nnmeter.evaluation import EvaluationSettings
from nnmeter.lab.settings import ClusterSettings, Unit, load_cluster, load_units
from nnmeter.rule_tester import RuleTestSettings
from nnmeter.schema import key_text, load_section, show_value
from nnmeter.training import KernelTrainingSettings
from nnmeter.yamlfile import load_yaml, read_yaml_file

#: The sections of campaign.yaml other than ``backend``, and the settings class of each.
SECTIONS: dict[str, type] = {
    "protocol": MeasurementProtocol,
    "rules": RuleTestSettings,
    "kernels": KernelTrainingSettings,
    "evaluation": EvaluationSettings,
}
TOP_LEVEL_KEYS = ("backend", *SECTIONS, "devices", "cluster")

#: Keys (section, key) and values (section, key, value) that earlier versions took and this one refuses, with
#: what to do instead: experiments that did not become features.
REMOVED_KEYS = {
    ("protocol", "cache"): "removed (an experiment); invocations are timed warm, back to back: delete the key",
}
REMOVED_VALUES = {
    ("kernels", "regressor", "et-cost-ratio"): "removed (an experiment); use gbt-cost-ratio, the default",
}


@dataclass(frozen=True)
class Campaign:
    """A loaded and validated campaign.yaml."""

    source: Path
    backend_name: str
    backend_options: Any  # the backend's validated Config
    protocol: MeasurementProtocol
    rules: RuleTestSettings
    kernels: KernelTrainingSettings
    evaluation: EvaluationSettings
    #: a lab's units (``devices:``; none: the campaign's one device, ``backend:``) and how they are driven
    units: tuple[Unit, ...] = ()
    cluster: ClusterSettings = ClusterSettings()

    @property
    def is_lab(self) -> bool:
        return bool(self.units)


def load_campaign(path: Path | str) -> Campaign:
    """Read and validate ``path``; :class:`ConfigError` names the file, key path, bad value and what is valid."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        what = "is a folder, not a campaign file" if path.is_dir() else "no such file"
        raise ConfigError(source, "", what, "create a workspace with: nnmeter-build init DIR --backend NAME")
    data = read_yaml_file(path, source)
    if not isinstance(data, dict):
        raise ConfigError(
            source, "", f"expected a mapping of sections ({', '.join(TOP_LEVEL_KEYS)}), got {type(data).__name__}"
        )
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(source, key_text(unknown[0]), f"unknown section; known: {', '.join(TOP_LEVEL_KEYS)}")

    backend = data.get("backend")
    if not isinstance(backend, dict):
        raise ConfigError(
            source,
            "backend",
            "expected a mapping with at least `name: <backend>`",
            f"known backends: {', '.join(backend_names())}",
        )
    name = backend.get("name")
    if name not in backend_names():
        problem = "is required" if name is None else f"{show_value(name)} is not a backend"
        raise ConfigError(
            source,
            "backend.name",
            f"{problem}; known: {', '.join(backend_names())}",
            "list them with: nnmeter-build backends",
        )
    options = load_backend_config(
        name, {k: v for k, v in backend.items() if k != "name"}, source=source, key_path="backend"
    )
    _refuse_removed(data, source)
    sections: dict[str, Any] = {
        key: load_section(cls, data.get(key), source=source, path=key) for key, cls in SECTIONS.items()
    }
    units = load_units(name, backend, data.get("devices"), source)
    cluster = load_cluster(data.get("cluster"), units, source)
    return Campaign(source=path, backend_name=name, backend_options=options, **sections, units=units, cluster=cluster)


def _refuse_removed(data: dict, source: str) -> None:
    """A ConfigError naming the first key or value that an earlier version took and this one removed."""
    for (section, key), why in REMOVED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(source, f"{section}.{key}", why)
    for (section, key, value), why in REMOVED_VALUES.items():
        if isinstance(data.get(section), dict) and data[section].get(key) == value:
            raise ConfigError(source, f"{section}.{key}", f"{value!r} was {why}")


def parse_yaml(text: str | bytes, source: str) -> Any:
    """YAML ``text`` as Python values (:func:`nnmeter.yamlfile.load_yaml`): malformed YAML, aliases, duplicate
    keys, too much text or nesting are a ConfigError with the line and column."""
    return load_yaml(text, source)


def render_campaign(backend_name: str) -> str:
    """The text of a campaign.yaml for ``backend_name`` with every key at its default, each commented."""
    names = backend_names()
    if backend_name not in names:
        raise ConfigError(
            "--backend",
            "",
            f"{backend_name!r} is not a backend; known: {', '.join(names)}",
            "list them with: nnmeter-build backends",
        )
    cls = backend_class(backend_name)
    name_entry = _Entry(
        key="name",
        comment=_wrap(f"the device + runtime that converts and measures; one of {', '.join(names)}"),
        text=_yaml_item("name", backend_name),
    )
    backend_entries = [name_entry, *_entries(cls.Config)]
    template = resources.files("nnmeter.configs").joinpath("campaign.yaml.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(
        backend_name=backend_name,
        backend_description=getattr(cls, "description", ""),
        backend=backend_entries,
        sections={key: _entries(section) for key, section in SECTIONS.items()},
        cluster=_entries(ClusterSettings),
    )


@dataclass(frozen=True)
class _Entry:
    """One key of the rendered template: its comment lines, and its YAML text or its children."""

    key: str
    comment: list[str]
    text: str = ""  # "key: value" (may span lines)
    children: list[_Entry] | None = None
    required: bool = False


def _entries(cls: type, defaults: Any = None) -> list[_Entry]:
    entries = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = f.metadata
        comment = _wrap(_describe(meta))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and defaults is None:
            entries.append(_Entry(key=f.name, comment=comment, required=True))
            continue
        if defaults is not None:
            value = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:  # not required: it has a default factory
            factory: Any = f.default_factory
            value = factory()
        if dataclasses.is_dataclass(value):
            entries.append(_Entry(key=f.name, comment=comment, children=_entries(type(value), value)))
        else:
            quoted = isinstance(value, str) and meta.get("choices") is None  # free text: typed in, it stays text
            entries.append(_Entry(key=f.name, comment=comment, text=_yaml_item(f.name, value, quoted=quoted)))
    return entries


def _describe(meta: Any) -> str:
    """A setting's doc plus what values it takes."""
    doc = meta.get("doc", "")
    valid = []
    if meta.get("choices") is not None:
        valid.append("valid: " + ", ".join(str(c) for c in meta["choices"]))
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and hi is not None:
        valid.append(f"range: {lo} .. {hi}")
    elif lo is not None:
        valid.append(f">= {lo}")
    elif hi is not None:
        valid.append(f"<= {hi}")
    return doc + (f" ({'; '.join(valid)})" if valid else "")


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, width=96, break_on_hyphens=False) or [""]


def _yaml_item(key: str, value: Any, *, quoted: bool = False) -> str:
    """``key: value`` as YAML; lists in flow style, wrapped (the template indents continuation lines); a
    ``quoted`` text in double quotes (``cpu_mask: ""``), so that what a user types between them stays text."""
    if isinstance(value, (list, tuple, dict)):
        value = list(value) if isinstance(value, tuple) else value
        return yaml.safe_dump({key: value}, default_flow_style=None, sort_keys=False, width=96).rstrip("\n")
    style = '"' if quoted else None
    return f"{key}: " + yaml.safe_dump(value, default_style=style, width=math.inf).removesuffix("\n...\n").strip()

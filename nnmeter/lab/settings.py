"""The ``devices:`` and ``cluster:`` sections of campaign.yaml: a lab's units and how they are driven."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from nnmeter.backends import load_backend_config
from nnmeter.errors import ConfigError
from nnmeter.schema import load_section, section_to_dict, setting, show_value

#: ``cluster.engine`` values: local = a thread per unit in this process (no Ray), ray = a Ray actor per unit.
ENGINES = ("local", "ray")
#: The prefix of the custom Ray resource a host advertises for each unit attached to it.
RESOURCE_PREFIX = "nnmeter-unit:"


@dataclass(frozen=True)
class ClusterSettings:
    """How the units of ``devices:`` are driven; the ``cluster`` section of campaign.yaml."""

    engine: str = setting(
        "local",
        "local: every unit driven from this process (no Ray); ray: one Ray actor per unit, on the host the "
        "unit is attached to (pip install nnmeter[lab]; hosts join with `nnmeter-build lab join`)",
        choices=ENGINES,
    )
    address: str = setting(
        "auto", "the Ray cluster to join (engine: ray): auto = the one `ray start` runs on this host, or HEAD:6379"
    )
    device: str = setting(
        "",
        "the device id the units' measurements share in the store (empty: lab:<backend name>); units of one "
        "type measure one campaign",
    )
    check_every: int = setting(
        20,
        "batches a unit measures between two anchor checks (every unit measures the drift anchors when it "
        "connects and then every this many batches; 0: only when it connects)",
        minimum=0,
        maximum=1_000_000,
    )
    tolerance: float = setting(
        0.10,
        "a unit whose anchors run more than this much slower or faster than the lab's (the median unit) is "
        "an outlier: reported, then scaled or excluded (outliers)",
        minimum=0,
        maximum=10,
    )
    outliers: str = setting(
        "scale",
        "what becomes of an outlier unit: scale = its batches are scaled by its speed ratio; exclude = it "
        "measures nothing more in this run",
        choices=("scale", "exclude"),
    )
    retry_lost_s: float = setting(
        30.0, "a lost unit (disconnected, its host gone) is tried again after this long", minimum=0, maximum=86_400
    )
    lost_timeout_s: float = setting(
        600.0,
        "the run fails when batches are waiting and no unit has been usable for this long",
        minimum=0,
        maximum=604_800,
    )
    start_timeout_s: float = setting(
        120.0,
        "how long the first batches wait for every unit to connect and check its anchors before the units "
        "that did go ahead",
        minimum=0,
        maximum=86_400,
    )


@dataclass(frozen=True)
class Unit:
    """One unit of the lab: its id (the phone's serial, the board's host), the backend options it is measured
    with (``backend:`` with its ``devices:`` entry over it), and where it is in campaign.yaml."""

    id: str
    options: Mapping[str, Any]
    key_path: str

    @property
    def resource(self) -> str:
        return unit_resource(self.id)


def unit_resource(unit: str) -> str:
    """The custom Ray resource a host advertises for ``unit`` (one actor of it at a time)."""
    return RESOURCE_PREFIX + unit


def load_units(backend_name: str, backend: Mapping[str, Any], devices: Any, source: str) -> tuple[Unit, ...]:
    """The units of ``devices:`` (a list of mappings of backend keys), each checked as a whole backend section.

    A unit is named by its ``unit:`` key, else its ``serial`` (adb) or ``host`` (ssh, with ``:port`` when not 22).
    A unit listed twice, an entry that is not a mapping or that names no unit is a ConfigError at its path."""
    if devices is None:
        return ()
    if not isinstance(devices, list) or not devices:
        raise ConfigError(
            source, "devices", f"expected a list of units (mappings of backend keys), got {show_value(devices)}"
        )
    units: list[Unit] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(devices):
        path = f"devices[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(source, path, f"expected a mapping of backend keys, got {show_value(entry)}")
        if "name" in entry:
            raise ConfigError(source, f"{path}.name", "the units of a lab share `backend.name`; remove the key")
        overrides = {k: v for k, v in entry.items() if k != "unit"}
        merged = {**{k: v for k, v in backend.items() if k != "name"}, **overrides}
        config = load_backend_config(backend_name, merged, source=source, key_path=path)
        options = section_to_dict(config)
        unit = entry.get("unit", _unit_id(options))
        if not isinstance(unit, str) or not unit.strip():
            raise ConfigError(
                source,
                f"{path}.unit",
                "names no unit" if unit in ("", None) else f"{show_value(unit)} is not a unit name",
                "give the entry a `serial:` (adb), a `host:` (ssh) or a `unit:` name",
            )
        if unit in seen:
            raise ConfigError(source, path, f"unit {unit!r} is listed twice (also {seen[unit]})", "list each unit once")
        seen[unit] = path
        units.append(Unit(unit, options, path))
    return tuple(units)


def load_cluster(data: Any, units: tuple[Unit, ...], source: str) -> ClusterSettings:
    """The ``cluster:`` section; it needs ``devices:``."""
    cluster = load_section(ClusterSettings, data, source=source, path="cluster")
    if data is not None and not units:
        raise ConfigError(source, "cluster", "a cluster drives the units of `devices:`, and there are none")
    return cluster


def _unit_id(options: Mapping[str, Any]) -> str:
    if options.get("serial"):
        return str(options["serial"])
    if options.get("host"):
        port = options.get("port", 22)
        return str(options["host"]) + ("" if port == 22 else f":{port}")
    return ""

"""The backend registry: backends are found through the ``nnmeter.backends`` entry-point group.

A third party adds a backend with a package of its own that declares::

    [project.entry-points."nnmeter.backends"]
    my-board = "my_package.backend:MyBoardBackend"

An entry point whose module is missing or fails to import is listed as unusable,
with the reason; it never breaks the other backends.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Mapping

from nnmeter.backends.base import Backend
from nnmeter.errors import BackendError, ConfigError, NnmeterError
from nnmeter.schema import load_section

GROUP = "nnmeter.backends"


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend, for ``nnmeter-build backends``."""

    name: str
    description: str
    usable: bool
    reason: str  # why it is not usable here ("" when it is)
    target: str  # the entry point, "module:Class"


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)  # the first distribution declaring a name wins
    return dict(sorted(found.items(), key=lambda item: (not item[0].endswith("-local"), item[0])))


def backend_names() -> list[str]:
    """Registered backend names, the local ones first."""
    return list(_entry_points())


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name``; NnmeterError if unknown, BackendError if it cannot be imported."""
    points = _entry_points()
    if name not in points:
        raise NnmeterError(
            f"{name!r} is not a backend; known: {', '.join(points)}",
            hint="`nnmeter-build backends` lists them and whether each is usable here",
        )
    try:
        cls = points[name].load()
    except Exception as err:  # a broken third-party package must not take the registry down
        raise BackendError(
            f"backend {name!r} cannot be loaded from {points[name].value}: {type(err).__name__}: {err}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {name!r}: {points[name].value} is not a nnmeter Backend class")
    return cls


def list_backends() -> list[BackendEntry]:
    """Every registered backend and whether it is usable on this host."""
    entries = []
    for name, point in _entry_points().items():
        try:
            cls = backend_class(name)
            reason = cls.unavailable_reason() or ""
            description = cls.description
        except BackendError as err:
            reason, description = err.message, ""
        entries.append(BackendEntry(name, description, not reason, reason, point.value))
    return entries


def load_backend_config(
    name: str, options: Mapping[str, Any] | None, *, source: str = "campaign.yaml", key_path: str = "backend"
) -> Any:
    """The backend's ``Config`` from its YAML section (``name`` is skipped); ConfigError at the bad key."""
    try:
        cls = backend_class(name)
    except NnmeterError as err:  # unknown, or its package cannot be imported: the key to change is the name
        raise ConfigError(source, f"{key_path}.name", err.message, err.hint) from err
    options = {k: v for k, v in (options or {}).items() if k != "name"}
    config = load_section(cls.Config, options, source=source, path=key_path)
    for key, message in cls.config_problems(config):
        raise ConfigError(source, f"{key_path}.{key}", message)
    return config


def create_backend(
    name: str, options: Mapping[str, Any] | None = None, *, source: str = "campaign.yaml", key_path: str = "backend"
) -> Backend:
    """The backend ``name`` built from its YAML section, not yet connected."""
    config = load_backend_config(name, options, source=source, key_path=key_path)
    return backend_class(name)(config)


def connect_backend(
    name: str, options: Mapping[str, Any] | None = None, *, source: str = "campaign.yaml", key_path: str = "backend"
) -> Backend:
    """The backend ``name``, built and connected; its DeviceInfo is in ``backend.device_info``."""
    backend = create_backend(name, options, source=source, key_path=key_path)
    try:
        backend.device_info = backend.connect()
    except BaseException:
        backend.close()
        raise
    return backend

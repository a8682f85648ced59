"""Backends: convert models to a device's format and measure them there.

``connect_backend("tflite-local", {"threads": 1})`` gives a connected
:class:`~nnmeter.backends.base.Backend`; backends are registered through the
``nnmeter.backends`` entry-point group (see :mod:`nnmeter.backends.registry`).
"""

from nnmeter.backends.registry import (
    BackendEntry,
    backend_class,
    backend_names,
    connect_backend,
    create_backend,
    list_backends,
    load_backend_config,
)

__all__ = [
    "BackendEntry",
    "backend_class",
    "backend_names",
    "connect_backend",
    "create_backend",
    "list_backends",
    "load_backend_config",
]

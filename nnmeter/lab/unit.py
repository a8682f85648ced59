"""One unit's worker: connects the unit's backend on the host the unit is attached to and measures batches there.

The same class runs in a thread of the driver (``engine: local``) and as a Ray actor on the unit's host
(``engine: ray``). With Ray the model files come as bytes through the object store (no shared file system):
the worker writes them to a private folder of its host, measures them, and removes them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from nnmeter.backends import connect_backend
from nnmeter.backends.base import Backend, MeasureResult, MeasureStatus, ModelFile
from nnmeter.backends.protocol import MeasurementProtocol

#: Environment variable naming the host in a lab (``lab join --host NAME`` sets it for the Ray node's
#: workers); default: the machine's host name.
HOST_ENV = "NNMETER_LAB_HOST"


class UnitLost(Exception):
    """The unit cannot measure now: it disconnected, its host or its worker went away. Its batch goes back to the
    queue and the unit is tried again later."""


@dataclass(frozen=True)
class UnitInfo:
    """What a unit's connection found: the unit, its host, the backend's device id and description, and the
    runtime versions every measurement of the unit records."""

    unit: str
    host: str
    device: str
    description: str
    runtime_versions: Mapping[str, str] = field(default_factory=dict)


#: A model shipped to a unit's host: its id, format, and its files (relative name -> bytes); the first file is
#: the one measured (an OpenVINO .xml comes with its .bin).
ShippedModel = tuple[str, str, Sequence[tuple[str, Any]]]


def host_name() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


class UnitWorker:
    """Connects and measures one unit; every failure to reach it is :class:`UnitLost`."""

    def __init__(self, backend_name: str, options: Mapping[str, Any], unit: str, source: str = "campaign.yaml") -> None:
        self.backend_name = backend_name
        self.options = dict(options)
        self.unit = unit
        self.source = source
        self.backend: Backend | None = None
        self.info: UnitInfo | None = None
        self._folder: Path | None = None

    def connect(self) -> UnitInfo:
        """(Re)connect the unit's backend; UnitLost when the device cannot be reached."""
        self.close()
        try:
            backend = connect_backend(self.backend_name, self.options, source=self.source, key_path=self.unit)
        except Exception as err:  # BackendError, or a transport's own error
            raise UnitLost(f"unit {self.unit}: {err}") from None
        info = backend.device_info
        assert info is not None
        self.backend = backend
        self.info = UnitInfo(self.unit, host_name(), info.device, info.description, dict(info.runtime_versions))
        return self.info

    def measure(self, files: Sequence[ModelFile], protocol: MeasurementProtocol) -> list[MeasureResult]:
        """Measure a batch on the unit; UnitLost when the unit went away during it (a result ``unreachable``)."""
        if self.backend is None:
            raise UnitLost(f"unit {self.unit}: not connected")
        try:
            results = self.backend.measure(list(files), protocol)
        except Exception as err:
            raise UnitLost(f"unit {self.unit}: {err}") from None
        gone = [r for r in results if r.status == MeasureStatus.UNREACHABLE]
        if gone:
            raise UnitLost(f"unit {self.unit}: {gone[0].error}")
        return results

    def measure_shipped(self, models: Sequence[ShippedModel], protocol: MeasurementProtocol) -> list[MeasureResult]:
        """:meth:`measure` of models that came as bytes: written to this host's folder for the unit first."""
        folder = self._batch_folder()
        files = []
        try:
            for model_id, fmt, parts in models:
                target = folder / model_id
                target.mkdir(parents=True, exist_ok=True)
                for name, data in parts:
                    (target / name).write_bytes(_bytes(data))
                files.append(ModelFile(model_id, target / parts[0][0], fmt))
            return self.measure(files, protocol)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def ping(self) -> str:
        return host_name()

    def close(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            try:
                backend.close()
            except Exception:
                pass  # a device that is gone: its connection is dropped all the same

    def _batch_folder(self) -> Path:
        if self._folder is None:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.unit)
            self._folder = Path(tempfile.mkdtemp(prefix=f"nnmeter-lab-{safe}-"))
        folder = self._folder / "batch"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder


def _bytes(data: Any) -> bytes:
    """Model bytes, or a Ray object reference to them (a list of references nested in a call is not resolved)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    import ray  # only on a Ray worker, where the reference came from

    return bytes(ray.get(data))


def model_parts(file: ModelFile) -> list[tuple[str, Path]]:
    """The files a model is made of, the measured one first: the file and its siblings of the same stem (an
    OpenVINO .xml and its .bin). The backends a lab drives measure files, not folders."""
    path = Path(file.path)
    siblings = sorted(p for p in path.parent.glob(path.stem + ".*") if p != path and p.is_file())
    return [(path.name, path), *((p.name, p) for p in siblings)]

"""``cluster.engine: ray``: one Ray actor per unit, pinned to the unit's host by the unit's custom resource.

Ray is imported here only, when a campaign says ``engine: ray``. Conversion stays on the driver's conversion
pool; a batch's model files travel to the unit's host as bytes in Ray's object store (each file put once), and
the actor writes them to a private folder there. An actor that dies with its host is created again; it waits
for the unit's resource, so it starts when the host rejoins.

The driver watches the head: while it waits for the units, it checks every ``HEAD_CHECK_S`` that the head's GCS
still accepts connections, and one that has not for ``HEAD_LOST_S`` ends the run with one error (before Ray's own
client would end the process, 60 s after it lost the GCS). Every batch stored before stays; a rerun resumes.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Hashable, Sequence

from nnmeter.backends.base import ModelFile
from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.errors import ConfigError, WorkFailed
from nnmeter.lab.engine import Engine
from nnmeter.lab.settings import Unit, unit_resource
from nnmeter.lab.unit import UnitLost, UnitWorker, model_parts

#: seconds the driver waits for the cluster's address to answer before saying so
CONNECT_TIMEOUT_S = 10.0
#: seconds between two checks that the head's GCS answers, and how long it may not before the head is lost
HEAD_CHECK_S = 1.0
HEAD_LOST_S = 5.0


def import_ray(source: str) -> Any:
    """The ray module; a ConfigError naming ``cluster.engine`` when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            source,
            "cluster.engine",
            "ray needs the Ray package, which is not installed",
            "pip install 'nnmeter[lab]' (or pip install 'ray>=2'), or set cluster.engine: local",
        ) from None
    return ray


def check_address(address: str, source: str) -> None:
    """A ConfigError naming ``cluster.address`` when nothing answers at HOST:PORT."""
    if address in ("", "auto", "local"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(source, "cluster.address", f"{address!r} is not HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(
            source,
            "cluster.address",
            f"no Ray head answers at {address} ({err.strerror or err})",
            "start the head there (nnmeter-build lab join --head), or fix the address",
        ) from None


#: This process's hold on its Ray connection: the address it joined and how many labs use it (several campaigns
#: run at once share one connection: ``nnmeter-build run ws1 ws2``).
_JOINED: dict[str, Any] = {"address": None, "users": 0}
_JOIN_LOCK = threading.Lock()


def join_cluster(ray: Any, address: str, source: str) -> None:
    """Join the cluster at ``address`` once per process (every lab of the process uses it); a ConfigError naming
    ``cluster.address`` when it cannot be joined, or when this process joined another cluster."""
    with _JOIN_LOCK:
        if _JOINED["users"]:
            if _JOINED["address"] != address:
                raise ConfigError(
                    source,
                    "cluster.address",
                    f"{address!r}: the campaigns run together share one Ray cluster, and another joined "
                    f"{_JOINED['address']!r}",
                    "give them the same cluster.address",
                )
            _JOINED["users"] += 1
            return
        check_address(address, source)
        if not ray.is_initialized():
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConfigError(
                    source,
                    "cluster.address",
                    f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}",
                    "start it with `nnmeter-build lab join --head` (or `ray start --head`) on the head host",
                ) from None
        _JOINED.update(address=address, users=1)


def leave_cluster(ray: Any) -> None:
    """Release this process's hold on the cluster; the last lab to leave disconnects."""
    with _JOIN_LOCK:
        _JOINED["users"] = max(0, _JOINED["users"] - 1)
        if not _JOINED["users"]:
            _JOINED["address"] = None
            if ray.is_initialized():
                ray.shutdown()


class RayEngine(Engine):
    """Units as Ray actors on the cluster at ``address`` (joined by this process, the driver)."""

    name = "ray"

    def __init__(self, backend_name: str, address: str, source: str = "campaign.yaml") -> None:
        self.ray = import_ray(source)
        self.backend_name = backend_name
        self.source = source
        self.address = address
        self._joined = False
        join_cluster(self.ray, address, source)
        self._joined = True
        self.gcs_address = str(self._cluster(lambda: self.ray.get_runtime_context().gcs_address))
        self._next_head_check = 0.0
        self._actor = self.ray.remote(num_cpus=0, max_restarts=0)(UnitWorker)
        self._actors: list[Any] = []
        self._blobs: dict[str, list[tuple[str, Any]]] = {}

    def check_units(self, units: Sequence[Unit]) -> None:
        """A ConfigError naming the first unit no node of the cluster advertises."""
        advertised = self._cluster(lambda: self.ray.cluster_resources())
        for unit in units:
            if advertised.get(unit.resource, 0) < 1:
                raise ConfigError(
                    self.source,
                    unit.key_path,
                    f"unit {unit.id!r}: no node of the Ray cluster at {self.address} advertises it "
                    f"(resource {unit.resource!r})",
                    f"on the host it is attached to, run: nnmeter-build lab join HEAD:PORT --unit {unit.id}",
                )

    def start(self, unit: Unit) -> Any:
        actor = self._actor.options(resources={unit_resource(unit.id): 1}).remote(
            self.backend_name, dict(unit.options), unit.id, self.source
        )
        self._actors.append(actor)
        return actor

    def restart(self, unit: Unit, worker: Any) -> Any:
        try:
            self.ray.kill(worker, no_restart=True)
        except Exception:
            pass  # dead already
        return self.start(unit)

    def connect(self, worker: Any) -> Hashable:
        return worker.connect.remote()

    def measure(self, worker: Any, files: Sequence[ModelFile], protocol: MeasurementProtocol) -> Hashable:
        shipped = [(f.id, f.format, self._shipped(f)) for f in files]
        return worker.measure_shipped.remote(shipped, protocol)

    def wait(self, pending: Sequence[Hashable], timeout: float) -> list[Hashable]:
        self.check_head()
        wait_s = min(timeout, HEAD_CHECK_S)
        ready, _ = self._cluster(lambda: self.ray.wait(list(pending), num_returns=1, timeout=wait_s))
        return ready

    def result(self, pending: Hashable) -> Any:
        exceptions = self.ray.exceptions
        try:
            return self._cluster(lambda: self.ray.get(pending))
        except exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause()
            if isinstance(cause, UnitLost):
                raise UnitLost(str(cause).splitlines()[-1]) from None
            raise UnitLost(f"its worker failed: {str(err).splitlines()[0]}") from None
        except (exceptions.RayActorError, exceptions.ActorUnavailableError, exceptions.ObjectLostError) as err:
            self.check_head(now=True)  # a unit's actor gone with the head is the head's loss, not the unit's
            raise UnitLost(f"its worker or host went away ({type(err).__name__})") from None

    def close(self) -> None:
        for actor in self._actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self._actors, self._blobs = [], {}
        if self._joined:
            self._joined = False
            leave_cluster(self.ray)

    def _shipped(self, file: ModelFile) -> list[tuple[str, Any]]:
        """The model's files as (name, object reference) pairs, each put in the object store once."""
        if file.id not in self._blobs:
            self._blobs[file.id] = [(name, self.ray.put(path.read_bytes())) for name, path in model_parts(file)]
        return self._blobs[file.id]

    def check_head(self, now: bool = False) -> None:
        """Every ``HEAD_CHECK_S`` (or ``now``): WorkFailed when the head's GCS does not accept a connection for
        ``HEAD_LOST_S``."""
        started = time.monotonic()
        if not now and started < self._next_head_check:
            return
        self._next_head_check = started + HEAD_CHECK_S
        why = _unanswered(self.gcs_address)
        while why is not None:
            if time.monotonic() - started >= HEAD_LOST_S:
                raise self._head_lost(f"its GCS at {self.gcs_address} has not answered for {HEAD_LOST_S:g} s ({why})")
            time.sleep(0.5)
            why = _unanswered(self.gcs_address)

    def _head_lost(self, why: str) -> WorkFailed:
        return WorkFailed(
            f"lost the Ray head of the lab at {self.address}: {why}",
            "every batch measured so far is in the store: restart the head (nnmeter-build lab join --head), let "
            "the hosts join again (nnmeter-build lab join HEAD:PORT), and run the same command: it resumes, "
            "measuring only what is missing",
        )

    def _cluster(self, call: Any) -> Any:
        """``call()``; losing the cluster itself (its head) is one clear error."""
        try:
            return call()
        except (self.ray.exceptions.RaySystemError, ConnectionError) as err:
            raise self._head_lost(str(err).splitlines()[0]) from None


def _unanswered(address: str) -> str | None:
    """Why nothing accepts a connection at HOST:PORT (None when something does)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=HEAD_CHECK_S).close()
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__
    return None

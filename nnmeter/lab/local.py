"""``cluster.engine: local``: every unit driven from this process, one thread each (no Ray)."""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Hashable, Sequence

from nnmeter.backends.base import ModelFile
from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.lab.engine import Engine
from nnmeter.lab.settings import Unit
from nnmeter.lab.unit import UnitLost, UnitWorker


class LocalEngine(Engine):
    """A :class:`UnitWorker` per unit, each with a thread of its own (a unit measures one batch at a time)."""

    name = "local"

    def __init__(self, backend_name: str, source: str = "campaign.yaml") -> None:
        self.backend_name = backend_name
        self.source = source
        self._workers: list[tuple[UnitWorker, cf.ThreadPoolExecutor]] = []

    def start(self, unit: Unit) -> tuple[UnitWorker, cf.ThreadPoolExecutor]:
        worker = UnitWorker(self.backend_name, unit.options, unit.id, self.source)
        pair = (worker, cf.ThreadPoolExecutor(1, thread_name_prefix=f"nnmeter-unit-{unit.id}"))
        self._workers.append(pair)
        return pair

    def connect(self, worker: Any) -> Hashable:
        unit, thread = worker
        return thread.submit(unit.connect)

    def measure(self, worker: Any, files: Sequence[ModelFile], protocol: MeasurementProtocol) -> Hashable:
        unit, thread = worker
        return thread.submit(unit.measure, list(files), protocol)

    def wait(self, pending: Sequence[Hashable], timeout: float) -> list[Hashable]:
        done, _ = cf.wait(pending, timeout=timeout, return_when=cf.FIRST_COMPLETED)  # type: ignore[arg-type]
        return list(done)

    def result(self, pending: Hashable) -> Any:
        try:
            return pending.result()  # type: ignore[attr-defined]
        except UnitLost:
            raise
        except Exception as err:  # a bug or a backend error outside measure(): the unit cannot go on
            raise UnitLost(f"{type(err).__name__}: {err}") from err

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for unit, thread in workers:
            thread.submit(unit.close)
            thread.shutdown(wait=True, cancel_futures=True)

"""The lab's scheduler: batches go to whichever unit is free; a unit lost mid-batch gives its batch back.

:class:`Lab` is engine-agnostic. An :class:`Engine` starts one worker per unit (a thread here, a Ray actor on
the unit's host) and runs its calls asynchronously; the scheduler only sees pending calls and their results:

* every unit measures the drift anchors when it connects and every ``cluster.check_every`` batches (its
  *check*); its speed ratio is the geometric mean over the anchors of its latency over the lab's (the median
  over the units' latest checks). Batches wait for every unit's first check (at most ``start_timeout_s``), so
  the lab's reference is known before anything is measured. A unit whose ratio is outside ``tolerance`` is
  reported and scaled (its batches carry the ratio as their ``unit_scale``) or excluded, as ``outliers`` says;
* a batch goes to the first free unit; a unit that is lost during it (:class:`~nnmeter.lab.unit.UnitLost`: a
  result ``unreachable``, its worker or host gone) gives the batch back to the front of the queue, and is tried
  again after ``retry_lost_s``; a unit that returns measures again;
* with batches waiting and no usable unit for ``lost_timeout_s``, the run fails (what was measured is stored).

A batch is yielded (to be stored) only whole and from one unit, so nothing is stored twice.
"""

from __future__ import annotations

import enum
import math
import statistics
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

from nnmeter.backends.base import MeasureResult, ModelFile
from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.errors import WorkFailed
from nnmeter.lab.settings import ClusterSettings, Unit
from nnmeter.lab.unit import UnitInfo, UnitLost
from nnmeter.measurement.dispatch import BatchDone, BatchJob
from nnmeter.measurement.store import UnitCheck
from nnmeter.progress import SILENT, Reporter


class UnitState(str, enum.Enum):
    CONNECTING = "connecting"
    CHECKING = "checking"
    IDLE = "idle"
    MEASURING = "measuring"
    LOST = "lost"
    EXCLUDED = "excluded"


#: The states in which a unit can take a batch now or soon.
USABLE = (UnitState.IDLE, UnitState.MEASURING, UnitState.CHECKING)


class Engine(ABC):
    """Runs the units' workers; every call returns a pending handle that :meth:`wait` and :meth:`result` take."""

    name: str = ""

    @abstractmethod
    def start(self, unit: Unit) -> Any:
        """A worker for ``unit`` (started, not yet connected)."""

    @abstractmethod
    def connect(self, worker: Any) -> Hashable:
        """Connect the unit (pending; its result is a UnitInfo)."""

    @abstractmethod
    def measure(self, worker: Any, files: Sequence[ModelFile], protocol: MeasurementProtocol) -> Hashable:
        """Measure a batch on the unit (pending; its result is a list of MeasureResult)."""

    @abstractmethod
    def wait(self, pending: Sequence[Hashable], timeout: float) -> list[Hashable]:
        """The pending calls among ``pending`` that finished within ``timeout`` seconds."""

    @abstractmethod
    def result(self, pending: Hashable) -> Any:
        """A finished call's result; UnitLost when the unit or its worker was lost."""

    def restart(self, unit: Unit, worker: Any) -> Any:
        """The worker to use after ``unit`` was lost (the same one, unless it died with its host)."""
        return worker

    def close(self) -> None:
        """Stop every worker (the units' connections are closed)."""


@dataclass
class _Slot:
    unit: Unit
    worker: Any = None
    state: UnitState = UnitState.CONNECTING
    info: UnitInfo | None = None
    pending: Hashable | None = None
    job: BatchJob | None = None
    checking: bool = False
    checked: bool = False  # has had a check since the lab opened
    needs_check: bool = True  # connected since its last check, or check_every batches measured
    since_check: int = 0
    retry_at: float = 0.0
    scale: float = 1.0
    ratio: float | None = None
    verdict: str = ""
    batches: int = 0
    error: str = ""
    readings: dict[str, float] = field(default_factory=dict)  # anchor id -> median ms at its last check

    @property
    def host(self) -> str:
        return self.info.host if self.info is not None else ""


def speed_ratios(readings: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each unit's speed ratio: the geometric mean, over the anchors it measured, of its latency over the median
    of all units' latencies of that anchor (unit -> anchor -> ms). 1 for a unit alone; a unit with no reading is
    left out."""
    anchors = {a for r in readings.values() for a in r}
    reference = {a: statistics.median([r[a] for r in readings.values() if r.get(a, 0) > 0] or [0.0]) for a in anchors}
    ratios = {}
    for unit, r in readings.items():
        logs = [math.log(ms / reference[a]) for a, ms in r.items() if ms > 0 and reference[a] > 0]
        if logs:
            ratios[unit] = math.exp(statistics.fmean(logs))
    return ratios


class Lab:
    """The units of one campaign on an :class:`Engine`; :meth:`dispatch` measures batches on them.

    ``setup`` is (device, backend, protocol key) of the campaign: the checks are recorded under it through
    ``record_check``; ``publish`` gets the units' states whenever one changes (``lab status`` reads them)."""

    def __init__(
        self,
        engine: Engine,
        units: Sequence[Unit],
        cluster: ClusterSettings,
        *,
        reporter: Reporter = SILENT,
        record_check: Callable[[UnitCheck], None] = lambda check: None,
        publish: Callable[[list[dict[str, Any]]], None] = lambda states: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.cluster = cluster
        self.reporter = reporter
        self.record_check = record_check
        self.publish = publish
        self.clock = clock
        self.slots = [_Slot(u) for u in units]
        self.setup = ("", "", "")
        self._started = False
        self._opened_at = clock()
        self._last_usable = clock()
        self._published: list[dict[str, Any]] | None = None

    # --- what the lab is doing ------------------------------------------------------

    def states(self) -> list[dict[str, Any]]:
        return [
            {
                "unit": s.unit.id,
                "host": s.host,
                "state": s.state.value,
                "batches": s.batches,
                "ratio": s.ratio,
                "scale": s.scale,
                "verdict": s.verdict,
                "error": s.error,
            }
            for s in self.slots
        ]

    # --- measuring --------------------------------------------------------------------

    def dispatch(
        self, jobs: Sequence[BatchJob], anchors: Sequence[ModelFile], setup: tuple[str, str, str] = ("", "", "")
    ) -> Iterator[BatchDone]:
        """Measure every job on the units, yielding each batch as a unit finishes it (any order)."""
        self.setup = setup
        queue = deque(jobs)
        check_protocol = _check_protocol(jobs[0].protocol if jobs else None, len(anchors))
        self._start()
        while queue or any(s.job is not None for s in self.slots):
            now = self.clock()
            warming = self._warming(now)
            if not warming:
                self._judge_checked()
            for slot in self.slots:
                if slot.state == UnitState.LOST and now >= slot.retry_at:
                    slot.worker = self.engine.restart(slot.unit, slot.worker)
                    self._connect(slot)
                if slot.state != UnitState.IDLE:
                    continue
                if anchors and check_protocol is not None and self._check_due(slot):
                    slot.pending = self.engine.measure(slot.worker, anchors, check_protocol)
                    slot.state, slot.checking = UnitState.CHECKING, True
                elif queue and not warming:
                    slot.job = queue.popleft()
                    slot.pending = self.engine.measure(slot.worker, slot.job.files, slot.job.protocol)
                    slot.state = UnitState.MEASURING
            self._publish()
            if any(s.state in USABLE for s in self.slots):
                self._last_usable = now
            elif queue:
                self._give_up_if_stuck(now)
            pending = {s.pending: s for s in self.slots if s.pending is not None}
            timeout = self._next_retry(now)
            for ref in self.engine.wait(list(pending), timeout) if pending else _sleep(timeout):
                done = self._finish(pending[ref], ref, queue)
                if done is not None:
                    yield done
        self._publish()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._opened_at = self._last_usable = self.clock()
        for slot in self.slots:
            slot.worker = self.engine.start(slot.unit)
            self._connect(slot)

    def _connect(self, slot: _Slot) -> None:
        slot.pending = self.engine.connect(slot.worker)
        slot.state, slot.checking = UnitState.CONNECTING, False

    def _check_due(self, slot: _Slot) -> bool:
        every = self.cluster.check_every
        return slot.needs_check or (every > 0 and slot.since_check >= every)

    def _warming(self, now: float) -> bool:
        """Batches wait while a unit has not had its first check (at most ``start_timeout_s``)."""
        if now - self._opened_at > self.cluster.start_timeout_s:
            return False
        return any(not s.checked and s.state not in (UnitState.LOST, UnitState.EXCLUDED) for s in self.slots)

    def _next_retry(self, now: float) -> float:
        waits = [s.retry_at - now for s in self.slots if s.state == UnitState.LOST]
        return max(0.05, min([1.0, *waits]))

    def _give_up_if_stuck(self, now: float) -> None:
        if all(s.state == UnitState.EXCLUDED for s in self.slots):
            raise WorkFailed(
                "every unit of the lab is excluded: their anchors disagree beyond cluster.tolerance "
                f"({self.cluster.tolerance:g})",
                "check the units (nnmeter-build lab status WS), or set cluster.outliers: scale",
            )
        if now - self._last_usable > self.cluster.lost_timeout_s:
            lost = "; ".join(f"{s.unit.id}: {s.error or s.state.value}" for s in self.slots)
            raise WorkFailed(
                f"no unit of the lab could measure for {self.cluster.lost_timeout_s:g} s ({lost})",
                "what was measured is in the store: bring a unit back (nnmeter-build lab status WS) and run again",
            )

    def _finish(self, slot: _Slot, ref: Hashable, queue: deque[BatchJob]) -> BatchDone | None:
        slot.pending = None
        connecting, checking, job = slot.state == UnitState.CONNECTING, slot.checking, slot.job
        slot.job, slot.checking = None, False
        try:
            result = self.engine.result(ref)
        except UnitLost as err:
            self._lost(slot, str(err), job, queue)
            return None
        slot.error = ""
        if connecting:
            slot.info = result
            slot.state, slot.needs_check = UnitState.IDLE, True
            self.reporter.note(f"lab: unit {slot.unit.id} on {slot.host} connected: {result.description}")
            return None
        slot.state = UnitState.IDLE
        if checking:
            self._checked(slot, result)
            return None
        assert job is not None and slot.info is not None
        slot.batches += 1
        slot.since_check += 1
        return BatchDone(
            job.index,
            tuple(result),
            slot.unit.id,
            slot.host,
            dict(slot.info.runtime_versions),
            slot.scale,
        )

    def _lost(self, slot: _Slot, why: str, job: BatchJob | None, queue: deque[BatchJob]) -> None:
        if job is not None:
            queue.appendleft(job)
        if slot.state == UnitState.EXCLUDED:
            return
        slot.state, slot.error = UnitState.LOST, why
        slot.retry_at = self.clock() + self.cluster.retry_lost_s
        again = f"tried again in {self.cluster.retry_lost_s:g} s"
        back = f"its batch goes back to the queue; {again}" if job is not None else again
        self.reporter.note(f"lab: unit {slot.unit.id} lost ({why}); {back}", warning=True)

    def _checked(self, slot: _Slot, results: Sequence[MeasureResult]) -> None:
        slot.readings = {r.model_id: r.stats.median_ms for r in results if r.stats is not None and r.latency_ms}
        slot.checked, slot.needs_check, slot.since_check, slot.verdict = True, False, 0, ""

    def _judge_checked(self) -> None:
        """Judge the units checked since they were last judged, against every unit's latest check (once the
        first checks are in: the lab's reference is not known before)."""
        waiting = [s for s in self.slots if s.checked and s.verdict == "" and s.state != UnitState.EXCLUDED]
        if not waiting:
            return
        ratios = speed_ratios({s.unit.id: s.readings for s in self.slots if s.readings})
        for slot in waiting:
            self._judge(slot, ratios.get(slot.unit.id))

    def _judge(self, slot: _Slot, ratio: float | None) -> None:
        tolerance = self.cluster.tolerance
        slot.ratio = ratio
        if ratio is None:
            verdict, scale = "failed", slot.scale  # no anchor measured: keep what it had
        elif abs(math.log(ratio)) <= math.log1p(tolerance):
            verdict, scale = "agrees", 1.0
        elif self.cluster.outliers == "scale":
            verdict, scale = "scaled", ratio
        else:
            verdict, scale = "excluded", slot.scale
        slot.verdict, slot.scale = verdict, scale
        if verdict in ("scaled", "excluded"):
            self.reporter.note(
                f"lab: unit {slot.unit.id} runs the anchors at {ratio:.3f}x the lab's speed ratio, outside "
                f"cluster.tolerance {tolerance:g}: {verdict}",
                warning=True,
            )
        if verdict == "excluded":
            slot.state = UnitState.EXCLUDED
        device, backend, key = self.setup
        self.record_check(
            UnitCheck(device, backend, key, slot.unit.id, slot.host, ratio, scale, verdict, dict(slot.readings))
        )

    def _publish(self) -> None:
        states = self.states()
        if states != self._published:
            self._published = states
            self.publish(states)

    def close(self) -> None:
        self.engine.close()


def _check_protocol(protocol: MeasurementProtocol | None, anchors: int) -> MeasurementProtocol | None:
    """The protocol of a unit's anchor check: the campaign's, as one batch of the anchors."""
    if protocol is None or not anchors:
        return None
    from dataclasses import replace

    return replace(protocol, batch_size=anchors, min_batch_s=0.0, max_remeasures=0)


def _sleep(seconds: float) -> list[Hashable]:
    time.sleep(seconds)
    return []

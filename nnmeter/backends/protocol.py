"""The measurement protocol shared by every backend, and the statistics of a measurement.

A model is measured in a batch: loaded and warmed up, then timed in ``rounds`` short rounds
interleaved round-robin across the batch, each round settled first (untimed invocations until one
is no faster than the one before, at most ``settle_runs``) and then at least ``runs_per_round``
invocations and ``min_round_ms`` long. Models whose median is not pinned down (``median_ci`` above
``max_median_ci``) get up to ``max_remeasures`` more passes of rounds, then the status ``unstable``.
A measurement's latency is one statistic of it, the same for training and evaluation
(``statistic``): the fastest round (the default; :attr:`LatencyStats.fastest_round_ms`) or the
median over the rounds' medians.

``clock: auto`` times the invoking thread's CPU time where the whole inference runs on it, else the
wall clock.

Why: devices switch between fast and slow states every few seconds, and many short interleaved rounds
repeat where a few long ones do not (the measurements: docs/design-notes.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Protocol, Sequence

from nnmeter.schema import setting

#: What a measurement's latency can be (``MeasurementProtocol.statistic``; :meth:`LatencyStats.value`).
STATISTICS = ("min", "median")


@dataclass(frozen=True)
class MeasurementProtocol:
    """How one model is measured; the ``protocol`` section of campaign.yaml."""

    warmup_runs: int = setting(5, "invocations before timing starts, per model", minimum=0, maximum=10_000)
    rounds: int = setting(
        40, "rounds per model (the median over rounds is the typical speed)", minimum=1, maximum=100_000
    )
    runs_per_round: int = setting(3, "invocations per round (at least; see min_round_ms)", minimum=1, maximum=100_000)
    min_round_ms: float = setting(
        2.0,
        "keep invoking within a round until this much time has passed, "
        "so that sub-millisecond kernels are not timer noise",
        minimum=0,
        maximum=600_000,
    )
    settle_runs: int = setting(
        16,
        "at most this many untimed invocations at the start of every round, until one "
        "is no faster than the one before: after other models ran, a model's first "
        "invocations are slow (up to 2x for megabytes of weights, over several "
        "invocations), and settling times the state its own back-to-back invocations "
        "leave; 0 = time from the first (docs/measurement.md)",
        minimum=0,
        maximum=10_000,
    )
    max_median_ci: float = setting(
        0.02,
        "re-measure when the relative half-width of the 95 % confidence interval of the median is above this",
        minimum=0,
        maximum=1,
    )
    max_remeasures: int = setting(
        2, "extra passes of `rounds` for unstable models before flagging them", minimum=0, maximum=100
    )
    batch_size: int = setting(
        64,
        "models measured together, their rounds interleaved; a large batch makes each "
        "model's rounds span many seconds, so they sample the device's fast and slow "
        "states alike instead of whichever lasted through a short batch",
        minimum=1,
        maximum=100_000,
    )
    anchors: bool = setting(
        True,
        "measure three fixed drift-anchor kernels in every batch and scale each batch's "
        "latencies to the device's typical speed (the anchors' median over all batches), "
        "by as much as brings the workspace's repeated measurements closest",
    )
    statistic: str = setting(
        "min",
        "the statistic of a measurement that is its latency, for training, packaging "
        "and evaluation alike: 'min' = the fastest round (the median of its invocations), "
        "the device's fast state; 'median' = the median over rounds, its typical state. "
        "Both repeat; 'min' "
        "repeats better for models that stream weights from memory shared with other "
        "tenants (docs/measurement.md)",
        choices=STATISTICS,
    )
    cooldown_s: float = setting(0.0, "pause between batches (lets a phone cool down)", minimum=0, maximum=86_400)
    min_batch_s: float = setting(
        0.0,
        "spread a batch's `rounds` over at least this many seconds, idle between "
        "rounds, so that they sample the device's fast and slow periods alike "
        "(re-measure passes run back to back); 0 = rounds back to back",
        minimum=0,
        maximum=86_400,
    )
    whole_model_batch_s: float = setting(
        30.0,
        "min_batch_s of the batches of whole models (the evaluation set, "
        "`profile`): few models, so a batch of them would otherwise take "
        "seconds and sit inside one fast or slow period of the device "
        "(docs/measurement.md)",
        minimum=0,
        maximum=86_400,
    )
    clock: str = setting(
        "auto",
        "how one invocation is timed: 'auto' = the CPU time of the invoking thread "
        "where the whole inference runs on it (tflite-local with 1 thread), so that "
        "other processes sharing the measuring core do not inflate it, else the wall "
        "clock; 'wall' = always the wall clock",
        choices=("auto", "wall"),
    )

    def key(self) -> str:
        """A short stable id of the settings that change the numbers (the store keys on it)."""
        paced = ("min_batch_s", "whole_model_batch_s")  # when rounds run, not how: the numbers keep their key
        significant = {
            k: v for k, v in asdict(self).items() if k not in ("batch_size", "cooldown_s", "anchors", *paced)
        }
        return hashlib.sha256(json.dumps(significant, sort_keys=True).encode()).hexdigest()[:12]

    def for_whole_models(self) -> MeasurementProtocol:
        """This protocol for a batch of whole models: its rounds spread over at least ``whole_model_batch_s``."""
        return replace(self, min_batch_s=max(self.min_batch_s, self.whole_model_batch_s))


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of one measurement, in milliseconds (cf. ``torch.utils.benchmark.Measurement``)."""

    median_ms: float  # median over the rounds' medians
    mean_ms: float
    std_ms: float
    min_ms: float
    p90_ms: float
    runs: int
    rounds: int
    spread: float  # relative inter-quartile range of the round medians
    median_ci: float  # relative half-width of the 95 % CI of the median
    round_medians_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def fastest_round_ms(self) -> float:
        """The median invocation of the fastest round: the device's fast state, which one invocation that a
        timer glitch made 2-4x too fast cannot set (``min_ms`` can: CPU-time clocks on a busy VM do it); the
        fastest invocation for a record without round medians."""
        return min(self.round_medians_ms) if self.round_medians_ms else self.min_ms

    def value(self, statistic: str) -> float:
        """The statistic called ``statistic`` (one of :data:`STATISTICS`), in ms: 'min' is
        :attr:`fastest_round_ms`, 'median' :attr:`median_ms`."""
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(STATISTICS)}")
        return self.fastest_round_ms if statistic == "min" else self.median_ms

    @classmethod
    def from_rounds(cls, rounds: Sequence[Sequence[float]]) -> LatencyStats:
        """Statistics from the per-run times (ms) of each round."""
        rounds = [r for r in rounds if r]
        if not rounds:
            raise ValueError("no timed runs")
        medians = sorted(statistics.median(r) for r in rounds)
        all_runs = [t for r in rounds for t in r]
        median = statistics.median(medians)
        q1, q3 = _quantile(medians, 0.25), _quantile(medians, 0.75)
        lo, hi = _median_ci_bounds(medians)
        return cls(
            median_ms=median,
            mean_ms=statistics.fmean(medians),
            std_ms=statistics.pstdev(medians) if len(medians) > 1 else 0.0,
            # a time of 0 is a clock that did not advance (CPU-time accounting on a VM, ~1 in 10^5 invocations of
            # 1 us kernels), not a run: it would make the minimum 0
            min_ms=min((t for t in all_runs if t > 0), default=0.0),
            p90_ms=_quantile(medians, 0.9),
            runs=len(all_runs),
            rounds=len(medians),
            spread=(q3 - q1) / median if median > 0 else math.inf,
            median_ci=max(median - lo, hi - median) / median if median > 0 else math.inf,
            round_medians_ms=tuple(medians),
        )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    i = int(math.floor(pos))
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


def _median_ci_bounds(sorted_values: Sequence[float]) -> tuple[float, float]:
    """Distribution-free 95 % CI of the median from order statistics (normal approx. of the binomial)."""
    n = len(sorted_values)
    if n < 6:  # too few rounds for the interval: the whole range is the honest answer
        return sorted_values[0], sorted_values[-1]
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return sorted_values[lo], sorted_values[hi]


# --- the protocol runner ----------------------------------------------------


class DeviceSession(Protocol):
    """What a backend gives the protocol runner for one batch: load models, time invocations.

    ``run`` returns the per-invocation times (ms) of one round, timed after at most
    ``settle_runs`` untimed invocations (see ``MeasurementProtocol.settle_runs``). A runtime
    that only reports an aggregate per call (``benchmark_model``) returns that one value,
    and warms up in every call instead of settling.
    Failures raise :class:`MeasureError`; the runner records them per model and
    goes on with the rest of the batch.
    """

    def load(self, model_path: str) -> object: ...

    def warmup(self, handle: object, runs: int) -> None: ...

    def run(self, handle: object, runs: int, min_time_ms: float, settle_runs: int = 0) -> list[float]: ...

    def close(self) -> None: ...


class MeasureError(Exception):
    """A measurement of one model failed; ``status`` says how (see :class:`MeasureStatus`)."""

    def __init__(self, message: str, status: str = "error", fatal_for_session: bool = False) -> None:
        super().__init__(message)
        self.status = status
        #: the session is gone (device disconnected, worker died): reopen before the next model
        self.fatal_for_session = fatal_for_session


@dataclass
class RoundRobinOutcome:
    """Per model of a batch: its rounds of run times, or the error that stopped it."""

    rounds: list[list[float]] = field(default_factory=list)
    error: MeasureError | None = None
    started: float = field(default_factory=time.time)
    device_seconds: float = 0.0


ProgressCallback = Callable[[int, int], None]  # (models finished, models in batch)


def run_round_robin(
    open_session: Callable[[], DeviceSession],
    model_paths: Sequence[str],
    protocol: MeasurementProtocol,
    on_progress: ProgressCallback | None = None,
) -> list[RoundRobinOutcome]:
    """Measure ``model_paths`` with ``protocol``: load, warm up, interleaved rounds, re-measure the unstable.

    A model whose load or run fails is recorded with its error; when the error
    ends the session (a crashed worker, a lost device), that session is closed
    (best effort), a new one is opened and the models still being measured are
    loaded again. Every session opened is closed, whatever ends the batch.
    """
    outcomes = [RoundRobinOutcome() for _ in model_paths]
    session: DeviceSession | None = None
    handles: dict[int, object] = {}

    def close_quietly(dropped: DeviceSession) -> None:
        try:  # a session ended by a fault may fail to close as well: the fault is what the results say
            dropped.close()
        except Exception:
            pass

    def fail(i: int, err: MeasureError) -> None:
        nonlocal session
        outcomes[i].error = err
        handles.pop(i, None)
        if err.fatal_for_session:
            if session is not None:
                close_quietly(session)
            session = None
            handles.clear()

    def ensure_loaded(active: list[int]) -> None:
        nonlocal session
        for i in active:
            if outcomes[i].error is not None or i in handles:
                continue
            try:
                if session is None:  # inside the try: a runner that cannot start fails this model, not the batch
                    session = open_session()
                t0 = time.perf_counter()
                handles[i] = session.load(model_paths[i])
                session.warmup(handles[i], protocol.warmup_runs)
                outcomes[i].device_seconds += time.perf_counter() - t0
            except MeasureError as err:
                fail(i, err)

    def passes(active: list[int], n_rounds: int, spread_s: float = 0.0) -> None:
        started = time.monotonic()
        for r in range(n_rounds):
            idle = started + r * spread_s / n_rounds - time.monotonic()
            if idle > 0:
                time.sleep(idle)
            for i in active:
                ensure_loaded([i])  # per model: after a crash the rest of the round goes on in a new session
                if outcomes[i].error is not None or i not in handles or session is None:
                    continue
                try:
                    t0 = time.perf_counter()
                    times = session.run(
                        handles[i], protocol.runs_per_round, protocol.min_round_ms, protocol.settle_runs
                    )
                    outcomes[i].device_seconds += time.perf_counter() - t0
                    outcomes[i].rounds.append(times)
                except MeasureError as err:
                    fail(i, err)

    finished = False
    try:
        active = list(range(len(model_paths)))
        passes(active, protocol.rounds, protocol.min_batch_s)  # re-measure passes run back to back
        for _ in range(protocol.max_remeasures):
            active = [
                i
                for i in active
                if outcomes[i].error is None
                and LatencyStats.from_rounds(outcomes[i].rounds).median_ci > protocol.max_median_ci
            ]
            if not active:
                break
            passes(active, protocol.rounds)
        finished = True
    finally:
        if session is not None:
            if finished:
                session.close()
            else:  # an exception (Ctrl-C...) ends the batch: it, not a failing close, is what the caller sees
                close_quietly(session)
    if on_progress:
        on_progress(len(model_paths), len(model_paths))
    return outcomes

"""The Backend interface: convert models on the host, measure them on the device.

The two stages are apart, as in TVM autotvm's Builder/Runner split:

* :meth:`Backend.convert` is host work. It takes a batch of
  :class:`ConversionJob` and runs them in parallel worker processes, never
  while a measurement runs on the same host, and returns one
  :class:`ConversionResult` per job.
* :meth:`Backend.measure` is device work. It takes a batch of
  :class:`ModelFile` and measures them one at a time per device with the shared
  :class:`~nnmeter.backends.protocol.MeasurementProtocol`, returning one
  :class:`MeasureResult` per model.

Failures of either stage are results with a status and a message, never an
exception that ends a campaign. Exceptions (:class:`~nnmeter.errors.BackendError`)
are for a backend that cannot work at all: a missing runtime, an unreachable device.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from nnmeter.backends.protocol import (
    DeviceSession,
    LatencyStats,
    MeasurementProtocol,
    RoundRobinOutcome,
    run_round_robin,
)


class MeasureStatus(str, enum.Enum):
    """How a measurement ended. ``ok`` and ``unstable`` carry statistics."""

    OK = "ok"
    UNSTABLE = "unstable"  # measured, but the median's confidence interval stayed above the bound
    ERROR = "error"  # the runtime refused or failed on the model
    TIMEOUT = "timeout"
    CRASH = "crash"  # the measuring process or the device went away
    UNREACHABLE = "unreachable"  # the device could not be reached after retries

    @property
    def has_latency(self) -> bool:
        return self in (MeasureStatus.OK, MeasureStatus.UNSTABLE)


#: The statuses whose measurements carry a latency: the ones training and evaluation read.
LATENCY_STATUSES = tuple(status for status in MeasureStatus if status.has_latency)


@dataclass(frozen=True)
class ModelFile:
    """A model in a backend's format, ready to measure. ``id`` is its content hash."""

    id: str
    path: Path
    format: str  # "tflite", "openvino" (IR .xml), "onnx", "keras", "savedmodel"
    input_shapes: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class ConversionJob:
    """One model to produce in a backend's format.

    Either ``build`` (a module-level function, so that worker processes can
    import it, called with ``build_args``, returning a ``keras.Model``) or
    ``source`` (an existing model file: .keras, .h5, SavedModel, .tflite, .onnx).
    ``write`` (module-level too, called with ``build_args``) writes the model's
    .tflite bytes directly, without TensorFlow, or returns None when it cannot:
    formats made from .tflite use it first, and ``build`` when it returns None.
    """

    id: str
    out_dir: Path
    build: Callable[..., Any] | None = None
    build_args: tuple = ()
    source: Path | None = None
    write: Callable[..., bytes | None] | None = None


@dataclass(frozen=True)
class ConversionResult:
    job_id: str
    model: ModelFile | None
    error: str = ""
    seconds: float = 0.0
    built_with_tensorflow: bool = False  # a job with ``write`` whose writer could not write it

    @property
    def ok(self) -> bool:
        return self.model is not None


@dataclass(frozen=True)
class OpTime:
    """One row of an op-level profile."""

    node: str
    op_type: str
    avg_ms: float
    percent: float = 0.0


@dataclass(frozen=True)
class MeasureResult:
    """The outcome of measuring one model (cf. autotvm ``MeasureResult``)."""

    model_id: str
    status: MeasureStatus
    stats: LatencyStats | None = None
    error: str = ""
    op_profile: tuple[OpTime, ...] = ()
    started_at: float = field(default_factory=time.time)
    device_seconds: float = 0.0

    @property
    def latency_ms(self) -> float | None:
        """The median over rounds when the status carries one (what the rule tester and the benches compare;
        the builder reads the protocol's statistic from the stored record, ``MeasurementRecord.latency_ms``)."""
        return self.stats.median_ms if self.stats is not None and self.status.has_latency else None

    @classmethod
    def from_outcome(cls, model_id: str, outcome: RoundRobinOutcome, protocol: MeasurementProtocol) -> MeasureResult:
        """The result of one model of a :func:`run_round_robin` batch: its error, or its statistics."""
        started, device_seconds = outcome.started, outcome.device_seconds
        if outcome.error is not None:
            return cls(
                model_id,
                MeasureStatus(outcome.error.status),
                error=str(outcome.error),
                started_at=started,
                device_seconds=device_seconds,
            )
        if not any(outcome.rounds):
            return cls(
                model_id, MeasureStatus.ERROR, error="no timed runs", started_at=started, device_seconds=device_seconds
            )
        stats = LatencyStats.from_rounds(outcome.rounds)
        status = MeasureStatus.OK if stats.median_ci <= protocol.max_median_ci else MeasureStatus.UNSTABLE
        return cls(model_id, status, stats, started_at=started, device_seconds=device_seconds)


@dataclass(frozen=True)
class DeviceInfo:
    """Facts about the device and runtime, recorded with every measurement."""

    backend: str
    device: str  # stable id of the device, e.g. "local:<hostname>", "adb:<serial>", "ssh:user@host"
    description: str  # human-readable: model, SoC/CPU
    runtime: str  # e.g. "ai-edge-litert 2.3.0 (XNNPACK)"
    runtime_versions: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, str] = field(default_factory=dict)  # cores, governor, frequencies, temperature, OS, ...


ProgressCallback = Callable[[int, int], None]  # (done, total)


def measure_in_batches(
    open_session: Callable[[], DeviceSession],
    models: Sequence[ModelFile],
    protocol: MeasurementProtocol,
    progress: ProgressCallback | None = None,
) -> list[MeasureResult]:
    """Measure ``models`` in batches of ``protocol.batch_size`` with :func:`run_round_robin`, one result each."""
    results: list[MeasureResult] = []
    for start in range(0, len(models), protocol.batch_size):
        if start and protocol.cooldown_s:
            time.sleep(protocol.cooldown_s)
        batch = models[start : start + protocol.batch_size]
        outcomes = run_round_robin(open_session, [str(m.path) for m in batch], protocol)
        results += [MeasureResult.from_outcome(m.id, o, protocol) for m, o in zip(batch, outcomes)]
        if progress:
            progress(len(results), len(models))
    return results


class Backend(ABC):
    """A device plus the runtime that executes models on it.

    Subclasses set ``name`` (the registry key), ``model_format`` and
    ``Config`` (a dataclass of the YAML ``backend:`` section's keys other than
    ``name``, declared with :func:`nnmeter.schema.setting`).
    """

    name: ClassVar[str]
    model_format: ClassVar[str]
    Config: ClassVar[type[Any]]
    description: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        self.config = config
        #: what :meth:`connect` returned (set by :func:`nnmeter.backends.connect_backend`)
        self.device_info: DeviceInfo | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot be used on this host (a missing package...), or None."""
        return None

    @classmethod
    def config_problems(cls, config: Any) -> list[tuple[str, str]]:
        """(key, message) for values of a loaded ``Config`` that are typed right but invalid together or here."""
        return []

    @abstractmethod
    def connect(self) -> DeviceInfo:
        """Reach the device, check the runtime, and return the facts; raise BackendError if impossible."""

    @abstractmethod
    def convert(
        self, jobs: Sequence[ConversionJob], workers: int = 1, progress: ProgressCallback | None = None
    ) -> list[ConversionResult]:
        """Produce the models of ``jobs`` in this backend's format (host work, parallel)."""

    @abstractmethod
    def measure(
        self, models: Sequence[ModelFile], protocol: MeasurementProtocol, progress: ProgressCallback | None = None
    ) -> list[MeasureResult]:
        """Measure ``models`` one at a time on the device (device work), one result per model, in order."""

    def close(self) -> None:
        """Release the device and any worker processes."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

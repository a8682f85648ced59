"""Batches measured elsewhere: the interface a session hands its batches to when several units measure them.

A :class:`MeasuringSession` with a ``dispatcher`` does not measure its batches one after the other on its
backend: it hands them all to the dispatcher (a lab of units, :mod:`nnmeter.lab`) and stores each
:class:`BatchDone` the moment it arrives, in whatever order the units finish. A batch a unit lost is the
dispatcher's business (it measures it again elsewhere); the session only ever sees complete batches, each
measured by one unit, with that unit's runtime versions and its scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Protocol, Sequence, runtime_checkable

from nnmeter.backends.base import MeasureResult, ModelFile
from nnmeter.backends.protocol import MeasurementProtocol


@dataclass(frozen=True)
class BatchJob:
    """One batch to measure on one unit, as a whole: the models and the drift anchors, in one protocol."""

    index: int
    files: tuple[ModelFile, ...]
    protocol: MeasurementProtocol


@dataclass(frozen=True)
class BatchDone:
    """A batch measured by one unit: one result per file of its job, in order, and who measured it.

    ``scale`` is the unit's speed ratio to the lab when the lab scales the unit (1 when it agrees)."""

    index: int
    results: tuple[MeasureResult, ...]
    unit: str
    host: str
    runtime_versions: Mapping[str, str] = field(default_factory=dict)
    scale: float = 1.0


@runtime_checkable
class BatchDispatcher(Protocol):
    """Measures batches on several units at once."""

    def dispatch(self, jobs: Sequence[BatchJob], anchors: Sequence[ModelFile]) -> Iterator[BatchDone]:
        """Measure every job, yielding each as its unit finishes it. ``anchors`` are the drift anchors' files
        (the units' agreement checks measure them)."""
        ...

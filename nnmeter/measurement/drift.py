"""Drift anchors: a batch's speed relative to the device's typical speed, decided when the batch is stored.

A device's speed drifts over minutes (a shared host; a phone as it heats up), and a
batch measured in a slow minute would make every model in it slow. Every batch
therefore also measures three fixed kernels (:data:`ANCHOR_KERNELS`). When the batch is
stored, its *anchor factor* is the geometric mean, over its anchors, of each anchor's
median latency in all batches so far (this one included) divided by its latency in this
batch; the factor the batch's measurements carry is the anchor factor raised to a
*weight* that :class:`DriftCheck` fits on the repeated measurements stored so far (1
where the anchors' drift is the models', near 0 where it is not). The fit compares
batches by their *anchor level*, the geometric mean of each anchor's latency over its
first one: a fixed reference, so two batches' levels compare their speeds whenever they
were stored. All three are written with the batch and never change: a measurement reads
the same forever, and retraining on an unchanged store gives the same predictor.

Everything here is pure: plain numbers in, numbers out (the store does the reading).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

#: Fixed kernels measured in every batch: a compute-bound 3x3 conv, a memory-bound depthwise conv and a 1x1
#: conv with 0.5 MB of weights, each 0.05-0.5 ms on a CPU, so that no single kernel's quirk sets a factor.
ANCHOR_KERNELS: tuple[tuple[str, Mapping[str, int]], ...] = (
    ("conv-bn-relu", {"HW": 14, "CIN": 64, "COUT": 64, "KERNEL_SIZE": 3, "STRIDES": 1}),
    ("dwconv-bn-relu", {"HW": 56, "CIN": 64, "KERNEL_SIZE": 3, "STRIDES": 1}),
    ("conv-bn-relu", {"HW": 7, "CIN": 256, "COUT": 512, "KERNEL_SIZE": 1, "STRIDES": 1}),
)

#: Repeated measurements needed before the drift check weighs the anchors' factors (fewer: weight 1).
DRIFT_CHECK_MIN_PAIRS = 30


def anchor_factor(history: Mapping[str, Sequence[float]], current: Mapping[str, float]) -> float | None:
    """How much faster than typical the device ran in a batch whose anchors read ``current`` (anchor -> ms),
    given their readings in earlier batches (``history``, anchor -> ms per batch); None without anchors.

    Each anchor's typical latency is the median of its earlier readings and this one."""
    logs = []
    for anchor, ms in current.items():
        if ms > 0:
            typical = statistics.median([*history.get(anchor, ()), ms])
            logs.append(math.log(typical) - math.log(ms))
    return math.exp(statistics.fmean(logs)) if logs else None


def anchor_level(first: Mapping[str, float], current: Mapping[str, float]) -> float | None:
    """How much slower than at its first measurement the device ran the anchors of a batch: the geometric mean
    over the anchors in ``current`` (anchor -> ms) of their latency over their first one (``first``; an anchor
    measured for the first time is its own reference); None without anchors."""
    logs = [math.log(ms) - math.log(first.get(anchor, ms)) for anchor, ms in current.items() if ms > 0]
    return math.exp(statistics.fmean(logs)) if logs else None


@dataclass(frozen=True)
class DriftCheck:
    """How much of the anchors' factors to apply, fitted on repeated measurements.

    A pair is two consecutive measurements of one model in different batches: ``m`` the log ratio of its
    latencies, ``a`` the log ratio of the factors the two batches' anchor levels call for (the inverse of
    the ratio of the levels). The factors raised to ``weight``
    leave ``m + weight * a``; the weight is the least-squares one, ``-sum(m * a) / sum(a^2)``, kept in
    [0, 1]; with fewer than :data:`DRIFT_CHECK_MIN_PAIRS` pairs it is 1. The spreads are root mean squares
    of the log ratios, in %: as measured, with the full factors, with the weighted ones."""

    pairs: int
    weight: float
    measured_spread: float
    anchored_spread: float
    weighted_spread: float

    @classmethod
    def fit(cls, model_logs: Sequence[float], factor_logs: Sequence[float]) -> DriftCheck:
        """The check of pairs with log ratios ``model_logs`` (``m``) and ``factor_logs`` (``a``)."""
        m, a = list(model_logs), list(factor_logs)
        moved = sum(x * x for x in a)
        weight = 1.0
        if len(m) >= DRIFT_CHECK_MIN_PAIRS and moved > 0:
            weight = min(1.0, max(0.0, -sum(x * y for x, y in zip(m, a)) / moved))
        return cls(
            len(m), weight, _rms(m), _rms([x + y for x, y in zip(m, a)]), _rms([x + weight * y for x, y in zip(m, a)])
        )

    def describe(self) -> str:
        if self.pairs < DRIFT_CHECK_MIN_PAIRS:
            return f"anchors' factors applied in full (only {self.pairs} repeated measurements to weigh them on)"
        return (
            f"anchors' factors at weight {self.weight:.2f}, fitted on {self.pairs} repeated measurements: "
            f"they differ by {self.measured_spread:.1f} % as measured, {self.anchored_spread:.1f} % with the "
            f"full factors, {self.weighted_spread:.1f} % with the weighted ones (rms of the log ratio)"
        )


@dataclass(frozen=True)
class Repeat:
    """One measurement of a model that was measured in several batches: its latency as measured and its
    batch's anchor level (None: the batch had no anchor)."""

    model_id: str
    batch: str
    latency_ms: float
    anchor_level: float | None


def drift_check(repeats: Sequence[Repeat]) -> DriftCheck:
    """The :class:`DriftCheck` of measurements in storing order: each model's consecutive measurements in
    different batches that both had anchors form a pair."""
    model_logs: list[float] = []
    factor_logs: list[float] = []
    last: dict[str, Repeat] = {}
    for rep in repeats:
        before = last.get(rep.model_id)
        if before is not None and before.batch != rep.batch and before.anchor_level and rep.anchor_level:
            model_logs.append(math.log(rep.latency_ms / before.latency_ms))
            factor_logs.append(math.log(before.anchor_level / rep.anchor_level))
        last[rep.model_id] = rep
    return DriftCheck.fit(model_logs, factor_logs)


def _rms(logs: Sequence[float]) -> float:
    return 100 * math.sqrt(statistics.fmean(v * v for v in logs)) if logs else 0.0

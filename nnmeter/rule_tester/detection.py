"""Fusion decisions from measured latencies, with their uncertainty.

A pair op1 -> op2 is fused when ``T1 + T2 - T12 > alpha * min(T1, T2)`` (nn-Meter's
test). We decide on the normalised margin

    m = (T1 + T2 - T12) / min(T1, T2) - alpha        (fused when m > 0)

Two reasons for the normalisation: it reads the same for kernels of 0.05 ms and
50 ms, and it is invariant to a common scale factor, so a host that slows down
by 1.3x while the three models are measured (they are measured interleaved, in one
batch) does not move it.

Every measured latency also holds the runtime's fixed cost of one inference
(an invoke: ~0.4 us with LiteRT here, ~15 us with OpenVINO), which ``T1 + T2``
counts twice and ``T12`` once; unfused ops would look fused by that amount. So
the latency ``T0`` of an empty model (one element through a relu) is taken off:
``m = (T1 + T2 - T12 - T0) / min(T1 - T0, T2 - T0) - alpha``. When the smaller op's
own time ``min(T1, T2) - T0`` is not resolved above zero (its interval reaches 0:
the op costs no more than an empty inference), the criterion cannot be evaluated
and the case is uncertain; its denominator is floored at a tenth of ``T0``.

Each T is the median over a model's round medians. The uncertainty of m comes
from a bootstrap over those rounds (each model's rounds resampled independently):
the 95 % interval of m, and the confidence = the share of resamples that give the
same decision. A decision whose interval contains 0 is *inside the noise*: the
runner measures the three models again and pools the rounds, up to a bound, then
reports it as uncertain. The bootstrap is seeded, so the same rounds give the same
answer.

The scale invariance only holds for models measured together. Models measured in
different batches (the first pass measures every model once, in batches, and a
single op is shared by many pairs) differ also by the host's drift between the
batches; ``drift`` adds it to the bootstrap as a relative normal error per model.
Re-measurements measure a case's models together, and are decided with ``drift=0``.

This module is pure: lists of round medians in, :class:`~nnmeter.predictor.rules.PairRule`
and :class:`~nnmeter.predictor.rules.MonRule` out; it measures nothing.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from nnmeter.predictor.rules import MON_CASE_VALUES, Measured, MonRule, PairRule

#: Bootstrap resamples per decision; 2000 keeps the confidence's own error under 1 %.
BOOTSTRAP_SAMPLES = 2000
#: Two-sided level of the margin's interval; a decision is certain when the interval excludes 0.
LEVEL = 0.95


def decide_pair(op1: str, op2: str, t1: Sequence[float], t2: Sequence[float], t12: Sequence[float],
                alpha: float = 0.5, drift: float = 0.0, t0: Sequence[float] = (), seed: int = 0) -> PairRule:
    """The decision for op1 -> op2 from the round medians (ms) of op1 alone, op2 alone and op1 -> op2.

    ``drift``: relative standard deviation of a latency between batches, when the three
    models were not measured together; ``t0``: round medians of the empty model, whose
    latency (the runtime's cost of one inference) is taken off (see the module doc).
    """
    for name, rounds in (("T1", t1), ("T2", t2), ("T12", t12), ("T0", t0)):
        if len(rounds) == 0 and name != "T0":
            raise ValueError(f"{name}: no round medians")
        if len(rounds) and min(rounds) <= 0:
            raise ValueError(f"{name}: latencies must be positive, got {min(rounds)}")
    rng = np.random.default_rng(seed)
    b1, b2, b12 = (_bootstrap_medians(np.asarray(r, dtype=float), rng, drift) for r in (t1, t2, t12))
    b0 = _bootstrap_medians(np.asarray(t0, dtype=float), rng, drift) if len(t0) else 0.0
    m1, m2, m12 = (float(np.median(r)) for r in (t1, t2, t12))
    m0 = float(np.median(t0)) if len(t0) else 0.0
    margin = float(_margin(m1, m2, m12, m0, alpha))
    boot = _margin(b1, b2, b12, b0, alpha)
    low, high = np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    obey = bool(margin > 0)
    confidence = float(np.mean((boot > 0) == obey))
    own = np.minimum(b1, b2) - b0  # the smaller op's own time, per resample
    resolved = not len(t0) or float(np.quantile(own, (1 - LEVEL) / 2)) > 0
    return PairRule(
        op1, op2, obey,
        t1=_measured(m1, b1, len(t1)), t2=_measured(m2, b2, len(t2)), t12=_measured(m12, b12, len(t12)),
        t0=_measured(m0, b0, len(t0)) if len(t0) else None,
        margin=margin, margin_low=float(low), margin_high=float(high), confidence=confidence,
        uncertain=bool(low <= 0 <= high) or not resolved,
    )


def decide_mon(block: Sequence[float], partitions: Mapping[str, Sequence[Sequence[float]]],
               drift: float = 0.0, t0: Sequence[float] = (), seed: int = 0) -> MonRule:
    """The multiple-outbound-node policy: the partition whose summed latency is closest to the block's.

    ``partitions`` maps each MON case (``case1`` .. ``case3``, see
    :data:`~nnmeter.predictor.rules.MON_CASE_VALUES`) to the round medians of the models it
    is made of. The confidence is the share of bootstrap resamples that pick the same
    partition; below :data:`LEVEL` the decision is uncertain. A partition of n models
    counts the cost of an inference n times, the block once: ``t0`` takes n - 1 off.
    """
    missing = [p for p in MON_CASE_VALUES if p not in partitions]
    if missing:
        raise ValueError(f"MON: partitions missing: {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    b_block = _bootstrap_medians(np.asarray(block, dtype=float), rng, drift)
    names = list(MON_CASE_VALUES)
    m0 = float(np.median(t0)) if len(t0) else 0.0
    b0 = _bootstrap_medians(np.asarray(t0, dtype=float), rng, drift) if len(t0) else 0.0
    sums = {p: sum(float(np.median(m)) for m in partitions[p]) - (len(partitions[p]) - 1) * m0 for p in names}
    boot_sums = np.stack([sum(_bootstrap_medians(np.asarray(m, dtype=float), rng, drift) for m in partitions[p])
                          - (len(partitions[p]) - 1) * b0 for p in names])
    t_block = float(np.median(block))
    best = min(names, key=lambda p: abs(sums[p] - t_block))
    boot_best = np.argmin(np.abs(boot_sums - b_block), axis=0)
    confidence = float(np.mean(boot_best == names.index(best)))
    return MonRule(
        value=MON_CASE_VALUES[best],
        latencies_ms={"block": t_block, **sums},
        confidence=confidence,
        uncertain=confidence < LEVEL,
    )


def _margin(t1, t2, t12, t0, alpha):
    """Works on floats and on arrays of bootstrap medians alike."""
    return (t1 + t2 - t12 - t0) / np.maximum(np.minimum(t1, t2) - t0, _FLOOR * t0 + _TINY_MS) - alpha


#: Floor of the smaller op's own time in the margin's denominator, as a share of the empty model's
#: latency: below it the op is not resolved anyway (and the case is uncertain).
_FLOOR = 0.1
_TINY_MS = 1e-9


def _bootstrap_medians(rounds: np.ndarray, rng: np.random.Generator, drift: float) -> np.ndarray:
    idx = rng.integers(0, len(rounds), size=(BOOTSTRAP_SAMPLES, len(rounds)))
    medians = np.median(rounds[idx], axis=1)
    return medians * (1 + drift * rng.standard_normal(BOOTSTRAP_SAMPLES)) if drift else medians


def _measured(median: float, boot: np.ndarray, rounds: int) -> Measured:
    low, high = np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Measured(median, float(max(median - low, high - median) / median), rounds)

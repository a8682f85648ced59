"""Fusion decisions from measured latencies, with their uncertainty between passes.

A pair op1 -> op2 is fused when ``T1 + T2 - T12 > alpha * min(T1, T2)`` (nn-Meter's
test). We decide on the normalised margin

    m = (T1 + T2 - T12 - T0) / min(T1 - T0, T2 - T0) - alpha        (fused when m > 0)

``T0`` is the latency of an empty model (one element through a relu): the runtime's
fixed cost of one inference (~0.4 us with LiteRT here, ~15 us with OpenVINO), which
``T1 + T2`` counts twice and ``T12`` once; without it unfused small ops look fused.
The normalisation makes the margin read the same for kernels of 0.05 and 50 ms and
leaves it unmoved by a common slowdown of the host.

**Passes.** A case is measured in several *passes*: each pass loads the case's
models anew and measures them together in one batch, their rounds interleaved (so a
slow period of the host hits them alike). The round medians of one load scatter far
less than the latency differs between loads and batches (on the evidence stores, the
spread of a model's latency between measurements is a median 3.4x (LiteRT) and 5x
(OpenVINO) the standard error of one measurement's median): an interval from one
load's rounds is too narrow, and decisions flipped between runs although both were
"certain". So each pass gives its own margin ``m_p``, and the decision is on their
mean with a Student-t interval over the passes, which covers the pass-to-pass
spread. Its standard deviation is never taken below what the passes' own rounds
allow (a seeded bootstrap of each pass's round medians): two passes that agree by
chance do not make a noisy case certain. The case is *uncertain* when the interval
contains 0, when the smaller op's own time ``min(T1, T2) - T0`` is not resolved above
0 (the criterion cannot be evaluated: the denominator is then floored at a tenth of
``T0``), or when fewer than two passes were measured. The runner adds passes to
uncertain cases up to a bound. The confidence is the t-probability that the mean
margin has the decided sign.

This module is pure: round medians in, :class:`~nnmeter.predictor.rules.PairRule` and
:class:`~nnmeter.predictor.rules.MonRule` out; it measures nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from nnmeter.predictor.rules import MON_CASE_VALUES, Measured, MonRule, PairRule

#: Bootstrap resamples of one pass's rounds (its within-pass noise); 1000 keeps that estimate within a few %.
BOOTSTRAP_SAMPLES = 1000
#: Two-sided level of the intervals; a decision is certain when the margin's interval excludes 0.
LEVEL = 0.95


@dataclass(frozen=True)
class PairPass:
    """One pass of a pair case: round medians (ms) of op1 alone, op2 alone, op1 -> op2 and the empty model,
    all loaded anew and measured together."""

    t1: Sequence[float]
    t2: Sequence[float]
    t12: Sequence[float]
    t0: Sequence[float] = ()


@dataclass(frozen=True)
class MonPass:
    """One pass of the MON case: round medians (ms) of the block, of every model of each partition
    (``case1`` .. ``case3``), and of the empty model."""

    block: Sequence[float]
    partitions: Mapping[str, Sequence[Sequence[float]]] = field(default_factory=dict)
    t0: Sequence[float] = ()


def decide_pair(op1: str, op2: str, passes: Sequence[PairPass], alpha: float = 0.5, seed: int = 0) -> PairRule:
    """The decision for op1 -> op2 from its passes (see the module doc)."""
    if not passes:
        raise ValueError("no passes")
    for p in passes:
        for name, rounds in (("T1", p.t1), ("T2", p.t2), ("T12", p.t12), ("T0", p.t0)):
            if len(rounds) == 0 and name != "T0":
                raise ValueError(f"{name}: no round medians")
            if len(rounds) and min(rounds) <= 0:
                raise ValueError(f"{name}: latencies must be positive, got {min(rounds)}")
    with_t0 = all(len(p.t0) for p in passes)
    rng = np.random.default_rng(seed)
    # per pass and model: (median, bootstrap medians), models in the order t1, t2, t12, t0
    per_pass = [[_median_and_boot(r, rng) for r in (p.t1, p.t2, p.t12, p.t0 if with_t0 else (0.0,))] for p in passes]
    medians = np.array([[m for m, _ in models] for models in per_pass])  # passes x 4
    boots = [np.stack([b for _, b in models]) for models in per_pass]  # per pass: 4 x samples
    margins = _margin(*medians.T, alpha)
    within = np.array([np.std(_margin(*b, alpha)) for b in boots])
    margin, half, confidence = _over_passes(margins, within)
    own, own_half, _ = _over_passes(
        np.minimum(medians[:, 0], medians[:, 1]) - medians[:, 3],
        np.array([np.std(np.minimum(b[0], b[1]) - b[3]) for b in boots]),
    )
    resolved = not with_t0 or own - own_half > 0
    measured = [
        _measured(medians[:, i], np.array([np.std(b[i]) for b in boots]), sum(len(r) for r in rounds))
        for i, rounds in enumerate(zip(*[(p.t1, p.t2, p.t12, p.t0) for p in passes]))
    ]
    return PairRule(
        op1,
        op2,
        bool(margin > 0),
        t1=measured[0],
        t2=measured[1],
        t12=measured[2],
        t0=measured[3] if with_t0 else None,
        margin=margin,
        margin_low=margin - half,
        margin_high=margin + half,
        confidence=confidence,
        uncertain=bool(margin - half <= 0 <= margin + half) or not resolved or len(passes) < 2,
        passes=len(passes),
    )


def decide_mon(passes: Sequence[MonPass], seed: int = 0) -> MonRule:
    """The multiple-outbound-node policy: the partition whose summed latency is closest to the block's.

    Per pass, each partition's relative error ``(sum - block) / block`` (a partition of n
    models counts the cost of an inference n times, the block once: ``t0`` takes n - 1
    off); the partition with the smallest mean error wins. It is certain when, for every
    other partition, the t-interval over passes of how much further that one is from the
    block excludes 0; the confidence is the smallest t-probability of these gaps.
    """
    if not passes:
        raise ValueError("no passes")
    names = list(MON_CASE_VALUES)
    for p in passes:
        missing = [c for c in names if c not in p.partitions]
        if missing:
            raise ValueError(f"MON: partitions missing: {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    errors, boot_errors, blocks, sums = [], [], [], []
    for p in passes:
        block, b_block = _median_and_boot(p.block, rng)
        t0, b_t0 = _median_and_boot(p.t0, rng) if len(p.t0) else (0.0, np.zeros(1))
        pass_sums, boot_sums = [], []
        for c in names:
            parts = [_median_and_boot(m, rng) for m in p.partitions[c]]
            extra = len(parts) - 1
            pass_sums.append(sum(m for m, _ in parts) - extra * t0)
            boot_sums.append(sum(b for _, b in parts) - extra * b_t0)
        errors.append((np.array(pass_sums) - block) / block)
        boot_errors.append((np.stack(boot_sums) - b_block) / b_block)
        blocks.append(block)
        sums.append(pass_sums)
    errors_arr = np.array(errors)  # passes x partitions
    best = int(np.argmin(np.abs(errors_arr.mean(axis=0))))
    confidence, certain = 1.0, len(passes) >= 2
    for other in range(len(names)):
        if other == best:
            continue
        gaps = np.abs(errors_arr[:, other]) - np.abs(errors_arr[:, best])
        within = np.array([np.std(np.abs(b[other]) - np.abs(b[best])) for b in boot_errors])
        gap, half, conf = _over_passes(gaps, within)
        confidence = min(confidence, conf)
        certain = certain and gap - half > 0
    return MonRule(
        value=MON_CASE_VALUES[names[best]],
        latencies_ms={"block": float(np.mean(blocks)), **dict(zip(names, map(float, np.mean(sums, axis=0))))},
        confidence=confidence,
        uncertain=not certain,
        passes=len(passes),
    )


def _over_passes(values: np.ndarray, within_sd: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-pass ``values``, the half-width of its t-interval and the t-probability of its sign.

    The standard deviation is the larger of the passes' spread and their own within-pass
    noise (``within_sd``, pooled); one pass has only the latter (and is uncertain anyway).
    """
    n = len(values)
    mean = float(np.mean(values))
    sd = max(float(np.std(values, ddof=1)) if n > 1 else 0.0, float(np.sqrt(np.mean(within_sd**2))))
    se = sd / np.sqrt(n)
    dist = stats.t(df=n - 1) if n > 1 else stats.norm()
    half = float(dist.ppf((1 + LEVEL) / 2) * se)
    confidence = float(dist.cdf(abs(mean) / se)) if se > 0 else 1.0
    return mean, half, confidence


def _margin(t1, t2, t12, t0, alpha):
    """Works on floats and on arrays (per pass, or bootstrap medians) alike."""
    return (t1 + t2 - t12 - t0) / np.maximum(np.minimum(t1, t2) - t0, _FLOOR * t0 + _TINY_MS) - alpha


#: Floor of the smaller op's own time in the margin's denominator, as a share of the empty model's
#: latency: below it the op is not resolved anyway (and the case is uncertain).
_FLOOR = 0.1
_TINY_MS = 1e-9


def _median_and_boot(rounds: Sequence[float], rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """The median of one pass's round medians and its bootstrap resamples."""
    values = np.asarray(rounds, dtype=float)
    idx = rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))
    return float(np.median(values)), np.median(values[idx], axis=1)


def _measured(pass_medians: np.ndarray, within_sd: np.ndarray, rounds: int) -> Measured:
    """A model's latency over the passes: their mean and the relative half-width of its interval."""
    mean, half, _ = _over_passes(pass_medians, within_sd)
    return Measured(mean, half / mean if mean > 0 else 0.0, rounds)

"""The measurement protocol's statistics and round-robin runner, on synthetic numbers."""

from __future__ import annotations

import random
import time

import pytest

from nnmeter.backends.base import MeasureResult, MeasureStatus
from nnmeter.backends.protocol import LatencyStats, MeasureError, MeasurementProtocol, run_round_robin

pytestmark = pytest.mark.unit


def test_stats_from_rounds_use_round_medians():
    stats = LatencyStats.from_rounds([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert stats.median_ms == 5.0  # median of the round medians 2, 5, 8
    assert stats.mean_ms == 5.0 and stats.min_ms == 1.0
    assert stats.runs == 9 and stats.rounds == 3
    assert stats.p90_ms == pytest.approx(7.4)  # 2 + 0.9 * 2 * 3 interpolated over 2, 5, 8
    assert stats.spread == pytest.approx((6.5 - 3.5) / 5.0)
    assert stats.round_medians_ms == (2.0, 5.0, 8.0)


def test_min_is_the_fastest_round_which_one_glitched_invocation_cannot_set():
    """A timer glitch times one invocation 4x too fast; the fastest round (its median invocation) stays put."""
    stats = LatencyStats.from_rounds([[0.020, 0.005, 0.021], [0.019, 0.019, 0.020], [0.025, 0.026, 0.024]])
    assert stats.min_ms == 0.005 and stats.fastest_round_ms == 0.019
    assert stats.value("min") == 0.019 and stats.value("median") == stats.median_ms == 0.020
    assert LatencyStats(1.0, 1.0, 0.0, 0.8, 1.0, 3, 1, 0.0, 0.0).value("min") == 0.8  # no round medians stored


def test_a_zero_time_is_not_the_minimum():
    """A CPU-time clock that did not advance reads 0; the fastest run is the fastest real one."""
    stats = LatencyStats.from_rounds([[0.0011, 0.0, 0.0012], [0.0010, 0.0013, 0.0011]])
    assert stats.min_ms == 0.0010 and stats.runs == 6


def test_empty_rounds_are_skipped_and_none_is_an_error():
    assert LatencyStats.from_rounds([[], [2.0]]).rounds == 1
    with pytest.raises(ValueError):
        LatencyStats.from_rounds([[], []])


def test_median_ci_shrinks_with_rounds_on_a_bimodal_host():
    rng = random.Random(1)

    def bimodal(n):  # 75 % of rounds in a slow state 1.4x the fast one, as measured on this host
        return [[(1.4 if rng.random() < 0.75 else 1.0) * rng.uniform(0.98, 1.02)] for _ in range(n)]

    few, many = LatencyStats.from_rounds(bimodal(8)), LatencyStats.from_rounds(bimodal(400))
    assert many.median_ci < few.median_ci
    assert many.median_ci < 0.02 and many.spread > 0.02  # the IQR stays wide; the median is still sure


def test_median_ci_with_few_rounds_is_the_whole_range():
    stats = LatencyStats.from_rounds([[1.0], [2.0], [4.0]])
    assert stats.median_ci == pytest.approx((4.0 - 2.0) / 2.0)


class _SyntheticSession:
    """Round times from a table per model path; ``noisy`` models alternate between 1 and 2 ms."""

    def __init__(self, log):
        self.log = log

    def load(self, path):
        if path == "bad":
            raise MeasureError("cannot load")
        return path

    def warmup(self, handle, runs):
        pass

    def run(self, handle, runs, min_time_ms, settle_runs=0):
        self.log.append(handle)
        if handle == "noisy":
            return [1.0 + self.log.count("noisy") % 2]
        return [3.0] * runs

    def close(self):
        pass


def test_round_robin_interleaves_and_remeasures_the_unstable_up_to_the_bound():
    log = []
    protocol = MeasurementProtocol(rounds=10, runs_per_round=2, max_median_ci=0.02, max_remeasures=2)
    steady, noisy, bad = run_round_robin(lambda: _SyntheticSession(log), ["steady", "noisy", "bad"], protocol)
    assert log[:4] == ["steady", "noisy", "steady", "noisy"]  # round-robin, not one model after the other
    assert len(steady.rounds) == 10  # stable: no re-measure
    assert len(noisy.rounds) == 30  # unstable: two extra passes, then it stops
    assert bad.error is not None and not bad.rounds
    assert MeasureResult.from_outcome("n", noisy, protocol).status == MeasureStatus.UNSTABLE
    assert MeasureResult.from_outcome("s", steady, protocol).status == MeasureStatus.OK
    assert MeasureResult.from_outcome("b", bad, protocol).status == MeasureStatus.ERROR


def test_a_session_that_dies_is_reopened_for_the_rest_of_the_batch():
    opened = []

    class Dying(_SyntheticSession):
        def run(self, handle, runs, min_time_ms, settle_runs=0):
            if handle == "crasher":
                raise MeasureError("worker died", status="crash", fatal_for_session=True)
            return super().run(handle, runs, min_time_ms)

    def open_session():
        opened.append(1)
        return Dying([])

    protocol = MeasurementProtocol(rounds=5, max_remeasures=0)
    first, crasher, last = run_round_robin(open_session, ["a", "crasher", "c"], protocol)
    assert crasher.error.status == "crash" and len(opened) == 2
    assert len(first.rounds) == 5 and len(last.rounds) == 5


def test_rounds_are_spread_over_min_batch_s_and_remeasures_run_back_to_back():
    """Round r starts no earlier than r / rounds of ``min_batch_s`` after the batch began (lower bounds only:
    sleeping never ends early); the re-measure pass of the unstable model does not wait."""
    starts = []

    class Clocked(_SyntheticSession):
        def run(self, handle, runs, min_time_ms, settle_runs=0):
            starts.append((handle, time.monotonic()))
            return super().run(handle, runs, min_time_ms)

    protocol = MeasurementProtocol(rounds=4, max_median_ci=0.02, max_remeasures=1, min_batch_s=0.4)
    steady, noisy = run_round_robin(lambda: Clocked([]), ["steady", "noisy"], protocol)
    assert len(steady.rounds) == 4 and len(noisy.rounds) == 8
    slack = 0.005  # round 0's first run starts a little after its pass did
    first_pass = [t for h, t in starts[:8:2]]  # the steady model's round starts
    assert all(first_pass[r] - first_pass[0] >= r * 0.1 - slack for r in range(4))
    remeasure = [t for h, t in starts[8:]]
    assert len(remeasure) == 4 and remeasure[3] - remeasure[0] < 0.3 - slack


def test_whole_models_are_paced_and_pacing_does_not_change_the_key():
    protocol = MeasurementProtocol(whole_model_batch_s=30.0)
    assert protocol.min_batch_s == 0.0 and protocol.for_whole_models().min_batch_s == 30.0
    assert MeasurementProtocol(min_batch_s=60.0).for_whole_models().min_batch_s == 60.0
    assert protocol.for_whole_models().key() == protocol.key() == MeasurementProtocol(min_batch_s=5.0).key()


def test_protocol_key_ignores_batching_only():
    base = MeasurementProtocol()
    assert base.key() == MeasurementProtocol(batch_size=4, cooldown_s=1.0).key()
    assert base.key() != MeasurementProtocol(rounds=41).key()


def test_protocol_key_changes_with_the_statistic_and_settling_and_keeps_the_default_key():
    assert MeasurementProtocol(statistic="min").key() != MeasurementProtocol(statistic="median").key()
    assert MeasurementProtocol(settle_runs=16).key() != MeasurementProtocol(settle_runs=0).key()
    # the default protocol's key, under which stores hold their measurements
    assert MeasurementProtocol().key() == "3f5a0ddf4d2d"

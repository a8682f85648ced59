"""Evaluation metrics and the FLOPs-linear baseline on known numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnmeter.evaluation import (
    FLOPS_LINEAR,
    NNMETER,
    EvaluationResult,
    Metrics,
    ModelEvaluation,
    flops_linear_predictions,
    spearman,
)

pytestmark = pytest.mark.unit


def test_metrics_on_known_numbers():
    measured = [10.0, 20.0, 40.0, 80.0]
    predicted = [10.4, 21.8, 36.0, 80.0]  # errors +4 %, +9 %, -10 %, 0 %
    m = Metrics.of(measured, predicted)
    assert m.n == 4
    assert m.within_5 == pytest.approx(0.5)
    assert m.within_10 == pytest.approx(1.0)
    assert m.rmspe == pytest.approx(math.sqrt((0.04**2 + 0.09**2 + 0.10**2 + 0) / 4) * 100)
    assert m.rmse_ms == pytest.approx(math.sqrt((0.4**2 + 1.8**2 + 4.0**2 + 0) / 4))
    assert m.spearman == pytest.approx(1.0)
    assert m.mean_error == pytest.approx((0.04 + 0.09 - 0.10) / 4)


def test_metrics_drop_missing_predictions_and_count_outliers():
    m = Metrics.of([10.0, 10.0, 10.0], [11.5, float("nan"), 10.0])
    assert m.n == 2
    assert m.within_10 == pytest.approx(0.5)
    assert Metrics.of([], []).n == 0


def test_spearman_ties_and_reversal():
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # ties take their average rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3)
    a = np.array([0, 1.5, 1.5, 3]) - 1.5
    b = np.array([0, 1, 2, 3]) - 1.5
    expected = float(a @ b / np.sqrt((a @ a) * (b @ b)))
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(expected)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_flops_linear_is_fitted_without_the_held_out_family():
    # family a lies on 2 ms/GFLOP + 1, family b on 4 ms/GFLOP + 1: each is predicted by the other's line
    flops = [1e9, 2e9, 3e9, 1e9, 2e9, 3e9]
    measured = [3.0, 5.0, 7.0, 5.0, 9.0, 13.0]
    groups = ["a", "a", "a", "b", "b", "b"]
    pred = flops_linear_predictions(flops, measured, groups)
    np.testing.assert_allclose(pred[:3], [5.0, 9.0, 13.0])
    np.testing.assert_allclose(pred[3:], [3.0, 5.0, 7.0])


def test_flops_linear_with_one_family_leaves_one_model_out():
    flops = [1e9, 2e9, 3e9, 4e9]
    measured = [3.0, 5.0, 7.0, 9.0]  # exactly linear: every held-out point is predicted exactly
    pred = flops_linear_predictions(flops, measured, ["x"] * 4)
    np.testing.assert_allclose(pred, measured)
    assert np.isnan(flops_linear_predictions([1e9, 2e9], [1.0, 2.0], ["a", "b"])).all()


def test_result_round_trip_and_metrics_per_family(tmp_path):
    models = (
        ModelEvaluation("m1", "f1", "id1", 10.0, {NNMETER: 10.5, FLOPS_LINEAR: 14.0}, repeat_ms=10.2),
        ModelEvaluation("m2", "f1", "id2", 20.0, {NNMETER: 19.0, FLOPS_LINEAR: 15.0}, repeat_ms=19.0),
        ModelEvaluation("m3", "f2", "id3", 5.0, {NNMETER: 6.0, FLOPS_LINEAR: 5.1}, unsupported=("pad",)),
        ModelEvaluation("m4", "f2", "id4", None, {}, error="measurement failed: timeout"),
    )
    result = EvaluationResult(models, device={"device": "local:test"}, notes={FLOPS_LINEAR: "fit"})
    path = tmp_path / "evaluation.json"
    result.save(path)
    loaded = EvaluationResult.load(path)
    assert loaded == result
    assert len(loaded.scored) == 3
    assert loaded.metrics(NNMETER, "f1").within_10 == pytest.approx(1.0)
    assert loaded.metrics(NNMETER, "f2").within_10 == pytest.approx(0.0)
    assert loaded.metrics(FLOPS_LINEAR).within_10 == pytest.approx(1 / 3)
    assert loaded.repeatability().n == 2
    assert loaded.repeatability().within_5 == pytest.approx(1.0)
    assert loaded.methods == [NNMETER, FLOPS_LINEAR]


def test_unsteady_ground_truth_is_said_when_too_few_models_repeat():
    def result(repeats):
        return EvaluationResult(
            tuple(
                ModelEvaluation(f"m{i}", "f", f"id{i}", 1.0, {NNMETER: 1.0}, repeat_ms=r) for i, r in enumerate(repeats)
            )
        )

    assert result([1.02] * 19 + [1.2]).unsteady_ground_truth() is None  # 95 % agree
    note = result([1.02] * 18 + [1.2, 0.8]).unsteady_ground_truth()  # 90 %
    assert "90.0 %" in note and "--remeasure" in note
    assert result([None] * 3).unsteady_ground_truth() is None  # measured once: nothing to say

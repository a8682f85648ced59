"""Intervals: the split-conformal quantile, kernels' intervals from their held-out configs, the model interval
calibrated on whole models (leave-one-out), the artifact record (bad values refused) and the engine's intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from conftest import synthetic_payload, write_tiny_artifact

from nnmeter.builder.packaging import fit_model_correction
from nnmeter.predictor.artifact import ArtifactError, ModelCorrection, load_artifact
from nnmeter.predictor.engine import load_predictor
from nnmeter.training.metrics import INTERVAL_COVERAGE, conformal_quantile, latency_metrics


@pytest.mark.unit
def test_the_conformal_quantile_is_the_rank_that_guarantees_the_coverage():
    scores = np.arange(1, 21) / 100  # 20 held-out scores: rank ceil(21 * 0.9) = 19
    assert conformal_quantile(scores, 0.9) == pytest.approx(0.19)
    assert conformal_quantile(scores[:9], 0.9) == pytest.approx(0.09)  # 9 scores: the largest
    assert conformal_quantile(scores[:8], 0.9) is None  # too few to hold 90 % of new points
    assert conformal_quantile(scores[::-1], 0.5) == pytest.approx(0.11)


@pytest.mark.unit
def test_held_out_intervals_hold_new_latencies_at_their_coverage():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.05, 5.0, 2200)
    predicted = truth * np.exp(rng.normal(0, 0.08, truth.size))  # a regressor off by ~8 % (log-normal)
    width = latency_metrics(truth[:200], predicted[:200]).interval_log_ratio
    assert width is not None and 0.08 < width < 0.2
    new = np.abs(np.log(predicted[200:] / truth[200:])) <= width
    assert abs(new.mean() - INTERVAL_COVERAGE) < 0.05


@pytest.mark.unit
def test_the_model_interval_is_calibrated_on_whole_models_left_out_one_by_one():
    rng = np.random.default_rng(5)
    n = 40
    weight_mb = rng.uniform(0.5, 20, n)
    kernels_ms = rng.uniform(0.5, 10, n)
    whole_ms = 1.1 * kernels_ms  # the device runs whole models 10 % slower than their kernels' sum
    predicted = kernels_ms * np.exp(rng.normal(0, 0.05, n))  # the regressors' sum, off by ~5 %
    fit = fit_model_correction(weight_mb, whole_ms, kernels_ms, predicted_kernel_sum_ms=predicted)
    assert fit.scale == pytest.approx(1.1, rel=1e-6)
    expected = conformal_quantile(np.abs(np.log(1.1 * predicted / whole_ms)))
    assert fit.interval_log_ratio == pytest.approx(expected, rel=1e-6)
    assert fit_model_correction(weight_mb, whole_ms, kernels_ms).interval_log_ratio is None
    with pytest.raises(ValueError, match="predicted kernel sum"):
        fit_model_correction(weight_mb, whole_ms, kernels_ms, predicted_kernel_sum_ms=predicted[:3])


KERNELS = ("conv-relu6", "global-avgpool", "fc")


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    import keras
    import tensorflow as tf
    from keras import layers

    inp = keras.Input((16, 16, 8), batch_size=1)
    y = layers.ReLU(6.0)(layers.Conv2D(16, 3, strides=2, padding="same")(inp))
    y = layers.Dense(10)(layers.GlobalAveragePooling2D()(y))
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, y)).convert())
    return path


def _write(path, widths, correction=None, coverage=INTERVAL_COVERAGE, kernels=KERNELS):
    payloads = {
        kernel: synthetic_payload(
            kernel, 30, 3, per_byte=0.0, metrics={"interval_log_ratio": widths[kernel]} if widths.get(kernel) else None
        )
        for kernel in kernels
    }
    return write_tiny_artifact(payloads, path, model_correction=correction, interval_coverage=coverage)


@pytest.mark.integration
def test_the_engine_gives_kernel_and_model_intervals_from_the_artifact(tiny_tflite, tmp_path):
    widths = {"conv-relu6": 0.1, "global-avgpool": None, "fc": 0.2}
    correction = ModelCorrection(0.0, 0.0, fitted_on=20, scale=1.05, interval_log_ratio=0.15)
    predictor = load_predictor(_write(tmp_path / "p", widths, correction))
    assert predictor.interval_coverage == INTERVAL_COVERAGE
    result = predictor.predict(tiny_tflite)
    assert [k.kernel for k in result.kernels] == list(KERNELS)
    for row in result.kernels:
        width = widths[row.kernel]
        if width is None:
            assert row.interval_ms is None
        else:
            assert row.interval_ms == pytest.approx((row.ms / math.exp(width), row.ms * math.exp(width)))
    low, high = result.interval_ms
    assert low == pytest.approx(result.latency_ms / math.exp(0.15)) and high == pytest.approx(
        result.latency_ms * math.exp(0.15)
    )
    assert result.to_dict()["interval_ms"] == [low, high]
    # a predictor that states no coverage gives no interval, whatever its records say
    silent = load_predictor(_write(tmp_path / "q", widths, correction, coverage=0.0)).predict(tiny_tflite)
    assert silent.latency_ms == result.latency_ms and silent.interval_ms is None
    assert all(k.interval_ms is None for k in silent.kernels)
    # a model the predictor cannot predict whole has no model interval, its kernels keep theirs
    partial = load_predictor(_write(tmp_path / "r", widths, correction, kernels=KERNELS[:2]))
    left_out = partial.predict(tiny_tflite, strict=False)
    assert left_out.unsupported and left_out.interval_ms is None
    assert left_out.kernels[0].interval_ms == result.kernels[0].interval_ms


@pytest.mark.integration
@pytest.mark.parametrize(
    "where, value, problem",
    [
        ("kernel", -0.1, "interval_log_ratio: -0.1 is not a number"),
        ("kernel", "wide", "interval_log_ratio: wide is not a number"),
        ("correction", float("nan"), "interval_log_ratio: nan is not a number"),
        ("coverage", 1.5, "interval_coverage: 1.5 is not a share"),
    ],
)
def test_a_bad_interval_in_a_manifest_is_refused_naming_it(tmp_path, where, value, problem):
    correction = ModelCorrection(0.0, 0.0, fitted_on=20, interval_log_ratio=0.15)
    path = _write(tmp_path / "p", {"conv-relu6": 0.1}, correction)
    manifest = path / "manifest.yaml"
    data = yaml.safe_load(manifest.read_text())
    if where == "kernel":
        data["kernels"]["conv-relu6"]["metrics"]["interval_log_ratio"] = value
    elif where == "correction":
        data["model_correction"]["interval_log_ratio"] = value
    else:
        data["interval_coverage"] = value
    manifest.write_text(yaml.safe_dump(data))
    with pytest.raises(ArtifactError, match=problem.replace("(", r"\(")):
        load_artifact(path)

"""The whole-model memory correction: its fit on synthetic numbers, the artifact record (optional, old
manifests read as none, bad values refused) and the engine adding it once per model from the weight bytes."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from nnmeter import ops
from nnmeter.builder.packaging import fit_memory_correction
from nnmeter.kernel_gen import sample_configs
from nnmeter.predictor.artifact import ArtifactError, KernelPayload, MemoryCorrection, load_artifact, write_artifact
from nnmeter.predictor.engine import load_predictor, weight_bytes
from nnmeter.predictor.features import feature_matrix, feature_names
from nnmeter.predictor.rules import default_rules

KERNELS = ("conv-bn-relu6", "dwconv-bn-relu6", "global-avgpool", "fc")
#: The tiny model's parameters: conv 3x3x8x16 + 16, depthwise 3x3x16 + 16, dense 16x10 + 10 (bn folded).
TINY_WEIGHT_BYTES = 4 * (3 * 3 * 8 * 16 + 16 + 3 * 3 * 16 + 16 + 16 * 10 + 10)


def test_fit_recovers_slope_and_threshold_of_noise_free_models():
    rng = np.random.default_rng(0)
    weight_mb = np.array([0.5, 1.2, 2.5, 4.0, 7.0, 11.0, 16.0, 23.0, 30.0])
    kernels_ms = rng.uniform(0.3, 8.0, weight_mb.size)
    whole_ms = kernels_ms + 0.03 * np.maximum(0.0, weight_mb - 2.5)
    fit = fit_memory_correction(weight_mb, whole_ms, kernels_ms)
    assert fit.ms_per_mb == pytest.approx(0.03) and fit.threshold_mb == pytest.approx(2.5)
    assert fit.fitted_on == weight_mb.size and fit.residual == pytest.approx(0.0, abs=1e-9)


def test_fit_recovers_slope_within_noise():
    rng = np.random.default_rng(1)
    weight_mb = rng.uniform(0.5, 30.0, 40)
    kernels_ms = rng.uniform(0.5, 8.0, weight_mb.size)
    whole_ms = (kernels_ms + 0.04 * weight_mb) * rng.normal(1.0, 0.02, weight_mb.size)
    fit = fit_memory_correction(weight_mb, whole_ms, kernels_ms)
    assert fit.ms_per_mb == pytest.approx(0.04, rel=0.15) and fit.threshold_mb < 2.0
    assert 0.005 < fit.residual < 0.05


def test_fit_never_makes_models_faster_than_their_kernels():
    weight_mb = np.array([1.0, 5.0, 10.0, 20.0])
    kernels_ms = np.array([1.0, 2.0, 3.0, 4.0])
    fit = fit_memory_correction(weight_mb, kernels_ms * 0.9, kernels_ms)
    assert fit.ms_per_mb == 0.0 and fit.extra_ms(50e6) == 0.0
    with pytest.raises(ValueError):
        fit_memory_correction(weight_mb, [1.0, 0.0, 1.0, 1.0], kernels_ms)


@pytest.fixture(scope="module")
def payloads():
    from sklearn.ensemble import RandomForestRegressor

    from nnmeter.predictor.regressor_format import from_sklearn

    out = {}
    for kernel in KERNELS:
        X = feature_matrix(kernel, sample_configs(kernel, 40, sampler="uniform", seed=0))
        y = 0.005 + X[:, feature_names(kernel).index("FLOPS")] * 2e-9
        forest = RandomForestRegressor(n_estimators=4, random_state=0).fit(X, y)
        out[kernel] = KernelPayload(from_sklearn(forest.estimators_, X.shape[1], aggregation="mean",
                                                 regressor="random-forest"), samples=len(y))
    return out


def _write(payloads, path, **kw):
    return write_artifact(path, name="tiny", version="1", device={"id": "test"}, backend="none", protocol={},
                          rules=default_rules(), kernels=payloads, **kw)


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory):
    import keras
    import tensorflow as tf
    from keras import layers

    inp = keras.Input((16, 16, 8), batch_size=1)
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 3, strides=2, padding="same")(inp)))
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same")(y)))
    y = layers.Dense(10)(layers.GlobalAveragePooling2D()(y))
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, y)).convert())
    return path


def test_engine_adds_the_correction_once_per_model_from_its_weight_bytes(payloads, tflite_file, tmp_path):
    correction = MemoryCorrection(ms_per_mb=100.0, threshold_mb=0.002, fitted_on=12, residual=0.03)
    plain = load_predictor(_write(payloads, tmp_path / "plain", invoke_overhead_ms=0.001)).predict(tflite_file)
    corrected = load_predictor(_write(payloads, tmp_path / "corrected", invoke_overhead_ms=0.001,
                                      memory_correction=correction)).predict(tflite_file)
    assert [k.kernel for k in corrected.kernels] == list(KERNELS)
    assert weight_bytes(corrected.kernels) == TINY_WEIGHT_BYTES
    expected = 100.0 * (TINY_WEIGHT_BYTES / 1e6 - 0.002)
    assert plain.memory_ms == 0.0 and corrected.memory_ms == pytest.approx(expected)
    assert corrected.latency_ms == pytest.approx(plain.latency_ms + expected)
    assert [k.ms for k in corrected.kernels] == [k.ms for k in plain.kernels]  # the kernels stay as predicted
    above = MemoryCorrection(ms_per_mb=100.0, threshold_mb=1.0)  # the tiny model's weights fit the cache
    assert above.extra_ms(TINY_WEIGHT_BYTES) == 0.0


def test_artifact_records_the_correction_and_reads_old_manifests_as_none(payloads, tmp_path):
    old = load_artifact(_write(payloads, tmp_path / "old"))
    assert "memory_correction" not in yaml.safe_load((tmp_path / "old" / "manifest.yaml").read_text())
    assert old.memory_correction is None
    correction = MemoryCorrection(0.034, 3.79, fitted_on=16, residual=0.035)
    assert load_artifact(_write(payloads, tmp_path / "new", memory_correction=correction)).memory_correction \
        == correction
    manifest = tmp_path / "new" / "manifest.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["memory_correction"]["ms_per_mb"] = -1.0
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ArtifactError, match="memory_correction"):
        load_artifact(tmp_path / "new")


def test_weight_bytes_are_the_kernel_cost_params():
    config = {"HW": 8, "CIN": 4, "COUT": 6, "KERNEL_SIZE": 3, "STRIDES": 1}
    row = type("Row", (), {"kernel": "conv-bn-relu", "config": config})()
    assert weight_bytes([row, row]) == 2 * 4 * ops.kernel_cost("conv-bn-relu", config).params == 2 * 4 * (216 + 6)

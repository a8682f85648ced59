"""The whole-model correction: its fit on synthetic numbers (the form chosen by leave-one-out error), the
artifact record (optional, old manifests read as none, bad values refused) and the engine applying it once per
model: a factor on the kernels' sum, a term from the weights its small kernels refetch and one from the weight
bytes."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import synthetic_payload, write_tiny_artifact

from nnmeter import ops
from nnmeter.builder.packaging import fit_model_correction
from nnmeter.predictor.artifact import ArtifactError, ModelCorrection, load_artifact
from nnmeter.predictor.engine import load_predictor, refetched_weight_bytes, weight_bytes

KERNELS = ("conv-bn-relu6", "dwconv-bn-relu6", "global-avgpool", "fc")
#: The tiny model's parameters: conv 3x3x8x16 + 16, depthwise 3x3x16 + 16, dense 16x10 + 10 (bn folded).
TINY_WEIGHT_BYTES = 4 * (3 * 3 * 8 * 16 + 16 + 3 * 3 * 16 + 16 + 16 * 10 + 10)


@pytest.mark.unit
def test_fit_recovers_slope_and_threshold_of_noise_free_models():
    rng = np.random.default_rng(0)
    weight_mb = np.array([0.5, 1.2, 2.5, 4.0, 7.0, 11.0, 16.0, 23.0, 30.0])
    kernels_ms = rng.uniform(0.3, 8.0, weight_mb.size)
    whole_ms = kernels_ms + 0.03 * np.maximum(0.0, weight_mb - 2.5)
    fit = fit_model_correction(weight_mb, whole_ms, kernels_ms)
    assert fit.ms_per_mb == pytest.approx(0.03) and fit.threshold_mb == pytest.approx(2.5)
    assert fit.fitted_on == weight_mb.size and fit.residual == pytest.approx(0.0, abs=1e-9)


@pytest.mark.unit
def test_fit_recovers_slope_within_noise():
    rng = np.random.default_rng(1)
    weight_mb = rng.uniform(0.5, 30.0, 40)
    kernels_ms = rng.uniform(0.5, 8.0, weight_mb.size)
    whole_ms = (kernels_ms + 0.04 * weight_mb) * rng.normal(1.0, 0.02, weight_mb.size)
    fit = fit_model_correction(weight_mb, whole_ms, kernels_ms)
    assert fit.ms_per_mb == pytest.approx(0.04, rel=0.15) and fit.threshold_mb < 2.0
    assert 0.005 < fit.residual < 0.05


@pytest.mark.unit
def test_fit_takes_a_factor_when_models_are_their_kernels_times_a_constant():
    rng = np.random.default_rng(2)
    weight_mb = rng.uniform(0.5, 30.0, 16)
    kernels_ms = rng.uniform(0.2, 8.0, weight_mb.size)
    whole_ms = 1.05 * kernels_ms * rng.normal(1.0, 0.01, weight_mb.size)
    fit = fit_model_correction(weight_mb, whole_ms, kernels_ms)
    assert fit.scale == pytest.approx(1.05, rel=0.01)
    assert fit.residual < 0.02


@pytest.mark.unit
def test_fit_takes_factor_and_weight_term_when_big_models_pay_for_their_weights():
    rng = np.random.default_rng(4)
    weight_mb = np.concatenate([rng.uniform(0.5, 14.0, 16), rng.uniform(40.0, 150.0, 4)])
    kernels_ms = rng.uniform(0.2, 8.0, weight_mb.size)
    whole_ms = (1.04 * kernels_ms + 0.02 * np.maximum(0.0, weight_mb - 10.0)) * rng.normal(1.0, 0.005, weight_mb.size)
    fit = fit_model_correction(weight_mb, whole_ms, kernels_ms)
    assert fit.scale == pytest.approx(1.04, rel=0.02) and fit.ms_per_mb == pytest.approx(0.02, rel=0.2)
    assert fit.residual < 0.02


@pytest.mark.unit
def test_fit_takes_no_correction_when_none_predicts_better_out_of_sample():
    rng = np.random.default_rng(3)
    weight_mb = rng.uniform(0.5, 30.0, 12)
    kernels_ms = rng.uniform(0.2, 8.0, weight_mb.size)
    whole_ms = kernels_ms * rng.normal(1.0, 0.03, weight_mb.size)  # noise around the kernels' sum
    fit = fit_model_correction(weight_mb, whole_ms, kernels_ms)
    assert (fit.scale, fit.ms_per_mb) == (1.0, 0.0)
    with pytest.raises(ValueError):
        fit_model_correction(weight_mb[:4], [1.0, 0.0, 1.0, 1.0], kernels_ms[:4])


@pytest.mark.unit
def test_fit_takes_the_refetch_term_when_small_kernels_pay_for_their_weights_inside_a_model():
    rng = np.random.default_rng(5)
    weight_mb = np.concatenate([rng.uniform(0.5, 14.0, 16), rng.uniform(40.0, 150.0, 4)])
    refetched_mb = weight_mb[:16].tolist() + [0.0] * 4  # the wide models' kernels are bigger than the cache
    refetched_mb = np.array(refetched_mb) * rng.uniform(0.2, 0.9, weight_mb.size)
    kernels_ms = rng.uniform(0.2, 8.0, weight_mb.size)
    whole_ms = (1.05 * kernels_ms + 0.03 * refetched_mb + 0.02 * np.maximum(0.0, weight_mb - 10.0)) * rng.normal(
        1.0, 0.005, weight_mb.size
    )
    fit = fit_model_correction(weight_mb, whole_ms, kernels_ms, refetched_mb, private_cache_mb=2.0)
    assert fit.scale == pytest.approx(1.05, rel=0.02) and fit.ms_per_refetched_mb == pytest.approx(0.03, rel=0.2)
    assert fit.ms_per_mb == pytest.approx(0.02, rel=0.2) and fit.private_cache_mb == 2.0 and fit.residual < 0.02
    # without the device's cache size there is no refetch term to fit: the other forms do what they can
    blind = fit_model_correction(weight_mb, whole_ms, kernels_ms, refetched_mb, private_cache_mb=0.0)
    assert blind.ms_per_refetched_mb == 0.0 and blind.private_cache_mb == 0.0 and blind.residual > fit.residual


@pytest.mark.unit
def test_fit_leaves_the_refetch_term_out_when_it_does_not_predict():
    rng = np.random.default_rng(6)
    weight_mb = rng.uniform(0.5, 14.0, 16)
    kernels_ms = rng.uniform(0.2, 8.0, weight_mb.size)
    whole_ms = 1.05 * kernels_ms * rng.normal(1.0, 0.01, weight_mb.size)
    fit = fit_model_correction(weight_mb, whole_ms, kernels_ms, weight_mb * rng.uniform(0, 1, 16), 2.0)
    assert fit.ms_per_refetched_mb == 0.0 and fit.scale == pytest.approx(1.05, rel=0.01)


@pytest.fixture(scope="module")
def payloads():
    return {kernel: synthetic_payload(kernel, 40, 4, per_byte=0.0) for kernel in KERNELS}


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


@pytest.mark.integration
def test_engine_applies_the_correction_once_per_model(payloads, tflite_file, tmp_path):
    correction = ModelCorrection(ms_per_mb=100.0, threshold_mb=0.002, fitted_on=12, residual=0.03, scale=1.1)
    plain = load_predictor(write_tiny_artifact(payloads, tmp_path / "plain", invoke_overhead_ms=0.001)).predict(
        tflite_file
    )
    corrected = load_predictor(
        write_tiny_artifact(payloads, tmp_path / "corrected", invoke_overhead_ms=0.001, model_correction=correction)
    ).predict(tflite_file)
    assert [k.kernel for k in corrected.kernels] == list(KERNELS)
    assert weight_bytes(corrected.kernels) == TINY_WEIGHT_BYTES
    expected = 1.1 * plain.latency_ms + 100.0 * (TINY_WEIGHT_BYTES / 1e6 - 0.002)
    assert plain.correction_ms == 0.0 and corrected.latency_ms == pytest.approx(expected)
    assert corrected.correction_ms == pytest.approx(expected - plain.latency_ms)
    assert [k.ms for k in corrected.kernels] == [k.ms for k in plain.kernels]  # the kernels stay as predicted
    above = ModelCorrection(ms_per_mb=100.0, threshold_mb=1.0)  # the tiny model's weights fit the cache
    assert above.extra_ms(TINY_WEIGHT_BYTES) == 0.0


@pytest.mark.integration
def test_engine_adds_the_refetch_term_for_the_kernels_that_fit_the_private_cache(payloads, tflite_file, tmp_path):
    plain = load_predictor(write_tiny_artifact(payloads, tmp_path / "plain")).predict(tflite_file)
    # every kernel of the tiny model reads and writes less than 1 MB: all its weights are refetched
    assert refetched_weight_bytes(plain.kernels, 1e6) == TINY_WEIGHT_BYTES
    corrected = load_predictor(
        write_tiny_artifact(
            payloads,
            tmp_path / "refetch",
            model_correction=ModelCorrection(0.0, 0.0, scale=1.0, ms_per_refetched_mb=50.0, private_cache_mb=1.0),
        )
    ).predict(tflite_file)
    assert corrected.correction_ms == pytest.approx(50.0 * TINY_WEIGHT_BYTES / 1e6)
    # working sets (bytes read and written): conv 12.9 + 4.1 KB, depthwise conv 4.7 + 4.1 KB, dense 0.7 KB: a
    # 10 KB cache kept the weights of the depthwise conv and the dense layer standalone, not the conv's
    small = [k for k in plain.kernels if k.kernel != "conv-bn-relu6"]
    assert refetched_weight_bytes(plain.kernels, 10e3) == weight_bytes(small) < TINY_WEIGHT_BYTES


@pytest.mark.unit
def test_artifact_records_the_correction_and_reads_older_manifests(payloads, tmp_path):
    old = load_artifact(write_tiny_artifact(payloads, tmp_path / "old"))
    assert "model_correction" not in yaml.safe_load((tmp_path / "old" / "manifest.yaml").read_text())
    assert old.model_correction is None
    correction = ModelCorrection(
        0.034, 3.79, fitted_on=16, residual=0.035, scale=1.04, ms_per_refetched_mb=0.02, private_cache_mb=2.1
    )
    assert (
        load_artifact(write_tiny_artifact(payloads, tmp_path / "new", model_correction=correction)).model_correction
        == correction
    )
    assert correction.describe() == (
        "kernels x 1.040 + 20.0 us/MB refetched (kernels <= 2.1 MB) + 34.0 us/MB of "
        "weights above 3.8 MB (fitted on 16 calibration models, residual 3.5 %)"
    )
    manifest = tmp_path / "new" / "manifest.yaml"
    data = yaml.safe_load(manifest.read_text())
    weight_term = {
        k: v
        for k, v in data.pop("model_correction").items()
        if k in ("ms_per_mb", "threshold_mb", "fitted_on", "residual")
    }  # an older manifest's keys
    manifest.write_text(yaml.safe_dump({**data, "memory_correction": weight_term}, sort_keys=False))
    assert load_artifact(tmp_path / "new").model_correction == ModelCorrection(0.034, 3.79, 16, 0.035, scale=1.0)
    data["model_correction"] = {**weight_term, "scale": 0.0}
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ArtifactError, match="model_correction"):
        load_artifact(tmp_path / "new")


@pytest.mark.unit
def test_weight_bytes_are_the_kernel_cost_params():
    config = {"HW": 8, "CIN": 4, "COUT": 6, "KERNEL_SIZE": 3, "STRIDES": 1}
    row = type("Row", (), {"kernel": "conv-bn-relu", "config": config})()
    assert weight_bytes([row, row]) == 2 * 4 * ops.kernel_cost("conv-bn-relu", config).params == 2 * 4 * (216 + 6)

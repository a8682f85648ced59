"""Kernel regressors on synthetic data with known structure, and their portable tree format."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from nnmeter.predictor.features import (
    feature_matrix,
    feature_names,
    half_tile_chosen,
    half_tile_feature,
    kernel_features,
)
from nnmeter.predictor.regressor_format import RegressorFormatError, load_ensemble, save_ensemble
from nnmeter.training import (
    BASELINE_REGRESSOR,
    DEFAULT_REGRESSOR,
    REGRESSORS,
    KernelTrainingSettings,
    latency_metrics,
    make_regressor,
)

pytestmark = pytest.mark.unit

KERNEL = "conv-bn-relu"


def _configs(rng: np.random.Generator, n: int) -> list[dict]:
    return [
        dict(
            HW=int(rng.choice([7, 14, 28, 56])),
            CIN=int(rng.integers(8, 257)),
            COUT=int(rng.integers(8, 257)),
            KERNEL_SIZE=int(rng.choice([1, 3, 5])),
            STRIDES=int(rng.choice([1, 2])),
        )
        for _ in range(n)
    ]


def _latency(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A roofline-like law: overhead + compute (1x1 convs run at 2/3 the speed) + memory, 1 % noise."""
    col = {name: X[:, i] for i, name in enumerate(feature_names(KERNEL))}
    flops, bytes_moved, ksize = col["FLOPS"], col["BYTES_READ"] + col["BYTES_WRITTEN"], col["KERNEL_SIZE"]
    return (0.01 + flops / 2e10 * np.where(ksize == 1, 1.5, 1.0) + bytes_moved / 4e9) * rng.lognormal(0, 0.01, len(X))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    X_train = feature_matrix(KERNEL, _configs(rng, 300))
    X_test = feature_matrix(KERNEL, _configs(rng, 200))
    return X_train, _latency(X_train, rng), X_test, _latency(X_test, rng)


def test_default_recovers_known_structure(data):
    X_train, y_train, X_test, y_test = data
    predicted = make_regressor(DEFAULT_REGRESSOR, KERNEL).fit(X_train, y_train).predict(X_test)
    metrics = latency_metrics(y_test, predicted)
    assert metrics.acc10 >= 0.95, metrics
    assert metrics.rmspe < 6.0, metrics


def test_default_extrapolates_beyond_training_latencies(data):
    """A forest on raw latency cannot predict past its largest training value; the cost-ratio model can."""
    X_train, y_train, X_test, y_test = data
    small = y_train < np.quantile(y_train, 0.7)
    large = y_test > y_train[small].max() * 1.5
    assert large.sum() >= 10
    default = make_regressor(DEFAULT_REGRESSOR, KERNEL).fit(X_train[small], y_train[small])
    baseline = make_regressor(BASELINE_REGRESSOR, KERNEL).fit(X_train[small], y_train[small])
    assert baseline.predict(X_test[large]).max() <= y_train[small].max() + 1e-12
    assert latency_metrics(y_test[large], default.predict(X_test[large])).mape < 25


def test_default_learns_the_gemm_tile_of_a_dense_conv(tmp_path):
    """Latency that follows 4 x 16 tiles: the base finds that shape, and the stored regressor keeps it."""
    rng = np.random.default_rng(2)
    configs = [
        dict(
            HW=int(rng.choice([3, 7, 14, 28])),
            CIN=int(rng.integers(8, 300)),
            COUT=int(rng.integers(1, 80)),
            KERNEL_SIZE=int(rng.choice([1, 3])),
            STRIDES=1,
        )
        for _ in range(300)
    ]
    X = feature_matrix(KERNEL, configs)
    m, n, k = (X[:, feature_names(KERNEL).index(c)] for c in ("GEMM_M", "GEMM_N", "GEMM_K"))
    tiles = np.ceil(m / 4) * np.ceil(n / 16)
    y = 0.002 + tiles * 64 * k * 1e-8 + tiles * 2e-6
    regressor = make_regressor(DEFAULT_REGRESSOR, KERNEL).fit(X[:200], y[:200])
    assert regressor.base_.tile == (4, 16)
    stored = load_ensemble(save_ensemble(regressor.to_ensemble(), tmp_path / "conv.npz"))
    assert stored.base.tile == (4, 16)
    np.testing.assert_allclose(stored.predict(X[200:]), regressor.predict(X[200:]), rtol=1e-12)
    assert latency_metrics(y[200:], stored.predict(X[200:])).acc5 >= 0.95
    with np.load(tmp_path / "conv.npz") as arrays:  # a header whose tile would divide by zero
        members = {name: arrays[name] for name in arrays.files if name != "header"}
        header = json.loads(str(arrays["header"]))
    header["base"]["tile"] = [0, 16]
    np.savez(tmp_path / "bad-tile.npz", header=np.array(json.dumps(header)), **members)
    with pytest.raises(RegressorFormatError, match="bad header.*tile"):
        load_ensemble(tmp_path / "bad-tile.npz")


@pytest.mark.parametrize(
    ("columns", "half"),
    [
        (8, True),  # fewer columns than the wide tile
        (614, True),
        (673, True),
        (657, True),  # 1-6 of 16 in the last tile: the half tile pads fewer
        (683, False),
        (746, False),  # 10-11 of 16: the wide tile pads fewer
        (600, True),
        (824, False),
        (872, False),  # a multiple of 8: switch only while 8 padded columns are > 1 %
        (1014, False),
        (1185, True),  # 10 padded of 1014 is < 1 %, 15 of 1185 is > 1 %
    ],
)
def test_half_tile_rule_matches_xnnpack_on_measured_layers(columns, half):
    """On tflite-local (AVX2, 16/8-wide micro-kernels) these 1x1 convs on 1x1 maps ran 1.9x slower per weight
    exactly where XNNPACK's rule picks the half-width micro-kernel (docs/design-notes.md)."""
    assert half_tile_chosen(columns, 16) is half
    assert kernel_features("conv-bn-relu", dict(CIN=500, COUT=columns, HW=1, KERNEL_SIZE=1, STRIDES=1))[
        feature_names("conv-bn-relu").index(half_tile_feature(16))
    ] == float(half)
    assert (
        kernel_features("conv-bn-relu", dict(CIN=500, COUT=columns, HW=2, KERNEL_SIZE=1, STRIDES=1))[
            feature_names("conv-bn-relu").index(half_tile_feature(16))
        ]
        == 0.0
    )  # a GEMM, not a fully connected layer


@pytest.mark.parametrize("kernel", ["conv-bn-relu", "fc"])
def test_default_learns_the_half_width_tile_of_a_fully_connected_layer(kernel, tmp_path):
    """A matrix-vector product (an fc, a 1x1 conv on a 1x1 map) whose time follows 1 x 16 tiles, 1 x 8 ones
    where XNNPACK's rule switches the layer to its half-width micro-kernel, each as slow as a wide one (as
    measured on tflite-local, AVX2): the base finds the tile and the switch, and the stored regressor keeps
    them."""
    rng = np.random.default_rng(3)
    configs = [
        dict(CIN=int(rng.integers(16, 1024)), COUT=int(rng.integers(16, 2048)))
        | (dict(HW=1, KERNEL_SIZE=1, STRIDES=1) if kernel != "fc" else {})
        for _ in range(450)
    ]
    X = feature_matrix(kernel, configs)
    cin, cout = (X[:, feature_names(kernel).index(c)] for c in ("CIN", "COUT"))
    half = np.array([half_tile_chosen(int(n), 16) for n in cout])
    assert 0.2 < half.mean() < 0.8  # both kinds of layer in the training set
    y = (0.001 + cin * np.where(half, np.ceil(cout / 8), np.ceil(cout / 16)) * 16 * 4e-9) * rng.lognormal(
        0, 0.01, len(X)
    )
    regressor = make_regressor(DEFAULT_REGRESSOR, kernel).fit(X[:250], y[:250])
    assert regressor.base_.tile[1] == 16
    assert regressor.base_.half_tile_column == feature_names(kernel).index(half_tile_feature(16))
    stored = load_ensemble(save_ensemble(regressor.to_ensemble(), tmp_path / "fc.npz"))
    assert stored.base == regressor.base_
    assert latency_metrics(y[250:], stored.predict(X[250:])).acc10 >= 0.98


def test_default_learns_a_slow_last_row_tile():
    """A conv 1.4x slower when its last 7-row tile of output pixels holds 1-3 of them (XNNPACK then runs the
    layer on a shorter micro-kernel): the row-tail feature lets the trees find that, whatever the pixel count."""
    rng = np.random.default_rng(4)
    configs = [
        dict(
            HW=int(rng.integers(1, 33)),
            CIN=int(rng.integers(16, 512)),
            COUT=int(rng.integers(16, 512)),
            KERNEL_SIZE=int(rng.choice([1, 3])),
            STRIDES=1,
        )
        for _ in range(450)
    ]
    X = feature_matrix(KERNEL, configs)
    m, n, k = (X[:, feature_names(KERNEL).index(c)] for c in ("GEMM_M", "GEMM_N", "GEMM_K"))
    y = (0.001 + m * n * k * 1e-9) * np.where((m - 1) % 7 < 3, 1.4, 1.0) * rng.lognormal(0, 0.01, len(X))
    predicted = make_regressor(DEFAULT_REGRESSOR, KERNEL).fit(X[:250], y[:250]).predict(X[250:])
    assert latency_metrics(y[250:], predicted).acc10 >= 0.95  # without the feature: 34-44 % (seeds 4-6)


@pytest.mark.parametrize("name", sorted(REGRESSORS))
def test_tree_format_reproduces_scikit_learn_exactly(name, data, tmp_path):
    X_train, y_train, X_test, _ = data
    regressor = make_regressor(name, KERNEL).fit(X_train, y_train)
    path = save_ensemble(regressor.to_ensemble(), tmp_path / f"{name}.npz")
    loaded = load_ensemble(path)
    assert loaded.regressor == name
    np.testing.assert_array_equal(loaded.predict(X_test), regressor.predict(X_test))
    np.testing.assert_array_equal(loaded.predict(X_train[:1]), regressor.predict(X_train[:1]))


def test_format_refuses_pickle_and_damage(data, tmp_path):
    X_train, y_train, _, _ = data
    regressor = make_regressor("nn-meter-rf", KERNEL).fit(X_train[:40], y_train[:40])
    pickled = tmp_path / "model.npz"
    pickled.write_bytes(pickle.dumps(regressor))
    with pytest.raises(RegressorFormatError, match="pickle"):
        load_ensemble(pickled)
    good = save_ensemble(regressor.to_ensemble(), tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RegressorFormatError, match="damaged"):
        load_ensemble(truncated)
    object_array = tmp_path / "objects.npz"
    with np.load(good) as arrays:  # every array as it should be, but the header is an object array (pickle)
        members = {name: arrays[name] for name in arrays.files if name != "header"}
    np.savez(object_array, header=np.array([{"format": "nnmeter-trees"}], dtype=object), **members)
    with pytest.raises(RegressorFormatError, match="refused"):
        load_ensemble(object_array)


def test_bad_training_data_is_refused():
    regressor = make_regressor(DEFAULT_REGRESSOR, "fc")
    X = feature_matrix("fc", [{"CIN": 16, "COUT": 32}])
    with pytest.raises(ValueError, match="at least 2 samples"):
        regressor.fit(X, [0.1])
    X2 = feature_matrix("fc", [{"CIN": 16, "COUT": 32}, {"CIN": 32, "COUT": 32}])
    with pytest.raises(ValueError, match="positive"):
        regressor.fit(X2, [0.1, 0.0])
    with pytest.raises(ValueError, match="columns"):
        regressor.fit(X2[:, :3], [0.1, 0.2])
    with pytest.raises(ValueError, match="not a regressor; known"):
        make_regressor("svm", "fc")


def test_metrics_split_fast_kernels():
    m = latency_metrics([0.01, 0.02, 1.0, 2.0], [0.013, 0.02, 1.04, 2.5])
    assert m.n == 4 and m.fast == 2
    assert m.acc10 == 0.5 and m.acc10_fast == 0.5 and m.acc10_slow == 0.5
    assert m.acc5 == 0.5
    assert latency_metrics([1.0], [1.0]).acc10_fast is None


def test_campaign_regressor_choices_are_the_registered_regressors():
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(KernelTrainingSettings)}["regressor"]
    assert set(field.metadata["choices"]) == set(REGRESSORS)
    assert KernelTrainingSettings().regressor == DEFAULT_REGRESSOR

"""The engine with a real predictor artifact (random forests fitted on synthetic kernel latencies):
per-kernel rows, batching, coverage, strict errors, the registry, the CLI, and a TensorFlow-free
cold start for .tflite files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import synthetic_latency

import nnmeter
from nnmeter import ops
from nnmeter.errors import NnmeterError
from nnmeter.kernel_gen import sample_configs
from nnmeter.predictor.engine import UnsupportedModelError, load_predictor
from nnmeter.predictor.features import feature_matrix

pytestmark = pytest.mark.integration

NNMETER_IR = Path("/work/shared/testdata/nnmeter-ir/mobilenetv3small_0.json")
LEFT_OUT = "hswish"  # the artifact has no regressor for a lone hswish


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    from sklearn.ensemble import RandomForestRegressor

    from nnmeter.predictor.artifact import KernelPayload, write_artifact
    from nnmeter.predictor.regressor_format import from_sklearn
    from nnmeter.predictor.rules import default_rules

    payloads = {}
    for kernel in ops.KERNELS:
        if kernel == LEFT_OUT:
            continue
        X = feature_matrix(kernel, sample_configs(kernel, 150, sampler="uniform", seed=0))
        y = synthetic_latency(kernel, X)
        forest = RandomForestRegressor(n_estimators=8, random_state=0).fit(X, y)
        payloads[kernel] = KernelPayload(
            from_sklearn(forest.estimators_, X.shape[1], aggregation="mean", regressor="random-forest"), samples=len(y)
        )
    out = tmp_path_factory.mktemp("predictors") / "synthetic"
    return write_artifact(
        out,
        name="synthetic",
        version="1",
        device={"id": "synthetic"},
        backend="none",
        protocol={},
        rules=default_rules(),
        kernels=payloads,
    )


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory):
    import keras
    import tensorflow as tf
    from keras import layers

    inp = keras.Input((16, 16, 8), batch_size=1)
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 3, strides=2, padding="same")(inp)))
    y = layers.ReLU(6.0)(layers.DepthwiseConv2D(3, padding="same")(y))
    y = layers.Dense(10)(layers.GlobalAveragePooling2D()(y))
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, y)).convert())
    return path


def test_predict_rows_are_the_artifacts_predictions(artifact_dir, tflite_file):
    predictor = nnmeter.load_predictor(artifact_dir)
    result = predictor.predict(tflite_file)
    assert [r.kernel for r in result.kernels] == ["conv-bn-relu6", "dwconv-bn-relu6", "global-avgpool", "fc"]
    for row in result.kernels:
        expected = predictor.artifact.predict(row.kernel, feature_matrix(row.kernel, [row.config]))[0]
        assert row.ms == pytest.approx(expected) and row.ms > 0
        assert row.features == feature_matrix(row.kernel, [row.config])[0].tolist()
    assert result.latency_ms == pytest.approx(sum(r.ms for r in result.kernels))
    assert result.coverage == 1.0 and not result.unsupported
    json.dumps(result.to_dict())  # plain values only


def test_invoke_overhead_is_taken_off_every_kernel_and_paid_once_per_model(artifact_dir, tflite_file):
    plain = load_predictor(artifact_dir).predict(tflite_file)

    class WithOverhead:  # the same regressors, measured on a device with a fixed cost per invocation
        def __init__(self, artifact, overhead):
            self.rules, self.kernels, self.predict = artifact.rules, artifact.kernels, artifact.predict
            self.invoke_overhead_ms = overhead

    small = min(r.ms for r in plain.kernels)
    result = load_predictor(WithOverhead(load_predictor(artifact_dir).artifact, small)).predict(tflite_file)
    assert [r.ms for r in result.kernels] == pytest.approx([r.ms - small for r in plain.kernels])
    assert min(r.ms for r in result.kernels) == 0.0  # never below zero
    assert result.latency_ms == pytest.approx(plain.latency_ms - (len(plain.kernels) - 1) * small)


def test_predict_many_equals_a_loop_of_predict(artifact_dir, tflite_file):
    predictor = load_predictor(artifact_dir)
    raw = json.loads(NNMETER_IR.read_text())
    models = [tflite_file, NNMETER_IR, raw, tflite_file]
    batched = predictor.predict_many(models, strict=False)
    single = [predictor.predict(m, strict=False) for m in models]
    assert [r.to_dict() for r in batched] == [r.to_dict() for r in single]
    assert batched[1].latency_ms == batched[2].latency_ms > batched[0].latency_ms


def test_strict_names_unsupported_ops_and_partial_sum_lists_them(artifact_dir):
    predictor = load_predictor(artifact_dir)
    with pytest.raises(UnsupportedModelError) as err:
        predictor.predict(NNMETER_IR)
    message = str(err.value)
    assert "hswish" in message and "SE/" not in message.split("(ops")[0]
    assert "no regressor for hswish" in message and "strict=False" in message
    result = predictor.predict(NNMETER_IR, strict=False)
    assert {u.ops for u in result.unsupported} == {LEFT_OUT}
    assert all(len(u.nodes) == 1 for u in result.unsupported)
    assert 0 < result.coverage < 1
    assert result.latency_ms == pytest.approx(sum(r.ms for r in result.kernels))


def test_unknown_predictor_name_lists_installed(artifact_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("NNMETER_PREDICTORS_PATH", str(artifact_dir.parent))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert load_predictor("synthetic").name == "synthetic"  # found by name
    with pytest.raises(NnmeterError, match=r"no predictor 'nope'.*installed: synthetic@1"):
        load_predictor("nope")


def test_cold_start_does_not_import_tensorflow(artifact_dir, tflite_file):
    code = (
        "import sys, nnmeter\n"
        f"r = nnmeter.load_predictor({str(artifact_dir)!r}).predict({str(tflite_file)!r})\n"
        "assert r.latency_ms > 0\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'onnx', 'torch') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.stdout.strip() == "none", out.stdout + out.stderr


def test_cli_predict_and_ir(artifact_dir, tflite_file, tmp_path, capsys):
    from nnmeter.cli import main

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "a.tflite").write_bytes(tflite_file.read_bytes())
    assert (
        main(["predict", "--predictor", str(artifact_dir), str(folder), str(NNMETER_IR), "--json", "--no-strict"]) == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["model"] for d in lines] == ["a", "mobilenetv3small_0"]
    assert lines[0]["latency_ms"] == pytest.approx(load_predictor(artifact_dir).predict(tflite_file).latency_ms)
    assert main(["predict", "--predictor", str(artifact_dir), str(NNMETER_IR)]) == 2
    assert "hswish" in capsys.readouterr().err
    assert main(["ir", str(tflite_file), "-o", str(tmp_path / "g.json")]) == 0
    assert "nodes (conv 1" in capsys.readouterr().out
    graph = json.loads((tmp_path / "g.json").read_text())
    assert graph["format"] == "nnmeter-ir" and [n["op"] for n in graph["nodes"]][:2] == ["conv", "relu6"]
    assert main(["predict", "--predictor", str(artifact_dir), str(tmp_path / "g.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] == pytest.approx(lines[0]["latency_ms"])
    assert main(["predict", "--predictor", str(artifact_dir), str(tflite_file), "--input-shape", "1,x"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_a_pinned_digest_is_checked_before_predicting(artifact_dir, tflite_file, capsys):
    from nnmeter.cli import main
    from nnmeter.predictor.artifact import ArtifactError, artifact_digest

    digest = artifact_digest(artifact_dir)
    assert load_predictor(artifact_dir, sha256=digest).predict(tflite_file).latency_ms > 0
    with pytest.raises(ArtifactError, match=f"predictor digest {digest} is not the expected {'0' * 64}"):
        load_predictor(artifact_dir, sha256="0" * 64)
    loaded = load_predictor(artifact_dir).artifact  # an artifact already loaded is checked too
    assert load_predictor(loaded, sha256=digest.upper()).artifact is loaded
    with pytest.raises(ArtifactError, match="is not the expected"):
        load_predictor(loaded, sha256="0" * 64)
    assert main(["predict", "--predictor", str(artifact_dir), str(tflite_file), "--sha256", digest, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] > 0
    assert main(["predict", "--predictor", str(artifact_dir), str(tflite_file), "--sha256", "0" * 64]) == 2
    assert f"predictor digest {digest} is not the expected" in capsys.readouterr().err

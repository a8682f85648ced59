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


def _keras_tiny():
    import keras
    from keras import layers

    inp = keras.Input((16, 16, 8), batch_size=1)
    y = layers.ReLU(6.0)(layers.Conv2D(16, 3, strides=2, padding="same")(inp))
    y = layers.ReLU(6.0)(layers.DepthwiseConv2D(3, padding="same")(y))
    return keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling2D()(y)))


@pytest.fixture(scope="module")
def quantized_tflite(tmp_path_factory):
    """The same tiny model as TFLite writes it fully int8, with int8 weights only, and with float16 weights."""
    import numpy as np
    import tensorflow as tf

    model = _keras_tiny()
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("quantized")

    def write(name, **settings):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        for key, value in settings.items():
            setattr(converter, key, value)
        path = out / f"{name}.tflite"
        path.write_bytes(converter.convert())
        return path

    def samples():
        for _ in range(8):
            yield [rng.standard_normal((1, 16, 16, 8)).astype(np.float32)]

    full = write(
        "int8",
        optimizations=[tf.lite.Optimize.DEFAULT],
        representative_dataset=samples,
        inference_input_type=tf.int8,
        inference_output_type=tf.int8,
    )
    spec = tf.lite.TargetSpec(supported_types=[tf.float16])
    return {
        "float32": write("float32"),
        "int8": full,
        "int8-float-io": write(
            "int8-float-io", optimizations=[tf.lite.Optimize.DEFAULT], representative_dataset=samples
        ),
        "int8-weights": write("dynamic", optimizations=[tf.lite.Optimize.DEFAULT]),
        "float16": write("float16", optimizations=[tf.lite.Optimize.DEFAULT], target_spec=spec),
    }


@pytest.mark.parametrize(
    "kind, precision",
    [("int8", "int8"), ("int8-float-io", "int8"), ("int8-weights", "int8"), ("float16", "float16")],
)
def test_a_quantized_tflite_is_refused_naming_its_precision_never_predicted_as_float(
    artifact_dir, quantized_tflite, kind, precision
):
    predictor = load_predictor(artifact_dir)
    assert predictor.precisions == ("float32",)
    float_kernels = [r.kernel for r in predictor.predict(quantized_tflite["float32"]).kernels]
    with pytest.raises(UnsupportedModelError) as err:
        predictor.predict(quantized_tflite[kind])
    message = str(err.value)
    assert f"computes in {precision} at" in message and "float32 kernels only" in message
    graph = nnmeter.predictor.to_graph(quantized_tflite[kind])
    quantized = [n.name for n in graph.nodes.values() if n.precision == precision]
    assert quantized and quantized[0] in message
    result = predictor.predict(quantized_tflite[kind], strict=False)
    left_out = {n for u in result.unsupported for n in u.nodes}
    assert set(quantized) <= left_out
    assert all(precision in u.reason for u in result.unsupported if set(u.nodes) <= set(quantized))
    assert not any(set(r.nodes) & set(quantized) for r in result.kernels)
    if kind in ("int8", "int8-float-io"):  # every op computes in int8
        assert result.kernels == [] and len(float_kernels) == 4
        assert all(n.precision == "int8" for n in graph.nodes.values())
    if kind == "int8-float-io":  # the quantize of the input and the dequantize of the output are nodes too
        assert {"QUANTIZE", "DEQUANTIZE"} <= {n.op for n in graph.nodes.values()}


def test_an_onnx_qdq_model_is_refused_naming_int8(artifact_dir, tmp_path):
    import numpy as np
    import onnx
    import tf2onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    model = _keras_tiny()
    proto, _ = tf2onnx.convert.from_keras(
        model, inputs_as_nchw=[model.inputs[0].name], output_path=str(tmp_path / "float.onnx")
    )
    name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{name: rng.standard_normal((1, 8, 16, 16)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Reader(), weight_type=QuantType.QInt8)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "qdq.onnx")).graph.node)
    predictor = load_predictor(artifact_dir)
    assert predictor.predict(tmp_path / "float.onnx").kernels
    with pytest.raises(UnsupportedModelError, match=r"computes in (u?int8 and )?u?int8 at .*float32 kernels only"):
        predictor.predict(tmp_path / "qdq.onnx")
    graph = nnmeter.predictor.to_graph(tmp_path / "qdq.onnx")
    convs = [n for n in graph.nodes.values() if n.op in (ops.CONV, ops.DWCONV, ops.FC)]
    assert convs and all(n.precision in ("int8", "uint8") for n in convs)


def test_a_nodes_precision_survives_ir_json_and_a_bad_one_is_refused(quantized_tflite, tmp_path):
    graph = nnmeter.predictor.to_graph(quantized_tflite["int8"])
    path = graph.save(tmp_path / "int8.json")
    again = nnmeter.predictor.to_graph(path)
    assert [n.precision for n in again.nodes.values()] == [n.precision for n in graph.nodes.values()]
    data = json.loads(path.read_text())
    data["nodes"][0]["precision"] = "int7"
    path.write_text(json.dumps(data))
    with pytest.raises(NnmeterError, match=r"precision 'int7' is not one of float32"):
        nnmeter.predictor.to_graph(path)

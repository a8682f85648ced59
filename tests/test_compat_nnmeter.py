"""Moving from nn-Meter (nnmeter.compat): pickles read without running them, imported predictors, nn-Meter's calls,
and the same numbers as nn-Meter itself (run in its own virtual environment)."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
from pathlib import Path

import nnmeter_reference  # nn-Meter's side of the comparison (tests/nnmeter_reference.py)
import numpy as np
import pytest

from nnmeter.compat import nn_meter
from nnmeter.compat.nnmeter_detection import NnMeterRules, nn_meter_kernels
from nnmeter.compat.nnmeter_format import NN_METER_FEATURES, NN_METER_RULES, import_nnmeter
from nnmeter.compat.predictor import load_compat, load_predictor
from nnmeter.compat.unpickle import UnsafePickleError, forest_to_ensemble, read_forest
from nnmeter.errors import NnmeterError
from nnmeter.predictor.artifact import ArtifactError, read_manifest

NNMETER_IR = Path("/work/shared/testdata/nnmeter-ir/mobilenetv3small_0.json")
RULES = nnmeter_reference.RULES


# --- nn-Meter IR graphs, written as nn-Meter's TensorFlow converter writes them ------------------------------


class IR:
    """A small nn-Meter IR graph under construction (TensorFlow op types, NHWC shapes)."""

    def __init__(self, hw: int = 32, cin: int = 8) -> None:
        self.nodes: dict[str, dict] = {}
        self.last = self.add("input", "Placeholder", [], [1, hw, hw, cin], [])

    def add(
        self, name: str, op: str, inputs: list[str], out: list[int], in_shapes: list[list[int]] | None = None, **attr
    ) -> str:
        shapes = in_shapes if in_shapes is not None else [self.shape(i) for i in inputs]
        self.nodes[name] = {
            "inbounds": list(inputs),
            "attr": {"name": name, "type": op, "attr": attr, "input_shape": shapes, "output_shape": [out]},
            "outbounds": [],
        }
        self.last = name
        return name

    def scalar(self, name: str, value: float) -> str:
        """A scalar constant, as nn-Meter's converter keeps it (a Const node)."""
        self.nodes[name] = {
            "inbounds": [],
            "attr": {
                "name": name,
                "type": "Const",
                "attr": {"constant": [value]},
                "input_shape": [],
                "output_shape": [[]],
            },
            "outbounds": [],
        }
        return name

    def with_scalar(self, name: str, op: str, x: str, value: float) -> str:
        """``x op value`` (Add, Mul) with the scalar as a Const input."""
        return self.add(name, op, [x, self.scalar(f"{name}/y", value)], self.shape(x), [self.shape(x), []])

    def finish(self) -> dict:
        """The graph, with each node's consumers listed (``outbounds``) as nn-Meter's converter writes them."""
        for name, node in self.nodes.items():
            for i in node["inbounds"]:
                self.nodes[i]["outbounds"].append(name)
        return self.nodes

    def shape(self, name: str) -> list[int]:
        return self.nodes[name]["attr"]["output_shape"][0]

    def conv(self, name: str, x: str, cout: int, k: int = 3, s: int = 1, dw: bool = False) -> str:
        _, hw, _, cin = self.shape(x)
        out = [1, -(-hw // s), -(-hw // s), cin if dw else cout]
        op = "DepthwiseConv2dNative" if dw else "Conv2D"
        weights = [k, k, cin, 1 if dw else cout]
        return self.add(name, op, [x], out, strides=[s, s], kernel_shape=[k, k], weight_shape=weights)

    def unary(self, name: str, op: str, x: str) -> str:
        return self.add(name, op, [x], self.shape(x))

    def hswish(self, name: str, x: str) -> str:
        add = self.with_scalar(f"{name}/add", "Add", x, 3.0)
        relu6 = self.unary(f"{name}/Relu6", "Relu6", add)
        mul = self.with_scalar(f"{name}/mul", "Mul", relu6, 1 / 6)
        return self.add(f"{name}/mul_1", "Mul", [x, mul], self.shape(x))

    def se(self, name: str, x: str) -> str:
        _, hw, _, c = self.shape(x)
        pool = self.add(f"{name}/AvgPool", "AvgPool", [x], [1, 1, 1, c], ksize=[hw, hw], strides=[1, 1])
        c1 = self.conv(f"{name}/conv2d/Conv2D", pool, c // 4, k=1)
        b1 = self.unary(f"{name}/conv2d/BiasAdd", "BiasAdd", c1)
        r = self.unary(f"{name}/Relu", "Relu", b1)
        c2 = self.conv(f"{name}/conv2d_1/Conv2D", r, c, k=1)
        b2 = self.unary(f"{name}/conv2d_1/BiasAdd", "BiasAdd", c2)
        add = self.with_scalar(f"{name}/Add_1", "Add", b2, 3.0)
        r6 = self.unary(f"{name}/Relu6", "Relu6", add)
        mul = self.with_scalar(f"{name}/mul", "Mul", r6, 1 / 6)
        return self.add(f"{name}/mul_1", "Mul", [x, mul], self.shape(x))

    def pool(self, name: str, op: str, x: str, k: int, s: int) -> str:
        _, hw, _, c = self.shape(x)
        return self.add(name, op, [x], [1, -(-hw // s), -(-hw // s), c], ksize=[k, k], strides=[s, s])

    def concat(self, name: str, inputs: list[str]) -> str:
        _, hw, _, _ = self.shape(inputs[0])
        return self.add(name, "ConcatV2", inputs, [1, hw, hw, sum(self.shape(i)[3] for i in inputs)], axis=3)

    def head(self, x: str, classes: int = 10) -> str:
        c = self.shape(x)[3]
        mean = self.add("Mean", "Mean", [x], [1, c], [[1, c]], reduction_indices=[1, 2])
        flat = self.add("Reshape", "Reshape", [mean], [-1, c], [[1, c]])
        return self.add("fc/MatMul", "MatMul", [flat], [-1, classes], [[-1, c]])


def mobile_block_graph() -> dict:
    """conv-bn-hswish, dwconv-bn-relu6, SE, a residual add, a MON branch, pools, a concat, a head."""
    g = IR(32, 8)
    x = g.conv("stem/Conv2D", g.last, 16, s=2)
    x = g.unary("stem/bn", "FusedBatchNorm", x)
    x = g.hswish("stem/hswish", x)
    y = g.conv("b1/dw/Conv2D", x, 0, dw=True)
    y = g.unary("b1/dw/bn", "FusedBatchNorm", y)
    y = g.unary("b1/dw/Relu6", "Relu6", y)
    y = g.se("b1/SE", y)
    y = g.conv("b1/pw/Conv2D", y, 16, k=1)
    y = g.unary("b1/pw/bn", "FusedBatchNorm", y)
    x = g.add("b1/add", "Add", [x, y], g.shape(y))
    a = g.conv("b2/a/Conv2D", x, 8, k=1)  # x feeds three ops: the MON rule decides
    b = g.pool("b2/max", "MaxPool", x, 3, 1)
    c = g.pool("b2/avg", "AvgPool", x, 3, 1)
    x = g.concat("b2/concat", [a, b, c])
    x = g.unary("b2/relu", "Relu", x)
    x = g.pool("down", "MaxPool", x, 2, 2)
    g.head(x)
    return g.finish()


def wide_graph() -> dict:
    """A five-input concat, a bn-relu pair, a lone relu6, an add-relu, an fc-relu, and ops nn-Meter skips."""
    g = IR(16, 12)
    x = g.conv("c0/Conv2D", g.last, 24, k=1)
    parts = [g.conv(f"p{i}/Conv2D", x, 4 + 2 * i, k=1 + 2 * (i % 2)) for i in range(5)]
    x = g.concat("cat5", parts)
    x = g.unary("bn", "FusedBatchNorm", x)
    x = g.unary("relu", "Relu", x)
    y = g.unary("relu6", "Relu6", x)
    x = g.add("res", "Add", [x, y], g.shape(y))
    x = g.unary("res/relu", "Relu", x)
    x = g.unary("sm", "Softmax", x)
    x = g.unary("tr", "Transpose", x)
    x = g.head(x, 7)
    g.unary("fc/Relu", "Relu", x)
    return g.finish()


MODELS = {"mobile_block.json": mobile_block_graph, "wide.json": wide_graph}


# --- the reference: nn-Meter in its own virtual environment --------------------------------------------------


@pytest.fixture(scope="session")
def reference_python() -> Path:
    """The Python of nn-Meter's own virtual environment (made once, kept across runs)."""
    return nnmeter_reference.reference_python()


@pytest.fixture(scope="session")
def nn_meter_folders(reference_python, tmp_path_factory) -> dict[str, Path]:
    """nn-Meter predictor folders built by nn-Meter's code and its scikit-learn, one per rules file."""
    root = tmp_path_factory.mktemp("nn-meter-predictors")
    folders = {}
    for seed, (name, rules) in enumerate(RULES.items()):
        rules_file = root / f"{name}.json"
        rules_file.write_text(json.dumps(rules))
        nnmeter_reference.run(reference_python, "build", root / name, rules_file, seed)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="session")
def test_models(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("nn-meter-ir")
    paths = [NNMETER_IR]
    for name, build in MODELS.items():
        paths.append(root / name)
        paths[-1].write_text(json.dumps(build()))
    return paths


@pytest.mark.integration
@pytest.mark.parametrize("rules", list(RULES))
def test_imported_predictor_gives_nn_meters_numbers(rules, nn_meter_folders, test_models, reference_python, tmp_path):
    expected = json.loads(nnmeter_reference.run(reference_python, "predict", nn_meter_folders[rules], *test_models))
    import_nnmeter(nn_meter_folders[rules], tmp_path / "imported", name=f"ref-{rules}")
    predictor = load_compat(tmp_path / "imported")
    for path in test_models:
        result = predictor.predict(path)
        want = expected[path.name]
        assert want["total"] > 0
        assert result.latency_ms == pytest.approx(want["total"], rel=1e-9, abs=0)
        ours = sorted((k.kernel, k.features, k.ms) for k in result.kernels)
        theirs = sorted((k, f, ms) for k, f, ms in want["kernels"])
        assert [(k, f) for k, f, _ in ours] == [(k, f) for k, f, _ in theirs]
        assert np.allclose([ms for *_, ms in ours], [ms for *_, ms in theirs], rtol=1e-9, atol=0)
    skipped = {u.ops for u in predictor.predict(test_models[-1]).unsupported}
    assert {"Softmax"} <= skipped  # nn-Meter leaves it out silently; the result says so


# --- reading pickles without running them ------------------------------------------------------------------


def _forest(seed: int = 0, width: int = 7):
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 100, size=(200, width))
    return RandomForestRegressor(n_estimators=5, max_depth=6, random_state=seed).fit(X, X[:, 0] + X[:, -1] ** 1.5), rng


@pytest.mark.unit
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_forest_read_without_sklearn_objects_predicts_as_sklearn(protocol, tmp_path):
    forest, rng = _forest(protocol)
    path = tmp_path / "conv-bn-relu.pkl"
    path.write_bytes(pickle.dumps(forest, protocol=protocol))
    state = read_forest(path)
    X = rng.uniform(0, 100, size=(64, 7))
    assert state.n_features == 7 and len(state.trees) == 5
    assert np.array_equal(forest_to_ensemble(state).predict(X), forest.predict(X))


class _LegacyPickler(pickle.Pickler):
    """Writes a forest as scikit-learn 0.23 did: tree nodes without ``missing_go_to_left``."""

    def reducer_override(self, obj):
        from sklearn.tree._tree import Tree

        if not isinstance(obj, Tree):
            return NotImplemented
        cls, args, state = obj.__reduce__()
        nodes = state["nodes"]
        names = [n for n in nodes.dtype.names if n != "missing_go_to_left"]
        legacy = np.zeros(len(nodes), dtype=[(n, nodes.dtype.fields[n][0]) for n in names])
        for n in names:
            legacy[n] = nodes[n]
        return cls, args, {**state, "nodes": legacy}


@pytest.mark.unit
def test_scikit_learn_0_2x_layout_is_read(tmp_path):
    forest, rng = _forest(3)
    buffer = io.BytesIO()
    _LegacyPickler(buffer, protocol=0).dump(forest)
    text = buffer.getvalue().decode("latin1")
    assert "missing_go_to_left" not in text
    for new, old in [
        ("sklearn.ensemble._forest", "sklearn.ensemble.forest"),
        ("sklearn.tree._classes", "sklearn.tree.tree"),
        ("numpy._core.multiarray", "numpy.core.multiarray"),
        ("n_features_in_", "n_features_"),
    ]:
        text = text.replace(new, old)
    path = tmp_path / "old.pkl"
    path.write_bytes(text.encode("latin1"))
    X = rng.uniform(0, 100, size=(32, 7))
    assert np.array_equal(forest_to_ensemble(read_forest(path)).predict(X), forest.predict(X))


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


#: getattr(object, "__subclasses__")(): the first step of the usual escape from a restricted pickle
GETATTR_TRICK = b"cbuiltins\ngetattr\n(cbuiltins\nobject\nV__subclasses__\ntR(tR."


@pytest.mark.unit
@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (lambda marker: _Reduce(os.system, f"touch {marker}"), "system"),
        (lambda marker: _Reduce(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
        (lambda marker: _Reduce(builtins.eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
    ],
)
def test_pickles_that_run_code_are_refused_before_anything_runs(payload, named, tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(payload(marker), protocol=2)
    pickle.loads(evil)  # plain pickle runs it
    assert marker.exists()
    marker.unlink()
    forest, _ = _forest()
    forest.estimators_[0].nested = payload(marker)  # hidden inside a real forest too
    for data in (evil, pickle.dumps(forest, protocol=2)):
        path = tmp_path / "kernel.pkl"
        path.write_bytes(data)
        with pytest.raises(UnsafePickleError, match=rf"{path}: refused: the pickle calls \S*{named.split('.')[-1]}"):
            read_forest(path)
        assert not marker.exists()


@pytest.mark.unit
def test_the_getattr_trick_is_refused(tmp_path):
    assert isinstance(pickle.loads(GETATTR_TRICK), list)  # plain pickle calls what it names
    path = tmp_path / "kernel.pkl"
    path.write_bytes(GETATTR_TRICK)
    with pytest.raises(UnsafePickleError, match="calls builtins.getattr"):
        read_forest(path)


@pytest.mark.unit
def test_a_pickle_of_another_estimator_is_refused_naming_it(tmp_path):
    from sklearn.ensemble import GradientBoostingRegressor

    X = np.arange(40.0).reshape(20, 2)
    path = tmp_path / "fc.pkl"
    path.write_bytes(pickle.dumps(GradientBoostingRegressor(n_estimators=2).fit(X, X[:, 0])))
    with pytest.raises(UnsafePickleError, match="GradientBoostingRegressor"):
        read_forest(path)
    forest, _ = _forest()
    path.write_bytes(pickle.dumps(forest.estimators_[0]))
    with pytest.raises(UnsafePickleError, match="not a RandomForestRegressor"):
        read_forest(path)


# --- importing, listing and predicting ---------------------------------------------------------------------


def _nn_meter_folder(root: Path, rules: str = "mon0", kernels=tuple(NN_METER_FEATURES)) -> Path:
    """An nn-Meter predictor folder pickled by this environment's scikit-learn."""
    from sklearn.ensemble import RandomForestRegressor

    root.mkdir(parents=True)
    (root / "fusion_rules.json").write_text(json.dumps(RULES[rules]))
    rng = np.random.default_rng(1)
    for kernel in kernels:
        X = rng.uniform(1, 200, size=(80, len(NN_METER_FEATURES[kernel])))
        model = RandomForestRegressor(n_estimators=3, max_depth=5, random_state=0).fit(X, 0.01 * X.sum(axis=1))
        (root / f"{kernel}.pkl").write_bytes(pickle.dumps(model))
    return root


@pytest.fixture
def installed(tmp_path, monkeypatch) -> Path:
    """An nn-Meter predictor imported into a user folder of its own."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("NNMETER_PREDICTORS_PATH", raising=False)
    from nnmeter.cli.main import main

    source = _nn_meter_folder(tmp_path / "cortexA76cpu_tflite21")
    assert main(["import-nnmeter", str(source), "--name", "cortexA76cpu_tflite21"]) == 0
    return source


@pytest.mark.unit
def test_import_installs_a_listed_predictor_that_predicts_in_both_modes(installed, capsys):
    from nnmeter.cli.main import main

    capsys.readouterr()
    assert main(["predictors", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["name"] == "cortexA76cpu_tflite21" and entry["origin"].startswith("imported from nn-Meter")
    graph = mobile_block_graph()
    compat = load_predictor("cortexA76cpu_tflite21")
    ours = load_predictor("cortexA76cpu_tflite21", mode="nnmeter")
    assert compat.predict(graph).latency_ms > 0 and ours.predict(graph).latency_ms > 0
    with pytest.raises(NnmeterError, match="softmax at sm"):  # nnmeter mode: strict coverage
        ours.predict(wide_graph())
    skipped = {u.ops: u.reason for u in compat.predict(wide_graph()).unsupported}
    assert skipped["Softmax"] == "nn-Meter has no features for op Softmax"
    assert main(["predict", "--predictor", "cortexA76cpu_tflite21", "--json", str(NNMETER_IR)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["latency_ms"] == pytest.approx(compat.predict(NNMETER_IR).latency_ms, rel=1e-12)


@pytest.mark.unit
def test_nnmeter_load_predictor_refuses_an_imported_one_and_says_how(installed):
    import nnmeter

    with pytest.raises(ArtifactError, match="detection nnmeter-compat") as err:
        nnmeter.load_predictor("cortexA76cpu_tflite21")
    assert "nnmeter.compat.load_predictor" in str(err.value)


@pytest.mark.unit
def test_nn_meter_calls_keep_their_shape(installed):
    (listed,) = nn_meter.list_latency_predictors()
    assert listed["name"] == "cortexA76cpu_tflite21" and "conv-bn-relu" in listed["kernel_predictors"]
    predictor = nn_meter.load_latency_predictor("cortexA76cpu_tflite21", 1.0)
    graph = mobile_block_graph()
    expected = load_predictor("cortexA76cpu_tflite21").predict(graph).latency_ms
    assert predictor.predict(graph, model_type="nnmeter-ir") == expected
    assert predictor.predict(str(NNMETER_IR), model_type="nnmeter-ir") > 0
    for model_type, kwargs, message in [
        ("nni-ir", {}, "NNI"),
        ("caffe", {}, "not one nn-Meter takes"),
        ("torch", {"apply_nni": True}, "apply_nni"),
    ]:
        with pytest.raises(NnmeterError, match=message):
            predictor.predict(graph, model_type=model_type, **kwargs)
    with pytest.raises(ArtifactError, match="no predictor"):
        nn_meter.load_latency_predictor("cortexA76cpu_tflite21", "2.0")


@pytest.mark.unit
def test_onnx_models_go_through_nnmeters_converter_then_nn_meters_detection(installed, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], np.zeros(216, dtype=np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [weight],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph), path)
    result = load_predictor("cortexA76cpu_tflite21").predict(path)
    (kernel,) = result.kernels
    assert kernel.kernel == "conv-bn-relu" and kernel.features[:5] == [16, 3, 8, 3, 1]
    assert nn_meter.load_latency_predictor("cortexA76cpu_tflite21").predict(str(path), "onnx") == result.latency_ms


@pytest.mark.unit
def test_an_unsafe_or_foreign_folder_is_refused_and_nothing_is_written(tmp_path):
    source = _nn_meter_folder(tmp_path / "evil", kernels=("fc",))
    (source / "relu.pkl").write_bytes(pickle.dumps(_Reduce(os.system, "true")))
    with pytest.raises(UnsafePickleError, match="relu.pkl: refused"):
        import_nnmeter(source, tmp_path / "out", name="evil")
    assert not (tmp_path / "out").exists()
    (source / "relu.pkl").unlink()
    forest, _ = _forest(width=3)
    (source / "fc.pkl").write_bytes(pickle.dumps(forest))
    with pytest.raises(NnmeterError, match="fc.pkl: the forest takes 3 features; nn-Meter gives fc 4"):
        import_nnmeter(source, tmp_path / "out", name="evil")
    with pytest.raises(NnmeterError, match="no such nn-Meter predictor folder"):
        import_nnmeter(tmp_path / "missing", tmp_path / "out", name="x")


@pytest.mark.unit
def test_unknown_pickles_are_left_out_with_a_note_and_the_rules_are_kept(tmp_path):
    from nnmeter.progress import Reporter

    class Notes(Reporter):
        def __init__(self):
            self.notes = []

        def note(self, text, *, warning=False):
            self.notes.append(text)

    source = _nn_meter_folder(tmp_path / "src", kernels=("fc", "relu"))
    forest, _ = _forest()
    (source / "mystery.pkl").write_bytes(pickle.dumps(forest))
    notes = Notes()
    out = import_nnmeter(source, tmp_path / "out", name="small", reporter=notes)
    assert sorted(read_manifest(out).kernels) == ["fc", "relu"]
    assert any("mystery.pkl: left out" in n for n in notes.notes)
    assert json.loads((out / NN_METER_RULES).read_text()) == RULES["mon0"]


@pytest.mark.unit
def test_detection_lists_what_nn_meter_skips_and_keeps_its_quirks():
    rules = NnMeterRules.from_json(RULES["mon0"], "rules")
    kernels = nn_meter_kernels(wide_graph(), rules, list(NN_METER_FEATURES))
    by_op = {k.op: k for k in kernels}
    assert by_op["concat"].features[:2] == [16, 6]  # five inputs: nn-Meter keeps four and counts 6
    assert by_op["gap"].features == [1, sum(4 + 2 * i for i in range(5))]  # a global pool's HW is always 1
    assert by_op["transpose"].features == [16, 40]  # "se" is in "transpose": features of an se, and no predictor
    assert by_op["transpose"].skipped == "no kernel predictor transpose"
    assert by_op["Softmax"].skipped and not by_op["Softmax"].features
    mons = [NnMeterRules.from_json({"MON": {"obey": v}}, "rules").mon for v in (0, False, 1, True, 2, "case1", None)]
    assert mons == [0, 0, 1, 1, 2, 2, 0]  # nn-Meter's test: 0, 1, or else every consumer; none: its default 0
    with pytest.raises(NnmeterError, match="BF_conv_bn: not an nn-Meter rule"):
        NnMeterRules.from_json({"BF_conv_bn": True}, "rules")
    with pytest.raises(NnmeterError, match="inbounds is not a list"):
        nn_meter_kernels({"a": {"inbounds": "b", "attr": {"type": "Relu"}}}, rules, [])

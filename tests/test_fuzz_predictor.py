"""Hostile inputs to the predictor, made by mutating real ones: a real .tflite (the bundled ``tiny_cnn.tflite``),
an nn-Meter IR graph and an nnmeter IR graph, a real ONNX model, and a real predictor folder written by
``write_artifact`` (its regressor files, their arrays and JSON header, its manifest, links in it). Each case is
truncated, has bytes flipped or words overwritten, JSON or YAML values swapped for other types, nested deep,
edges that close cycles, huge dimensions, symbolic links. Loading it must end in a ``NnmeterError`` subclass
whose message is one line naming the file, or in a valid result (a graph and a prediction, an artifact that
predicts); never in another exception.

The explicit memory and time bombs (a 0.2 MB regressor file whose member declares 3 GB, 10^11 values, a zip
bomb, a ``max_depth`` of 200,000, a "billion laughs" manifest, a JSON header nested 100,000 deep) are loaded in a
subprocess limited to 1.5 GB of address space (``RLIMIT_AS``) and a timeout, and must be refused within a few
seconds and a few MB.

The number of examples is fixed (``derandomize``: the same cases every run) so the module runs in well under
30 s. ``NNMETER_FUZZ_LONG=1`` multiplies the examples by 50 and draws new cases each run (``NNMETER_FUZZ_LONG=N``
multiplies by N). Each test says how many cases it tried, and how they ended, in its report section ``fuzz``
(shown with ``pytest -rA``) and on the terminal with ``-s``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnmeter.errors import NnmeterError
from nnmeter.predictor import registry
from nnmeter.predictor.artifact import MANIFEST, KernelPayload, load_artifact, write_artifact
from nnmeter.predictor.converters import to_graph
from nnmeter.predictor.engine import Predictor
from nnmeter.predictor.features import feature_matrix
from nnmeter.predictor.rules import default_rules

_LONG = os.environ.get("NNMETER_FUZZ_LONG", "")
MULTIPLIER = (int(_LONG) if _LONG.isdigit() and int(_LONG) > 1 else 50) if _LONG not in ("", "0") else 1
TINY_TFLITE = Path(__file__).parent.parent / "nnmeter" / "configs" / "models" / "tiny_cnn.tflite"
KERNELS = ("conv-bn-relu", "dwconv-bn-relu", "global-avgpool", "fc", "add")


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * MULTIPLIER,
        deadline=timedelta(seconds=10),  # a stall fails the test
        derandomize=MULTIPLIER == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


class Tally:
    """How the cases of a test ended; reported in the test's ``fuzz`` section and printed."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.outcomes: Counter[str] = Counter()

    def check(self, call: Callable[[], Any], names: Path | str) -> Any:
        """``call()``; a NnmeterError must be one line naming ``names``; any other exception fails the test."""
        try:
            result = call()
        except NnmeterError as err:
            message = err.message
            assert "\n" not in message, f"a message of several lines: {message!r}"
            assert str(names) in message, f"{message!r} does not name {names}"
            self.outcomes[f"refused ({type(err).__name__})"] += 1
            return None
        self.outcomes["valid"] += 1
        return result

    def refused(self, err: NnmeterError, names: Path | str) -> None:
        """Count an error the test caught itself (same conditions as :meth:`check`)."""
        self.check(lambda: (_ for _ in ()).throw(err), names)

    def report(self) -> None:
        total = sum(self.outcomes.values())
        shown = ", ".join(f"{n} {what}" for what, n in self.outcomes.most_common())
        text = f"{total} cases ({MULTIPLIER}x examples): {shown}"
        self.request.node.add_report_section("call", "fuzz", text)
        print(f"\n{self.request.node.name}: {text}")


@pytest.fixture
def tally(request):
    """A :class:`Tally`; a test calls its ``report()`` last (the report section belongs to the test's call)."""
    return Tally(request)


# --- mutations ---------------------------------------------------------------------------------------------------

WORDS = st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0xFFFF, 0x10000000]) | st.integers(0, 2**32 - 1)
BYTE_MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("word"), st.floats(0, 1), WORDS),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 64)),
)


def mutate_bytes(data: bytes, mutations: list[tuple]) -> bytes:
    out = bytearray(data)
    for mutation in mutations:
        kind, where = mutation[0], mutation[1]
        at = lambda f: min(int(f * len(out)), max(len(out) - 1, 0))  # noqa: E731
        if not out:
            break
        if kind == "truncate":
            del out[at(where) :]
        elif kind == "flip":
            for f, mask in where:
                out[at(f)] ^= mask
        elif kind == "word":
            i = at(where) - at(where) % 4
            out[i : i + 4] = mutation[2].to_bytes(4, "little")
        elif kind == "insert":
            out[at(where) : at(where)] = mutation[2]
        else:
            del out[at(where) : at(where) + mutation[2]]
    return bytes(out)


NEST = "__nest__"
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 1, 2**31, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["1,2", "8", "\n", "../x", "NaN"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def doc_mutation(depths: list[int]) -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("set"), st.integers(0, 10**6), VALUES),
        st.tuples(st.just("delete"), st.integers(0, 10**6)),
        st.tuples(st.just("nest"), st.integers(0, 10**6), st.sampled_from(depths)),
        st.tuples(st.just("dims"), st.integers(0, 10**6), st.sampled_from([0, -1, -7, 2**31, 10**12, 10**40])),
    )


DOC_MUTATION = doc_mutation([10, 40, 1000, 100_000])
#: PyYAML looks up to 1024 characters ahead at every level of a flow collection: 0.2 s a document nested
#: 1000 deep, however deep (bounded, and refused at 32 levels); fewer such cases keep the module fast.
YAML_MUTATION = doc_mutation([10, 40, 100, 100, 1000])


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def mutate_doc(doc: Any, mutations: list[tuple]) -> tuple[Any, int]:
    """``doc`` (a JSON or YAML value) with values set, deleted, replaced by a placeholder for deep nesting (the
    returned depth) or with integers swapped for odd dimensions."""
    depth = 0
    for kind, index, *rest in mutations:
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = paths[index % len(paths)]
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if kind == "set":
            parent[key] = rest[0]
        elif kind == "delete":
            del parent[key]
        elif kind == "nest":
            parent[key], depth = NEST, rest[0]
        else:
            ints = [p for p in paths if isinstance(_get(doc, p), int) and not isinstance(_get(doc, p), bool)]
            if ints:
                target = ints[index % len(ints)]
                holder = _get(doc, target[:-1])
                holder[target[-1]] = rest[0]
    return doc, depth


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def nested_json(doc: Any, depth: int) -> str:
    text = json.dumps(doc)
    return text.replace(json.dumps(NEST), "[" * depth + "]" * depth) if depth else text


# --- real inputs --------------------------------------------------------------------------------------------------


def nnmeter_ir() -> dict:
    """An nn-Meter IR graph (TF op types): conv + bn + relu6, depthwise conv, a residual add, pooling, fc."""

    def node(tf_type, inbounds, outbounds, dims, **attrs):
        return {
            "inbounds": inbounds,
            "outbounds": outbounds,
            "attr": {"name": "", "type": tf_type, "attr": attrs, "input_shape": [dims], "output_shape": [dims]},
        }

    s = [1, 16, 16, 8]
    return {
        "input": node("Placeholder", [], ["conv"], s, shape=s),
        "conv": node(
            "Conv2D", ["input"], ["bn"], s, kernel_shape=[3, 3], strides=[1, 1, 1, 1], weight_shape=[3, 3, 8, 8]
        ),
        "bn": node("FusedBatchNorm", ["conv"], ["relu"], s),
        "relu": node("Relu6", ["bn"], ["dw"], s),
        "dw": node("DepthwiseConv2dNative", ["relu"], ["add"], s, kernel_shape=[3, 3], strides=[1, 1, 1, 1]),
        "add": node("AddV2", ["dw", "input"], ["pool"], s),
        "pool": node("Mean", ["add"], ["fc"], [1, 8]),
        "fc": node("MatMul", ["pool"], [], [1, 10]),
    }


def onnx_bytes() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(np.array([1.0, 2.0], np.float32)[:1], "half"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Mul", ["relu", "half"], ["mul"], name="mul"),
        helper.make_node("GlobalAveragePool", ["mul"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc.w"], ["out"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(scope="module")
def predictor_folder(tmp_path_factory) -> Path:
    """A real predictor: small random forests for five kernels, gradient-boosted trees over a base for fc."""
    from sklearn.ensemble import RandomForestRegressor

    from nnmeter.kernel_gen import sample_configs
    from nnmeter.predictor.regressor_format import from_sklearn
    from nnmeter.training.regressors import CostRatioBoosting

    payloads = {}
    for kernel in KERNELS:
        X = feature_matrix(kernel, sample_configs(kernel, 60, sampler="uniform", seed=0))
        y = 0.01 + X[:, 0] * 1e-6
        if kernel == "fc":
            ensemble = CostRatioBoosting(kernel, n_estimators=10).fit(X, y).to_ensemble()
        else:
            forest = RandomForestRegressor(n_estimators=3, max_depth=6, random_state=0).fit(X, y)
            ensemble = from_sklearn(forest.estimators_, X.shape[1], aggregation="mean", regressor="random-forest")
        payloads[kernel] = KernelPayload(ensemble, samples=len(y), metrics={"acc10": 0.9})
    return write_artifact(
        tmp_path_factory.mktemp("fuzz") / "predictor",
        name="fuzz",
        version="1",
        device={"id": "fuzz"},
        backend="none",
        protocol={},
        rules=default_rules(),
        kernels=payloads,
    )


@pytest.fixture(scope="module")
def predictor(predictor_folder) -> Predictor:
    return Predictor(load_artifact(predictor_folder))


@functools.cache
def _rows(kernel: str) -> np.ndarray:
    from nnmeter.kernel_gen import sample_configs

    return feature_matrix(kernel, sample_configs(kernel, 4, sampler="uniform", seed=1))


@contextlib.contextmanager
def fresh_copy(folder: Path) -> Iterator[Path]:
    """A copy of the predictor ``folder`` to change, in a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        copy = Path(tmp) / "predictor"
        shutil.copytree(folder, copy)
        yield copy


def _refresh_checksum(folder: Path, rel: str) -> None:
    """Set the manifest's sha256 of ``rel`` to the file's: what whoever changes a shared predictor can do."""
    manifest = yaml.safe_load((folder / MANIFEST).read_text())
    manifest["files"][rel] = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
    (folder / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))


def _load_and_use(folder: Path) -> Any:
    """Load the predictor; when it loads, every regressor predicts and the registry lists it."""
    artifact = load_artifact(folder)
    for kernel in artifact.kernels:
        with np.errstate(all="ignore"):
            out = artifact.predict(kernel, _rows(kernel))
        assert out.shape == (4,)
    return artifact


def _listed(folder: Path) -> None:
    """The registry lists any folder without an exception: its facts, or a one-line error."""
    with mock.patch.dict(os.environ, {registry.ENV_VAR: str(folder), "XDG_DATA_HOME": str(folder / "nothing")}):
        (entry,) = registry.installed_predictors()
    assert entry.error or entry.name, entry
    assert "\n" not in entry.error


# --- models -------------------------------------------------------------------------------------------------------


def _predict(predictor: Predictor, path: Path) -> Any:
    graph = to_graph(path)
    return predictor.predict(graph, strict=False)


@pytest.mark.unit
def test_fuzz_tflite(predictor, tally, tmp_path):
    data = TINY_TFLITE.read_bytes()
    folder = tmp_path
    path = folder / "model.tflite"
    assert tally.check(lambda: _predict(predictor, TINY_TFLITE), TINY_TFLITE) is not None

    @fuzz_settings(150)
    @given(st.lists(BYTE_MUTATION, min_size=1, max_size=4))
    def case(mutations):
        path.write_bytes(mutate_bytes(data, mutations))
        tally.check(lambda: _predict(predictor, path), path)

    case()
    tally.report()


@pytest.mark.unit
def test_fuzz_nnmeter_ir(predictor, tally, tmp_path):
    folder = tmp_path
    path = folder / "model.json"
    path.write_text(json.dumps(nnmeter_ir()))
    assert tally.check(lambda: _predict(predictor, path), path).kernels

    @fuzz_settings(150)
    @given(
        st.lists(DOC_MUTATION, min_size=1, max_size=3),
        st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=2),
    )
    def case(mutations, edges):
        doc, depth = mutate_doc(nnmeter_ir(), mutations)
        keys = list(doc) if isinstance(doc, dict) else []
        for a, b in edges:  # extra inbounds: cycles, self loops, or only more edges
            if keys and isinstance(doc[keys[a % len(keys)]], dict):
                entry = doc[keys[a % len(keys)]]
                if isinstance(entry.get("inbounds"), list):
                    entry["inbounds"] = [*entry["inbounds"], keys[b % len(keys)]]
        path.write_text(nested_json(doc, depth))
        tally.check(lambda: _predict(predictor, path), path)

    case()
    tally.report()


@pytest.mark.unit
def test_fuzz_nnmeter_ir_graph_format(predictor, tally, tmp_path):
    """The IR graph as ``nnmeter-build ir`` writes it (``format: nnmeter-ir``)."""
    original = to_graph(nnmeter_ir()).to_dict()
    folder = tmp_path
    path = folder / "graph.json"

    @fuzz_settings(100)
    @given(st.lists(DOC_MUTATION, min_size=1, max_size=3))
    def case(mutations):
        doc, depth = mutate_doc(json.loads(json.dumps(original)), mutations)
        if isinstance(doc, dict):
            doc["format"], doc["version"] = "nnmeter-ir", 1
        path.write_text(nested_json(doc, depth))
        tally.check(lambda: _predict(predictor, path), path)

    case()
    tally.report()


@pytest.mark.unit
def test_fuzz_onnx(predictor, tally, tmp_path):
    data = onnx_bytes()
    folder = tmp_path
    path = folder / "model.onnx"
    path.write_bytes(data)
    assert tally.check(lambda: _predict(predictor, path), path).kernels

    @fuzz_settings(80)
    @given(st.lists(BYTE_MUTATION, min_size=1, max_size=3))
    def case(mutations):
        path.write_bytes(mutate_bytes(data, mutations))
        tally.check(lambda: _predict(predictor, path), path)

    case()
    tally.report()


# --- predictor folders --------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_fuzz_regressor_file_bytes(predictor_folder, tally):
    """Bytes of a regressor file changed, and its checksum updated to match (the checksums catch accidents only)."""

    @fuzz_settings(60)
    @given(st.sampled_from(KERNELS), st.lists(BYTE_MUTATION, min_size=1, max_size=3))
    def case(kernel, mutations):
        with fresh_copy(predictor_folder) as folder:
            rel = f"kernels/{kernel}.npz"
            (folder / rel).write_bytes(mutate_bytes((folder / rel).read_bytes(), mutations))
            _refresh_checksum(folder, rel)
            tally.check(lambda: _load_and_use(folder), folder)

    case()
    tally.report()


DTYPES = st.sampled_from(["int8", "uint8", "int16", "uint64", "int64", "float16", "float32", "complex64", "bool", "U3"])
ARRAY_MUTATION = st.one_of(
    st.tuples(
        st.just("value"), st.integers(0, 10**6), st.sampled_from([-3, -2, -1, 0, 1, 7, 999, 2**31 - 1, -(2**31)])
    ),
    st.tuples(st.just("float"), st.integers(0, 10**6), st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -0.0])),
    st.tuples(st.just("dtype"), DTYPES),
    st.tuples(
        st.just("2d"),
    ),
    st.tuples(st.just("length"), st.integers(-5, 5)),
    st.tuples(st.just("declared"), st.sampled_from([(0,), (10**11,), (750_000_000,), (3, 3), ()]), DTYPES),
    st.tuples(
        st.just("object"),
    ),
    st.tuples(
        st.just("missing"),
    ),
)
MEMBERS = ("tree_offsets", "feature", "threshold", "children_left", "children_right", "value")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def _declared(shape: tuple, dtype: str) -> bytes:
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(4096)


@pytest.mark.unit
def test_fuzz_regressor_file_arrays_and_header(predictor_folder, tally):
    """The arrays of a regressor file (values, dtypes, shapes, declared sizes) and its JSON header changed."""

    @fuzz_settings(120)
    @given(
        st.sampled_from(KERNELS),
        st.sampled_from(MEMBERS),
        st.lists(ARRAY_MUTATION, max_size=2),
        st.lists(DOC_MUTATION, max_size=2),
    )
    def case(kernel, member, array_mutations, header_mutations):
        with fresh_copy(predictor_folder) as folder:
            rel = f"kernels/{kernel}.npz"
            with np.load(folder / rel) as npz:
                arrays = {n: npz[n] for n in npz.files}
            header, depth = mutate_doc(json.loads(str(arrays.pop("header"))), header_mutations)
            blobs = {n: _npy(a) for n, a in arrays.items()}
            array = arrays[member].copy()
            for kind, *args in array_mutations:
                if kind == "value" and array.size and array.dtype.kind in "iu":
                    array.flat[args[0] % array.size] = np.clip(
                        args[1], np.iinfo(array.dtype).min, np.iinfo(array.dtype).max
                    )
                elif kind == "float" and array.size and array.dtype.kind == "f":
                    with np.errstate(all="ignore"):
                        array.flat[args[0] % array.size] = args[1]
                elif kind == "dtype":
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            array = array.astype(args[0])
                        except (ValueError, TypeError, OverflowError):  # (an object array of floats to int8)
                            pass
                elif kind == "2d":
                    array = array.reshape(1, -1)
                elif kind == "length":
                    array = np.resize(array, max(len(array) + args[0], 0)) if array.ndim == 1 else array
                elif kind == "object":
                    array = array.astype(object)
                blobs[member] = _npy(array)
                if kind == "declared":
                    blobs[member] = _declared(*args)
                elif kind == "missing":
                    blobs.pop(member)
            blobs["header"] = _npy(np.array(nested_json(header, depth)))
            with zipfile.ZipFile(folder / rel, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, blob in blobs.items():
                    archive.writestr(f"{name}.npy", blob)
            _refresh_checksum(folder, rel)
            tally.check(lambda: _load_and_use(folder), folder)

    case()
    tally.report()


YAML_INJECTIONS = st.sampled_from(
    [
        "",
        "a0: &a0 [x, x]\na1: &a1 [*a0, *a0, *a0]\nname: *a1\n",
        "name: [" * 50 + "]" * 50 + "\n",
        "name: x\nname: y\n",
        "<<: {name: z}\n",
        "name: !!python/object/apply:os.system [true]\n",
        "version: 0x_\n",
        "created: 2001-13-01\n",
        "\t\x00\n",
    ]
)


@pytest.mark.unit
def test_fuzz_manifest(predictor_folder, tally):
    """The manifest's values swapped for other types, deleted or nested; YAML tricks appended; bytes flipped."""

    @fuzz_settings(120)
    @given(
        st.lists(YAML_MUTATION, max_size=3),
        YAML_INJECTIONS,
        st.lists(BYTE_MUTATION, max_size=1),
    )
    def case(mutations, injection, byte_mutations):
        with fresh_copy(predictor_folder) as folder:
            doc, depth = mutate_doc(yaml.safe_load((folder / MANIFEST).read_text()), mutations)
            text = yaml.safe_dump(doc, sort_keys=False).replace(NEST, "[" * depth + "]" * depth)
            (folder / MANIFEST).write_bytes(mutate_bytes((text + injection).encode(), byte_mutations))
            tally.check(lambda: _load_and_use(folder), folder)
            _listed(folder)  # reads the manifest alone (read_manifest)

    case()
    tally.report()


@pytest.mark.unit
def test_fuzz_links_in_a_predictor_folder(predictor_folder, tally):
    """Any entry of the folder replaced by a symbolic link to an identical copy (its checksum still matches)."""
    entries = sorted(p.relative_to(predictor_folder).as_posix() for p in predictor_folder.rglob("*"))

    @fuzz_settings(20)
    @given(st.sampled_from(entries), st.booleans())
    def case(rel, dangling):
        with fresh_copy(predictor_folder) as folder:
            elsewhere = folder.parent / "elsewhere"
            shutil.move(folder / rel, elsewhere)
            (folder / rel).symlink_to(elsewhere if not dangling else folder.parent / "nowhere")
            with pytest.raises(NnmeterError, match="is a symbolic link") as err:
                load_artifact(folder)
            tally.refused(err.value, folder)
            with pytest.raises(NnmeterError, match="symbolic link"):
                registry.install_predictor(folder, root=folder.parent / "installed")
            assert not any((folder.parent / "installed").glob("*-*"))
            _listed(folder)

    case()
    tally.report()


# --- the explicit bombs, in a subprocess bounded in memory and time ------------------------------------------------

LIMIT_BYTES = 1536 << 20
CHILD = """
import json, resource, sys, time
from nnmeter.errors import NnmeterError
from nnmeter.predictor.artifact import load_artifact
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    load_artifact(sys.argv[1])
    outcome, message = "loaded", ""
except NnmeterError as err:
    outcome, message = type(err).__name__, err.message
except BaseException as err:
    outcome, message = "raw " + type(err).__name__, str(err)[:300]
seconds = time.perf_counter() - started
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({{"outcome": outcome, "message": message, "seconds": seconds, "grown_mb": grown}}))
"""


def _bomb_npz(folder: Path, kernel: str, change: Callable[[dict, dict], dict[str, bytes]]) -> None:
    rel = f"kernels/{kernel}.npz"
    with np.load(folder / rel) as npz:
        arrays = {n: npz[n] for n in npz.files}
    header = json.loads(str(arrays.pop("header")))
    blobs = {"header": _npy(np.array(json.dumps(header))), **{n: _npy(a) for n, a in arrays.items()}}
    blobs.update(change(header, arrays))
    with zipfile.ZipFile(folder / rel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, blob in blobs.items():
            if isinstance(blob, bytes):
                archive.writestr(f"{name}.npy", blob)
            else:  # a generator of chunks: streamed (a zip bomb)
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    for chunk in blob:
                        member.write(chunk)
    _refresh_checksum(folder, rel)


def _zip_bomb():
    yield _declared((), "<U67108864")[:-4096]
    for _ in range(64):
        yield bytes(1 << 22)


def _declared_header(header: dict, **changes: Any) -> dict[str, bytes]:
    return {"header": _npy(np.array(json.dumps({**header, **changes})))}


BOMBS: dict[str, tuple[Callable[[Path], None], str]] = {
    "member declaring 3 GB": (
        lambda f: _bomb_npz(f, "fc", lambda h, a: {"feature": _declared((750_000_000,), "int32")}),
        r"feature has shape \(750000000,\)",
    ),
    "member declaring 10^11 values": (
        lambda f: _bomb_npz(f, "fc", lambda h, a: {"threshold": _declared((10**11,), "float64")}),
        r"threshold has shape \(100000000000,\)",
    ),
    "zip bomb (256 MB header in 0.3 MB)": (
        lambda f: _bomb_npz(f, "fc", lambda h, a: {"header": _zip_bomb()}),
        "header declares 268,435,.* bytes uncompressed",
    ),
    "max_depth 200,000": (
        lambda f: _bomb_npz(f, "fc", lambda h, a: _declared_header(h, max_depth=200_000)),
        "max_depth 200000 is not in",
    ),
    "JSON header nested 30,000 deep": (
        lambda f: _bomb_npz(f, "fc", lambda h, a: {"header": _npy(np.array("[" * 30_000 + "]" * 30_000))}),
        "header nested deeper than 8 levels",
    ),
    "billion laughs manifest (9 levels)": (
        lambda f: (f / MANIFEST).write_text(
            (f / MANIFEST).read_text()
            + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'lol'] * 10)}]\n" for i in range(10))
            + "description: *l9\n"
        ),
        r"aliases \(\*name\) are not allowed",
    ),
}


@pytest.mark.unit
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_bombs_are_refused_in_bounded_memory_and_time(predictor_folder, bomb, request):
    make, problem = BOMBS[bomb]
    with fresh_copy(predictor_folder) as folder:
        make(folder)
        size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run(
            [sys.executable, "-c", CHILD.format(limit=LIMIT_BYTES), str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        outcome = f"{result['outcome']} in {result['seconds']:.3f} s, peak memory +{result['grown_mb']:.1f} MB"
        text = f"{bomb}: a {size_mb:.2f} MB folder; {outcome}"
        request.node.add_report_section("call", "fuzz", text)
        print(f"\n{text}: {result['message']}")
        assert result["outcome"] == "ArtifactError", result
        assert re.search(problem, result["message"]), result["message"]
        assert str(folder) in result["message"] and "\n" not in result["message"]
        assert result["seconds"] < 5 and result["grown_mb"] < 64, result

"""Kernel generator: every kernel and op builds, converts to .tflite and runs in LiteRT; costs; cache.

Models are tiny (HW <= 14, channels <= 24) and converted in this process with the
backends' own Keras -> .tflite path.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnmeter import kernel_gen as kg  # its builders load Keras: their names are read when a test runs
from nnmeter import ops
from nnmeter.backends.converters import keras_to_tflite_bytes
from nnmeter.kernel_gen.cache import model_id
from nnmeter.kernel_gen.pairs import TestShapes

SMALL = TestShapes(HW=8, CIN=8, COUT=12, FC_SIZE=20)

pytestmark = pytest.mark.integration


def _shrink(config: dict) -> dict:
    """A sampled config made tiny, keeping its kernel size, strides and number of inputs."""
    small = dict(config)
    if ops.HW in small:
        small[ops.HW] = min(small[ops.HW], 14)
    for key in (ops.CIN, ops.COUT):
        if key in small:
            small[key] = min(small[key], 24)
    if ops.CINS in small:
        small[ops.CINS] = [min(c, 24) for c in small[ops.CINS]]
    return small


def _interpreter(model):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=keras_to_tflite_bytes(model))
    interpreter.allocate_tensors()
    return interpreter


def _run(model) -> list[tuple[int, ...]]:
    """Convert ``model`` to .tflite, run it once in LiteRT on random inputs; its output shapes."""
    interpreter = _interpreter(model)
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], rng.standard_normal(detail["shape"]).astype(np.float32))
    interpreter.invoke()
    outputs = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    assert all(np.isfinite(o).all() for o in outputs)
    return sorted(tuple(o.shape) for o in outputs)


def _tflite_ops(model) -> list[str]:
    """The op names of the converted model as written in the file (before any delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=keras_to_tflite_bytes(model),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return [op["op_name"] for op in interpreter._get_ops_details()]


@pytest.mark.parametrize("kernel", list(ops.KERNELS))
def test_every_kernel_builds_converts_and_runs(kernel):
    configs = [
        _shrink(c) for c in kg.sample_configs(kernel, 1, "prior", seed=3) + kg.sample_configs(kernel, 1, "uniform")
    ]
    for config in configs:
        km = kg.build_kernel(kernel, config)
        assert km.kernel == kernel and km.config == ops.validate_config(kernel, config)
        assert km.cost == ops.kernel_cost(kernel, config)
        assert [tuple(t.shape[1:]) for t in km.model.inputs] == list(km.input_shapes)
        assert _run(km.model) == sorted((1, *s) for s in km.output_shapes), (kernel, config)


def test_kernel_output_shapes_follow_strides_and_padding():
    km = kg.build_kernel("conv-bn-relu", {"HW": 14, "CIN": 3, "COUT": 5, "KERNEL_SIZE": 3, "STRIDES": 2})
    assert km.output_shapes == ((7, 7, 5),)
    assert kg.build_kernel("maxpool", {"HW": 7, "CIN": 4, "KERNEL_SIZE": 3, "POOL_STRIDES": 2}).output_shapes == (
        (4, 4, 4),
    )
    assert kg.build_kernel("concat", {"HW": 3, "CINS": [2, 3, 4]}).input_shapes == (
        (3, 3, 2),
        (3, 3, 3),
        (3, 3, 4),
    )
    assert kg.build_kernel("split", {"HW": 3, "CIN": 6}).output_shapes == ((3, 3, 3), (3, 3, 3))
    assert kg.build_kernel("fc", {"CIN": 10, "COUT": 4}).output_shapes == ((4,),)


@pytest.mark.parametrize("op", list(ops.OPS))
def test_every_op_builds_alone_converts_and_runs(op):
    model = kg.build_single(op, SMALL)
    assert _run(model) == sorted(tuple(t.shape) for t in model.outputs)


def test_tflite_gets_the_ops_the_kernels_name():
    conv = {"HW": 8, "CIN": 4, "COUT": 8, "KERNEL_SIZE": 3, "STRIDES": 1}
    assert _tflite_ops(kg.build_kernel_model("conv-bn-relu", conv)) == ["CONV_2D"]  # bn folds, relu fuses
    assert _tflite_ops(kg.build_kernel_model("conv-bn-hswish", conv)) == ["CONV_2D", "HARD_SWISH"]
    assert _tflite_ops(kg.build_kernel_model("hswish", {"HW": 8, "CIN": 4})) == ["HARD_SWISH"]
    assert _tflite_ops(
        kg.build_kernel_model("dwconv-bn-relu6", {"HW": 8, "CIN": 4, "KERNEL_SIZE": 3, "STRIDES": 2})
    ) == ["DEPTHWISE_CONV_2D"]
    assert _tflite_ops(kg.build_kernel_model("bn", {"HW": 8, "CIN": 4})) == [
        "MUL",
        "ADD",
    ]  # random statistics: kept
    se = _tflite_ops(kg.build_kernel_model("se", {"HW": 8, "CIN": 8}))
    assert se[0] == "MEAN" and se.count("CONV_2D") == 2 and se[-1] == "MUL"
    assert _tflite_ops(kg.build_kernel_model("channelshuffle", {"HW": 8, "CIN": 8})) == [
        "RESHAPE",
        "TRANSPOSE",
        "RESHAPE",
    ]
    assert _tflite_ops(kg.build_kernel_model("split", {"HW": 8, "CIN": 8})) == ["SPLIT"]
    assert _tflite_ops(kg.build_kernel_model("addrelu", {"HW": 8, "CIN": 8})) == ["ADD"]  # relu fused into add


def test_costs_match_hand_counts_and_keras_params():
    conv = {"HW": 8, "CIN": 4, "COUT": 8, "KERNEL_SIZE": 3, "STRIDES": 1}
    km = kg.build_kernel("conv-relu", conv)
    # 8x8 outputs x 8 channels x (3x3x4) MACs x 2, plus one op per output for relu
    assert km.cost.flops == 2 * 8 * 8 * 8 * 3 * 3 * 4 + 8 * 8 * 8
    assert km.cost.params == 3 * 3 * 4 * 8 + 8 == km.model.count_params()
    folded = kg.build_kernel("conv-bn-relu", conv)  # no bias, bn's 4 x 8 values fold to the same 296
    assert folded.cost.params == km.cost.params and folded.model.count_params() == 3 * 3 * 4 * 8 + 4 * 8
    dw = kg.build_kernel("dwconv-relu", {"HW": 8, "CIN": 4, "KERNEL_SIZE": 3, "STRIDES": 2})
    assert dw.cost.flops == 2 * 4 * 4 * 4 * 9 + 4 * 4 * 4
    assert dw.cost.params == 4 * 9 + 4 == dw.model.count_params()
    fc = kg.build_kernel("fc", {"CIN": 10, "COUT": 5})
    assert fc.cost.flops == 2 * 10 * 5 and fc.cost.params == 55 == fc.model.count_params()
    se = kg.build_kernel("se", {"HW": 8, "CIN": 8})
    assert se.cost.params == 8 * 2 + 2 + 2 * 8 + 8 == se.model.count_params()
    assert kg.build_kernel("add", {"HW": 8, "CIN": 8}).cost.bytes_read == 4 * 2 * 8 * 8 * 8


@pytest.mark.parametrize(
    "kernel,config,words",
    [
        ("convx", {"HW": 8}, ["convx", "not a kernel", "conv-bn-relu"]),
        ("conv-bn-relu", {"HW": 8, "CIN": 4, "COUT": 8, "KERNEL_SIZE": 3}, ["conv-bn-relu", "STRIDES"]),
        (
            "conv-bn-relu",
            {"HW": 8, "CIN": 4, "COUT": 8, "KERNEL_SIZE": 3, "STRIDES": 3},
            ["conv-bn-relu", "STRIDES=3", "1, 2, 4"],
        ),
        (
            "dwconv-bn",
            {"HW": 8, "CIN": 4, "KERNEL_SIZE": 4, "STRIDES": 1},
            ["dwconv-bn", "KERNEL_SIZE=4", "1, 3, 5, 7"],
        ),
        ("relu", {"HW": 8, "CIN": -3}, ["relu", "CIN=-3", "[1, 4096]"]),
        ("concat", {"HW": 8, "CINS": [1, 2, 3, 4, 5]}, ["concat", "CINS", "2-4"]),
        ("split", {"HW": 8, "CIN": 5}, ["split", "CIN=5", "even"]),
    ],
)
def test_bad_configs_name_kernel_key_value_and_valid_set(kernel, config, words):
    with pytest.raises(ValueError) as err:
        kg.build_kernel(kernel, config)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_pairs_connect_ops_with_consistent_shapes():
    for op1, op2, ops_in_file in [
        ("conv", "relu", ["CONV_2D"]),
        ("relu", "fc", ["RELU", "FULLY_CONNECTED"]),
        ("global-avgpool", "fc", ["MEAN", "FULLY_CONNECTED"]),
        ("add", "concat", ["ADD", "CONCATENATION"]),
        ("split", "add", ["SPLIT", "ADD"]),
    ]:
        model = kg.build_pair(op1, op2, SMALL)
        assert _tflite_ops(model) == ops_in_file, (op1, op2)
        _run(model)
    assert kg.pair_input_shapes("relu", "fc", SMALL) == ((20,), (20,))
    assert kg.pair_input_shapes("conv", "relu", SMALL) == ((8, 8, 8), (8, 8, 12))
    assert kg.pair_input_shapes("global-avgpool", "fc", SMALL) == ((8, 8, 8), (8,))
    assert len(kg.build_pair("relu", "add", SMALL).inputs) == 2  # add gets op1's output and a second input


def test_a_conv_in_a_pair_is_1x1_and_light_on_its_side_away_from_the_other_op():
    shapes = kg.TestShapes(HW=8, CIN=8, COUT=12, CONV_OUTER_CHANNELS=4)
    # first: 4 input channels, nn-Meter's COUT into the op after it
    assert kg.pair_input_shapes("conv", "relu", shapes) == ((8, 8, 4), (8, 8, 12))
    assert tuple(kg.build_pair("conv", "relu", shapes).outputs[0].shape) == (1, 8, 8, 12)
    # second: nn-Meter's CIN from the op before it, 4 output channels
    assert kg.pair_input_shapes("relu", "convtrans", shapes) == ((8, 8, 8), (8, 8, 8))
    model = kg.build_pair("relu", "convtrans", shapes)
    assert tuple(model.inputs[0].shape) == (1, 8, 8, 8) and tuple(model.outputs[0].shape) == (1, 8, 8, 4)
    assert kg.pair_output_channels("conv", shapes) == 4 and kg.pair_output_channels("relu", shapes) is None
    assert [layer.kernel_size for layer in model.layers if hasattr(layer, "kernel_size")] == [(1, 1)]
    # 0: nn-Meter's shapes
    nnmeter_shapes = kg.TestShapes(HW=8, CIN=8, COUT=12, CONV_OUTER_CHANNELS=0)
    assert kg.pair_input_shapes("conv", "relu", nnmeter_shapes) == ((8, 8, 8), (8, 8, 12))
    model = kg.build_pair("relu", "conv", nnmeter_shapes)
    assert tuple(model.outputs[0].shape) == (1, 8, 8, 12)
    assert [layer.kernel_size for layer in model.layers if hasattr(layer, "kernel_size")] == [(3, 3)]


def test_unconnectable_pairs_raise_clear_errors():
    assert not kg.connectable("fc", "conv") and not kg.connectable("conv", "softmax")
    with pytest.raises(kg.UnconnectablePair, match="fc -> conv.*vector.*feature map"):
        kg.build_pair("fc", "conv", SMALL)
    with pytest.raises(ValueError, match="not an op"):
        kg.build_pair("conv", "relu7", SMALL)


def test_connectable_agrees_with_build_pair():
    for op1, op2 in itertools.product(
        [ops.CONV, ops.FC, ops.RELU, ops.GLOBAL_AVGPOOL, ops.RESHAPE, ops.SOFTMAX], repeat=2
    ):
        if kg.connectable(op1, op2):
            kg.build_pair(op1, op2, SMALL)
        else:
            with pytest.raises(kg.UnconnectablePair):
                kg.build_pair(op1, op2, SMALL)


def test_mon_block_has_one_op_feeding_two():
    model = kg.build_mon(SMALL)
    assert len(model.outputs) == 2
    names = _tflite_ops(model)
    # the first dwconv is not fused with a relu: its output has two consumers
    assert names.count("DEPTHWISE_CONV_2D") == 2 and "LEAKY_RELU" in names
    assert _run(model) == [(1, 8, 8, 8), (1, 8, 8, 8)]
    for chain in {c for chains in kg.MON_CASES.values() for c in chains}:
        _run(kg.build_chain(chain, SMALL))


def test_model_id_depends_on_every_part_and_only_on_them():
    base = ("kernel", "conv-bn-relu", {"HW": 8, "CIN": 4}, "tflite", "tensorflow 2.21.0")
    assert model_id(*base) == model_id("kernel", "conv-bn-relu", {"CIN": 4, "HW": 8}, "tflite", "tensorflow 2.21.0")
    for i, other in enumerate(["rule-case", "conv-bn", {"HW": 8, "CIN": 5}, "onnx", "tensorflow 2.22.0"]):
        changed = list(base)
        changed[i] = other
        assert model_id(*changed) != model_id(*base)


def test_prepare_models_converts_once_and_reuses_the_file(tmp_path):
    from nnmeter.backends import create_backend
    from nnmeter.builder.workspace import Workspace
    from nnmeter.measurement import ModelSpec, kernel_spec

    ws = Workspace.create(tmp_path / "ws", "tflite-local")
    configs = [{"HW": 7, "CIN": c, "KERNEL_SIZE": 3, "STRIDES": 1} for c in (4, 6)]
    specs = [kernel_spec("dwconv-bn-relu", c) for c in configs] + [kernel_spec("dwconv-bn-relu", configs[0])]
    bad = ModelSpec("kernel", "split", {"HW": 3, "CIN": 5}, kg.build_kernel_model, ("split", {"HW": 3, "CIN": 5}))
    with create_backend("tflite-local") as backend:
        session = ws.session(backend, workers=1)
        first = session.prepare(specs + [bad])
        assert [p.ok for p in first] == [True, True, True, False]
        assert "even" in first[3].error and first[3].record is None
        assert first[0].id == first[2].id and first[0].file.path == first[2].file.path
        assert not any(p.reused for p in first)
        stamp = first[0].file.path.stat().st_mtime_ns
        second = session.prepare(specs[:2])
    assert all(p.reused for p in second)
    assert [p.file.path for p in second] == [p.file.path for p in first[:2]]
    assert second[0].file.path.stat().st_mtime_ns == stamp
    record = ws.store.get_model(first[0].id)
    assert record.kind == "kernel" and record.name == "dwconv-bn-relu" and record.config == configs[0]
    assert record.path("tflite", ws.root) == first[0].file.path
    ws.close()


def _graph(data: bytes) -> list[tuple]:
    """A .tflite's operators as (op, version, input shapes, output shapes, options), what the runtime reads."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]

    def shape(i):
        return None if i < 0 else tuple(int(d) for d in graph.tensors[i].shape)

    out = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        # potScaleInt16 and quantizedBiasType matter to int16/int8 models only
        options = {
            k: v
            for k, v in (vars(op.builtinOptions) if op.builtinOptions else {}).items()
            if k not in ("potScaleInt16", "quantizedBiasType")
        }
        out.append(
            (
                names[code.builtinCode],
                code.version,
                tuple(shape(i) for i in op.inputs),
                tuple(shape(i) for i in op.outputs),
                sorted((k, repr(v)) for k, v in options.items()),
            )
        )
    return out


@pytest.mark.parametrize("kernel", list(ops.KERNELS))
def test_the_direct_writer_writes_the_graph_the_converter_makes(kernel):
    configs = kg.sample_configs(kernel, 2, "prior", seed=5) + kg.sample_configs(kernel, 2, "uniform", seed=6)
    written = 0
    for config in configs:
        data = kg.write_kernel_tflite(kernel, config)
        if data is None:  # a degenerate shape the converter rewrites: built with TensorFlow instead
            continue
        written += 1
        assert _graph(data) == _graph(keras_to_tflite_bytes(kg.build_kernel_model(kernel, config))), config
        _interpreter_runs(data)
    assert written >= 2


def _interpreter_runs(data: bytes) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.ones(detail["shape"], np.float32))
    interpreter.invoke()
    assert all(np.isfinite(interpreter.get_tensor(d["index"])).all() for d in interpreter.get_output_details())


def test_degenerate_shapes_the_converter_rewrites_are_left_to_it():
    assert kg.write_kernel_tflite("add", {"HW": 1, "CIN": 8}) is None  # the converter adds reshaped vectors
    assert kg.write_kernel_tflite("channelshuffle", {"HW": 7, "CIN": 2}) is None  # the converter drops it
    assert kg.write_kernel_tflite("add", {"HW": 2, "CIN": 8}) is not None
    with pytest.raises(ValueError, match="CIN"):
        kg.write_kernel_tflite("add", {"HW": 2})


def test_written_and_converted_models_run_equally_fast():
    """Interleaved rounds of the same kernel written both ways: medians within a loose bound (the host is
    noisy; a wrong padding, layout or op choice would be off by far more)."""
    import time

    from ai_edge_litert.interpreter import Interpreter

    cases = [
        ("conv-bn-relu", {"HW": 28, "CIN": 32, "COUT": 64, "KERNEL_SIZE": 3, "STRIDES": 1}),
        ("dwconv-bn-relu6", {"HW": 56, "CIN": 64, "KERNEL_SIZE": 3, "STRIDES": 2}),
        ("se", {"HW": 14, "CIN": 96}),
    ]
    for kernel, config in cases:
        runners = []
        for data in (
            kg.write_kernel_tflite(kernel, config),
            keras_to_tflite_bytes(kg.build_kernel_model(kernel, config)),
        ):
            interpreter = Interpreter(model_content=data, num_threads=1)
            interpreter.allocate_tensors()
            for detail in interpreter.get_input_details():  # as the runner does: never garbage (denormals, NaN)
                shape = detail["shape"]
                interpreter.set_tensor(detail["index"], np.random.default_rng(0).standard_normal(shape, np.float32))
            for _ in range(20):
                interpreter.invoke()
            runners.append(interpreter)
        times: list[list[float]] = [[], []]
        for _ in range(30):
            for i, interpreter in enumerate(runners):
                t0 = time.perf_counter()
                for _ in range(5):
                    interpreter.invoke()
                times[i].append(time.perf_counter() - t0)
        ratio = float(np.median(times[0]) / np.median(times[1]))
        assert 0.7 < ratio < 1.4, (kernel, ratio)


def test_a_kernel_job_is_written_without_tensorflow_and_a_degenerate_one_built_with_it(tmp_path):
    from nnmeter.backends.base import ConversionJob
    from nnmeter.backends.conversion import ConversionPool

    jobs = [
        ConversionJob(name, tmp_path, kg.build_kernel_model, (kernel, config), write=kg.write_kernel_tflite)
        for name, kernel, config in (
            ("direct", "conv-bn-relu", {"HW": 7, "CIN": 4, "COUT": 8, "KERNEL_SIZE": 3, "STRIDES": 1}),
            ("keras", "add", {"HW": 1, "CIN": 4}),
        )
    ]
    pool = ConversionPool("tflite", 1, [])
    try:
        direct, keras = pool.run(jobs)
    finally:
        pool.close()
    assert direct.ok and not direct.built_with_tensorflow
    assert direct.model.path.read_bytes() == kg.write_kernel_tflite(*jobs[0].build_args)
    assert keras.ok and keras.built_with_tensorflow
    assert [op[0] for op in _graph(keras.model.path.read_bytes())][:2] == ["RESHAPE", "ADD"]

"""Converters: the same architecture gives the same kernels from Keras, .tflite, ONNX and SavedModel;
the nn-Meter IR sample converts; bad inputs get one clear error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from nnmeter.errors import ModelFileError
from nnmeter.predictor.converters import to_graph
from nnmeter.predictor.detection import detect
from nnmeter.predictor.ir import Graph
from nnmeter.predictor.rules import default_rules

pytestmark = pytest.mark.integration

NNMETER_IR = Path("/work/shared/testdata/nnmeter-ir/mobilenetv3small_0.json")
HW, C, EXPAND = 16, 8, 24


def kernels_of(model, input_shape=None):
    det = detect(to_graph(model, input_shape), default_rules())
    assert not det.unsupported, [(k.ops, k.problem) for k in det.unsupported]
    return [(k.kernel, k.config) for k in det.kernels]


# --- the same two blocks in Keras and in hand-written ONNX (NCHW, as PyTorch exports) ---------------


def keras_model(kind: str):
    import keras
    from keras import layers

    inp = keras.Input((HW, HW, C), batch_size=1)
    if kind == "mobilenetv2":
        y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(EXPAND, 1, use_bias=False)(inp)))
        y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same")(y)))
        y = layers.BatchNormalization()(layers.Conv2D(C, 1, use_bias=False)(y))
        y = layers.Add()([inp, y])
        y = layers.DepthwiseConv2D(3, strides=2, padding="same")(y)
    else:  # resnet basic block, then the head
        y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(C, 3, padding="same")(inp)))
        y = layers.BatchNormalization()(layers.Conv2D(C, 3, padding="same")(y))
        y = layers.ReLU()(layers.Add()([inp, y]))
        y = layers.MaxPooling2D(3, strides=2, padding="same")(y)
    y = layers.GlobalAveragePooling2D()(y)
    y = layers.Dense(10)(y)
    return keras.Model(inp, y)


def onnx_model(kind: str, batch: int | str = 1):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    rng = np.random.default_rng(0)

    def const(name, shape):
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    def conv(x, cin, cout, k, s, name, group=1):
        return node(
            "Conv",
            [x, const(f"{name}.w", (cout, cin // group, k, k)), const(f"{name}.b", (cout,))],
            name,
            kernel_shape=[k, k],
            strides=[s, s],
            pads=[k // 2] * 4,
            group=group,
        )

    def bn(x, c, name):
        return node("BatchNormalization", [x, *(const(f"{name}.{p}", (c,)) for p in "sbmv")], name)

    def relu6(x, name):
        inits.extend(
            [
                numpy_helper.from_array(np.array(0, np.float32), f"{name}.lo"),
                numpy_helper.from_array(np.array(6, np.float32), f"{name}.hi"),
            ]
        )
        return node("Clip", [x, f"{name}.lo", f"{name}.hi"], name)

    x = "input"
    if kind == "mobilenetv2":
        y = relu6(bn(conv(x, C, EXPAND, 1, 1, "pw1"), EXPAND, "bn1"), "act1")
        y = relu6(bn(conv(y, EXPAND, EXPAND, 3, 1, "dw", group=EXPAND), EXPAND, "bn2"), "act2")
        y = bn(conv(y, EXPAND, C, 1, 1, "pw2"), C, "bn3")
        y = node("Add", [x, y], "add")
        y = conv(y, C, C, 3, 2, "dw2", group=C)
    else:
        y = node("Relu", [bn(conv(x, C, C, 3, 1, "c1"), C, "bn1")], "act1")
        y = bn(conv(y, C, C, 3, 1, "c2"), C, "bn2")
        y = node("Relu", [node("Add", [x, y], "add")], "act2")
        y = node("MaxPool", [y], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = node("Flatten", [node("GlobalAveragePool", [y], "gap")], "flat")
    y = node("Gemm", [y, const("fc.w", (10, C)), const("fc.b", (10,))], "fc", transB=1)
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, C, HW, HW])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import tensorflow as tf

    out = tmp_path_factory.mktemp("models")
    made = {}
    for kind in ("mobilenetv2", "resnet"):
        model = keras_model(kind)
        model.save(out / f"{kind}.keras")
        (out / f"{kind}.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        (out / f"{kind}.onnx").write_bytes(onnx_model(kind).SerializeToString())
        made[kind] = model
    return out, made


@pytest.mark.parametrize("kind", ["mobilenetv2", "resnet"])
def test_keras_tflite_onnx_give_the_same_kernels(files, kind):
    folder, models = files
    from_keras = kernels_of(models[kind])
    assert kernels_of(folder / f"{kind}.keras") == from_keras
    assert kernels_of(folder / f"{kind}.tflite") == from_keras
    assert kernels_of(folder / f"{kind}.onnx") == from_keras
    assert kernels_of(onnx_model(kind)) == from_keras  # the ModelProto itself
    expected = {
        "mobilenetv2": ["conv-bn-relu6", "dwconv-bn-relu6", "conv-bn", "add", "dwconv-bn", "global-avgpool", "fc"],
        "resnet": ["conv-bn-relu", "conv-bn", "addrelu", "maxpool", "global-avgpool", "fc"],
    }[kind]
    assert [k for k, _ in from_keras] == expected
    first = from_keras[0][1]
    assert first["HW"] == HW and first["CIN"] == C and first["COUT"] == (EXPAND if kind == "mobilenetv2" else C)


def test_savedmodel_gives_the_same_kernels(files, tmp_path):
    folder, models = files
    models["mobilenetv2"].export(tmp_path / "saved")
    assert kernels_of(tmp_path / "saved") == kernels_of(models["mobilenetv2"])


def test_tflite_fused_activation_is_a_node_and_bn_is_absent(files):
    graph = to_graph(files[0] / "resnet.tflite")
    counts = graph.op_counts()
    assert counts.get("bn", 0) == 0 and counts["conv"] == 2 and counts["relu"] == 2


def test_nnmeter_ir_sample_converts_and_its_kernels_match_its_ops():
    raw = json.loads(NNMETER_IR.read_text())
    types = [v["attr"]["type"] for v in raw.values()]
    graph = to_graph(raw)
    counts = graph.op_counts()
    n_se = types.count("AvgPool")  # each SE block pools its input globally
    assert counts["se"] == n_se == 9
    assert counts["conv"] == types.count("Conv2D") - 2 * n_se  # two 1x1 convs per SE gate
    assert counts["dwconv"] == types.count("DepthwiseConv2dNative")
    assert counts["bn"] == types.count("FusedBatchNorm")
    assert counts["fc"] == types.count("MatMul") == 1
    assert not any(op[0].isupper() for op in counts), counts  # every TF op found its vocabulary op
    det = detect(graph, default_rules())
    assert not det.unsupported
    kinds = [k.kernel for k in det.kernels]
    weighted = sum(1 for k in kinds if k.startswith(("conv", "dwconv")))
    assert weighted == counts["conv"] + counts["dwconv"]  # each conv heads exactly one kernel
    assert kinds[0] == "conv-bn-hswish" and det.kernels[0].config == {
        "HW": 224,
        "CIN": 3,
        "COUT": 16,
        "KERNEL_SIZE": 3,
        "STRIDES": 2,
    }
    assert kinds.count("se") == 9 and kinds[-1] == "fc"
    assert det.free_nodes == ["Reshape"]
    # the IR JSON round-trips
    again = Graph.from_dict(json.loads(json.dumps(graph.to_dict())))
    assert again.to_dict() == graph.to_dict()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch (optional extra) is not installed")
def test_torch_module_through_onnx():
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(C, C, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(C)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)

    kernels = kernels_of(Block(), (1, C, HW, HW))
    assert [k for k, _ in kernels] == ["conv-bn", "addrelu"]
    with pytest.raises(ModelFileError, match="input_shape"):
        to_graph(Block())


def test_bad_inputs(tmp_path):
    not_model = tmp_path / "notes.txt"
    not_model.write_text("hello")
    with pytest.raises(ModelFileError, match="not a model file"):
        to_graph(not_model)
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"0123456789abcdef")
    with pytest.raises(ModelFileError, match="not a TFLite flatbuffer"):
        to_graph(fake)
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
        to_graph(tmp_path / "bad.onnx")
    with pytest.raises(ModelFileError, match="no such file"):
        to_graph(tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match="cannot predict a builtins.int"):
        to_graph(42)


def test_dynamic_input_shape_needs_input_shape():
    dynamic = onnx_model("resnet", batch="N")
    assert kernels_of(dynamic) == kernels_of(onnx_model("resnet"))  # a dynamic batch alone is fine (1)
    import onnx

    spatial = onnx.ModelProto.FromString(dynamic.SerializeToString())
    spatial.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(ModelFileError, match="dynamic shape"):
        to_graph(spatial)
    assert kernels_of(spatial, (1, C, HW, HW)) == kernels_of(onnx_model("resnet"))


def test_a_dynamic_batch_reshape_is_shape_arithmetic_not_kernels(tmp_path):
    """Keras converted without batch_size=1 computes its reshapes' shapes at run time (SHAPE, STRIDED_SLICE,
    PACK in .tflite; Shape, Gather, Concat in ONNX): no kernels, and no op the predictor cannot predict."""
    import keras
    import onnx
    import tensorflow as tf
    from keras import layers
    from onnx import TensorProto, helper, numpy_helper

    def head(batch_size):
        inp = keras.Input((HW, HW, C), batch_size=batch_size)
        y = layers.Reshape((1, 1, C))(layers.GlobalAveragePooling2D()(layers.Conv2D(C, 3, padding="same")(inp)))
        return keras.Model(inp, layers.Reshape((10,))(layers.Conv2D(10, 1)(y)))

    files = {}
    for batch_size in (None, 1):
        files[batch_size] = tmp_path / f"head-{batch_size}.tflite"
        files[batch_size].write_bytes(tf.lite.TFLiteConverter.from_keras_model(head(batch_size)).convert())
    graph_ops = {n.op for n in to_graph(files[None]).nodes.values()}
    assert kernels_of(files[None]) == kernels_of(files[1]) and not graph_ops & {"SHAPE", "STRIDED_SLICE", "PACK"}

    w = numpy_helper.from_array(np.ones((C, C, 3, 3), np.float32), "w")
    tail = numpy_helper.from_array(np.array([-1], np.int64), "tail")
    index = numpy_helper.from_array(np.array([0], np.int64), "index")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["conv"], ["shape"]),
        helper.make_node("Gather", ["shape", "index"], ["batch"]),
        helper.make_node("Concat", ["batch", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["conv", "target"], ["flat"]),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "dynamic",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", C, HW, HW])],
            [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", C * HW * HW])],
            [w, tail, index],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)
    assert len(kernels_of(model)) == 1  # the conv; kernels_of fails on any op it cannot predict


def test_a_crop_of_a_feature_map_is_the_crop_kernel_from_keras_tflite_and_onnx(tmp_path):
    """NASNet's adjust block pads one row and column at the end and crops one at the start (Cropping2D: a
    STRIDED_SLICE in .tflite, a Slice in ONNX): a crop kernel of the padded side. Other windows are the crop
    copying the same bytes (a stand-in); a slice of channels is not a crop and is reported."""
    import keras
    import onnx
    import tensorflow as tf
    from keras import layers
    from onnx import TensorProto, helper, numpy_helper

    inp = keras.Input((HW, HW, C), batch_size=1)
    y = layers.Cropping2D(((1, 0), (1, 0)))(layers.ZeroPadding2D(((0, 1), (0, 1)))(inp))
    y = layers.Cropping2D(((2, 2), (2, 2)))(y)
    model = keras.Model(inp, y)
    path = tmp_path / "crop.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    expected = [("pad", {"HW": HW, "CIN": C}), ("crop", {"HW": HW + 1, "CIN": C}), ("crop", {"HW": HW - 3, "CIN": C})]
    assert kernels_of(model) == expected
    assert kernels_of(path) == expected
    det = detect(to_graph(path), default_rules())
    assert [bool(k.stand_in) for k in det.kernels] == [False, False, True]

    consts = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (
            ("starts", [1, 1]),
            ("ends", [HW, HW]),
            ("axes", [2, 3]),
            ("c_starts", [0]),
            ("c_ends", [4]),
            ("c_axes", [1]),
        )
    ]
    nodes = [
        helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["crop"]),
        helper.make_node("Slice", ["crop", "c_starts", "c_ends", "c_axes"], ["half"]),
    ]
    onnx_model = helper.make_model(
        helper.make_graph(
            nodes,
            "crops",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C, HW, HW])],
            [helper.make_tensor_value_info("half", TensorProto.FLOAT, [1, 4, HW - 1, HW - 1])],
            consts,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(onnx_model)
    det = detect(to_graph(onnx_model), default_rules())
    assert [(k.kernel, k.config) for k in det.supported] == [("crop", {"HW": HW, "CIN": C})]
    assert "is not a crop of a feature map" in det.unsupported[0].problem


# --- malformed model files: one ModelFileError naming the file, never another exception -----------------------

TINY_TFLITE = Path(__file__).parent.parent / "nnmeter" / "configs" / "models" / "tiny_cnn.tflite"


def _refused(path, *match):
    """``to_graph(path)`` raises a one-line ModelFileError naming the file (and saying each of ``match``)."""
    with pytest.raises(ModelFileError) as err:
        to_graph(path)
    message = err.value.message
    assert "\n" not in message and str(path) in message, message
    for text in match:
        assert text in message, message
    return message


def test_a_truncated_or_changed_tflite_is_a_model_file_error(tmp_path):
    """Before: the flatbuffer reader raised struct.error, KeyError or IndexError from deep inside."""
    data = TINY_TFLITE.read_bytes()
    path = tmp_path / "damaged.tflite"
    for size in range(512, len(data), 512):
        path.write_bytes(data[:size])
        _refused(path)
    changed = bytearray(data)
    changed[-16:] = b"\xff" * 16  # the end of the file: the last tables' offsets and lengths
    path.write_bytes(bytes(changed))
    _refused(path, "damaged TFLite file")
    assert kernels_of(TINY_TFLITE)  # the file itself still converts


def _ir(**changes):
    """A small nn-Meter IR graph: input -> conv -> relu, with ``changes`` applied to the nodes' attr dicts."""

    def node(tf_type, inbounds, outbounds, dims, **attrs):
        return {
            "inbounds": inbounds,
            "outbounds": outbounds,
            "attr": {"name": "", "type": tf_type, "attr": attrs, "input_shape": [dims], "output_shape": [dims]},
        }

    graph = {
        "input": node("Placeholder", [], ["conv"], [1, 8, 8, 4], shape=[1, 8, 8, 4]),
        "conv": node("Conv2D", ["input"], ["relu"], [1, 8, 8, 4], kernel_shape=[3, 3], strides=[1, 1, 1, 1]),
        "relu": node("Relu", ["conv"], [], [1, 8, 8, 4]),
    }
    for key, change in changes.items():
        change(graph[key])
    return graph


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda n: n["attr"].update(attr=[1, 2]), "node 'conv': attr.attr: [1, 2] is not a mapping"),
        (lambda n: n.update(attr=["Conv2D"]), "node 'conv': attr: ['Conv2D'] is not a mapping"),
        (lambda n: n["attr"].update(input_shape=["1,8,8,4"]), "node 'conv': a shape: '1,8,8,4' is not a list"),
        (lambda n: n["attr"].update(output_shape=[[1, "8", 8, 4]]), "'8' in [1, '8', 8, 4] is not a dimension"),
        (lambda n: n["attr"].update(output_shape=[[1, 10**30, 8, 4]]), "is not a dimension"),
        (lambda n: n["attr"]["attr"].update(strides="22"), "'22' as a size or stride"),
        (lambda n: n.update(inbounds="input"), "inbounds: 'input' is not a list"),
        (lambda n: n.update(inbounds=[["input"]]), "an inbound ['input'] is not a name"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_nnmeter_ir_of_the_wrong_types_is_a_model_file_error(tmp_path, change, problem):
    """Before: ``attr`` as a list raised AttributeError and shapes as strings a TypeError (or were read digit by
    digit)."""
    path = tmp_path / "model.json"
    path.write_text(json.dumps(_ir(conv=change)))
    _refused(path, problem)


def test_a_cycle_in_nnmeter_ir_is_refused_naming_its_nodes(tmp_path):
    """Before: a two-node cycle converted with exit 0, its edge silently dropped."""
    assert [k for k, _ in kernels_of(_ir())] == ["conv-bn-relu"]  # the bn-less type is named with bn
    path = tmp_path / "cycle.json"
    path.write_text(json.dumps(_ir(conv=lambda n: n.update(inbounds=["input", "relu"]))))
    _refused(path, "the graph has a cycle: 'relu' -> 'conv' -> 'relu'")
    path.write_text(json.dumps(_ir(relu=lambda n: n.update(inbounds=["relu"]))))
    _refused(path, "the graph has a cycle: 'relu' -> 'relu'")
    path.write_text("[" * 100_000 + "]" * 100_000)
    _refused(path, "nested too deep")


def test_a_damaged_onnx_is_a_model_file_error_and_external_data_is_never_read(tmp_path):
    from onnx import TensorProto, helper

    data = onnx_model("resnet").SerializeToString()
    path = tmp_path / "damaged.onnx"
    for size in (len(data) // 3, len(data) - 7):
        path.write_bytes(data[:size])
        _refused(path)
    path.write_bytes(data.replace(b"MaxPool", b"Max\xc1ool"))  # not UTF-8: protobuf gives the op as bytes
    _refused(path, "op b'Max\\xc1ool' is not a name")
    # a weight stored in another file is never read: the converter needs only its shape
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8, 8, 3, 3])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")  # absent: reading it would fail
    conv = helper.make_node("Conv", ["input", "w"], ["out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv],
        "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])],
        [weight],
    )
    path = tmp_path / "external.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert kernels_of(path) == [("conv-bn", {"HW": 8, "CIN": 8, "COUT": 8, "KERNEL_SIZE": 3, "STRIDES": 1})]

"""The quickstart covers the mobile models people use, in their default form: every keras.applications mobile
architecture (MobileNet V1/V2/V3 with their preprocessing layers, EfficientNet-B0, NASNet-Mobile, DenseNet121)
and a ShuffleNet-style net whose channel splits are strided slices, each read from the Keras model, its .tflite
and its ONNX file (tf2onnx, as a user converts it: NHWC input). Detection with the quickstart's kernel list,
the kernels the device's rules form, must leave nothing unsupported.

Rules: those tflite-local measures (conv and dwconv fuse with bn, relu and relu6; nothing else; MON 0), and,
for a device that fuses more, every pair of the quickstart rule tester's ops that a kernel type names (pairs
of ops outside its list always read as not fused)."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from importlib import resources

import pytest
import yaml

from nnmeter import ops
from nnmeter.evaluation.zoo import MOBILE_APPLICATIONS
from nnmeter.predictor.converters import to_graph
from nnmeter.predictor.detection import detect, unfused_pairs
from nnmeter.predictor.rules import MON_NONE, FusionRules, MonRule, PairRule, default_rules

pytestmark = pytest.mark.integration

HW = 48
ARCHITECTURES = (*MOBILE_APPLICATIONS, "shufflenet-slices")
FORMATS = ("keras", "tflite", "onnx")


def _quickstart() -> dict:
    return yaml.safe_load(resources.files("nnmeter.configs").joinpath("quickstart.yaml").read_text())


def _tflite_local_rules() -> FusionRules:
    fused = [(a, b) for a in (ops.CONV, ops.DWCONV) for b in (ops.BN, ops.RELU, ops.RELU6)]
    return FusionRules(pairs={p: PairRule(*p, True) for p in fused}, mon=MonRule(MON_NONE), source="tflite-local")


def _fusing_rules(tested_ops: list[str]) -> FusionRules:
    pairs = {p: r for p, r in default_rules().pairs.items() if p[0] in tested_ops and p[1] in tested_ops}
    return FusionRules(pairs=pairs, mon=MonRule(MON_NONE), source="fusing")


RULES = {"tflite-local": _tflite_local_rules, "fusing": lambda: _fusing_rules(_quickstart()["rules"]["ops"])}


def _shufflenet_slices():
    """ShuffleNetV2 units whose split is two strided slices of the channels (``x[..., :c/2]``, ``x[..., c/2:]``)."""
    import keras
    from keras import layers

    from nnmeter.kernel_gen.builders import build_op_layer

    inputs = layers.Input((HW, HW, 3))
    c = 48
    x = layers.Conv2D(c, 3, 2, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for _ in range(2):
        left, right = x[..., : c // 2], x[..., c // 2 :]
        y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(c // 2, 1, use_bias=False)(right)))
        y = layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(y))
        y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(c // 2, 1, use_bias=False)(y)))
        x = build_op_layer("channelshuffle", layers.Concatenate()([left, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model_files(request, tmp_path_factory):
    """The architecture as a keras.Model, a .tflite and an ONNX file."""
    import keras
    import tensorflow as tf
    import tf2onnx

    name = request.param
    keras.utils.set_random_seed(0)
    if name == "shufflenet-slices":
        net = _shufflenet_slices()
    else:  # their default form: MobileNetV3's Rescaling, EfficientNet's Rescaling and Normalization included
        net = getattr(keras.applications, name)(weights=None, input_shape=(HW, HW, 3))
    folder = tmp_path_factory.mktemp(name)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        (folder / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(net).convert())
        tf2onnx.convert.from_keras(net, output_path=str(folder / "model.onnx"))
    return name, {"keras": net, "tflite": folder / "model.tflite", "onnx": folder / "model.onnx"}


@pytest.mark.parametrize("rules_name", sorted(RULES))
def test_quickstart_kernels_cover_the_mobile_architectures(model_files, rules_name):
    name, files = model_files
    rules = RULES[rules_name]()
    listed = _quickstart()["kernels"]["kernels"]
    formed = frozenset(k for k in listed if not unfused_pairs(k, rules))  # what the kernels step trains
    kernels = {}
    for fmt in FORMATS:
        graph = to_graph(files[fmt], input_shape=(1, HW, HW, 3) if fmt == "tflite" else None)
        detection = detect(graph, rules, formed)
        left = [(k.name, "-".join(k.ops), k.problem) for k in detection.unsupported]
        assert not left, f"{name} ({fmt}, {rules_name} rules): {len(left)} unsupported, e.g. {left[:3]}"
        kernels[fmt] = Counter(k.kernel for k in detection.kernels)
    if name == "shufflenet-slices":  # the slices are the split kernel, in every format, not two crops
        assert all(k[ops.SPLIT] == 2 and not k[ops.CROP] for k in kernels.values()), kernels
    if name == "MobileNetV3Small":  # its squeeze-excite blocks are se kernels in every format
        assert len({k[ops.SE] for k in kernels.values()}) == 1 and kernels["tflite"][ops.SE] > 0, kernels
    if name == "EfficientNetB0":  # swish activations and the gate's sigmoid and multiply, in every format
        assert all(k["swish"] and k["sigmoid"] and k["mul"] for k in kernels.values()), kernels

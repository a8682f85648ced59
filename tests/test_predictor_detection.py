"""Kernel detection on a hand-built IR graph with a small hand-written rules file: the partition is
checked by hand, for each multiple-outbound (MON) policy; patterns collapse to one op."""

from __future__ import annotations

import json

import pytest

from nnmeter.predictor.detection import detect, unfused_pairs
from nnmeter.predictor.ir import Graph, Node
from nnmeter.predictor.patterns import recognise
from nnmeter.predictor.rules import load_rules

pytestmark = pytest.mark.unit


def rules_file(tmp_path, mon):
    # nn-Meter's format: BF_<op1>_<op2> with obey, plus MON
    data = {
        "BF_conv_bn": {"obey": True},
        "BF_conv_relu": {"obey": True},
        "BF_dwconv_bn": {"obey": True},
        "BF_dwconv_relu6": {"obey": False},
        "BF_add_relu": {"obey": True},
        "BF_conv_add": {"obey": True},
        "MON": {"obey": mon},
    }
    path = tmp_path / "fusion_rules.json"
    path.write_text(json.dumps(data))
    return load_rules(path)


def graph() -> Graph:
    g = Graph("hand", inputs={"x": [1, 28, 28, 16]})
    a, b = [1, 28, 28, 16], [1, 28, 28, 32]

    def add(name, op, inputs, shapes, out, **attrs):
        g.add(Node(name, op, inputs, shapes, [out], attrs))

    add("conv1", "conv", ["x"], [a], b, kernel_size=[3, 3], strides=[1, 1])
    add("bn1", "bn", ["conv1"], [b], b)
    add("relu1", "relu", ["bn1"], [b], b)  # read by dw and add
    add("dw", "dwconv", ["relu1"], [b], b, kernel_size=[3, 3], strides=[1, 1], depth_multiplier=1)
    add("bn2", "bn", ["dw"], [b], b)
    add("act2", "relu6", ["bn2"], [b], b)  # dwconv_relu6 is not fused
    add("conv2", "conv", ["act2"], [b], b, kernel_size=[1, 1], strides=[1, 1])
    add("add", "add", ["relu1", "conv2"], [b, b], b)  # two inputs: starts a kernel
    add("relu3", "relu", ["add"], [b], b)
    add("conv3", "conv", ["relu3"], [b], b, kernel_size=[1, 1], strides=[1, 1])  # read by relu4 and add2
    add("relu4", "relu", ["conv3"], [b], b)
    add("add2", "add", ["relu4", "conv3"], [b, b], b)
    add("gap", "global-avgpool", ["add2"], [b], [1, 1, 1, 32])
    add("flat", "reshape", ["gap"], [[1, 1, 1, 32]], [1, 32])
    add("fc", "fc", ["flat"], [[1, 32]], [1, 10])
    g.outputs = ["fc"]
    return g.check()


COMMON_HEAD = [
    (["conv1", "bn1", "relu1"], "conv-bn-relu"),
    (["dw", "bn2"], "dwconv-bn"),  # dw reads relu1, but relu1's kernel cannot take a dwconv anyway
    (["act2"], "relu6"),
    (["conv2"], "conv-bn"),  # a conv alone: the type with bn is preferred
    (["add", "relu3"], "addrelu"),
]
TAIL = [(["add2"], "add"), (["gap"], "global-avgpool"), (["fc"], "fc")]


@pytest.mark.parametrize(
    "mon, middle",
    [
        (0, [(["conv3"], "conv-bn"), (["relu4"], "relu")]),
        (1, [(["conv3", "relu4"], "conv-bn-relu")]),  # fused with its first consumer only
        (2, [(["conv3"], "conv-bn"), (["conv3", "relu4"], "conv-bn-relu")]),  # computed again for relu4
    ],
)
def test_hand_checked_partition(tmp_path, mon, middle):
    det = detect(graph(), rules_file(tmp_path, mon))
    got = [(k.nodes, k.kernel) for k in det.kernels]
    expected = COMMON_HEAD + middle + TAIL
    assert sorted(got) == sorted(expected)
    assert det.free_nodes == ["flat"]
    conv1 = next(k for k in det.kernels if k.nodes[0] == "conv1")
    assert conv1.config == {"HW": 28, "CIN": 16, "COUT": 32, "KERNEL_SIZE": 3, "STRIDES": 1}
    dw = next(k for k in det.kernels if k.nodes[0] == "dw")
    assert dw.config == {"HW": 28, "CIN": 32, "KERNEL_SIZE": 3, "STRIDES": 1}


def test_a_kernel_type_with_an_unfused_pair_is_never_detected(tmp_path):
    rules = rules_file(tmp_path, 0)
    assert unfused_pairs("conv-bn-relu", rules) == []
    assert unfused_pairs("conv-bn", rules) == []  # serves a bare conv: needs no rule
    assert unfused_pairs("dwconv-bn-relu6", rules) == [("dwconv", "relu6")]  # the bn is folded
    assert unfused_pairs("conv-bn-hswish", rules) == [("conv", "hswish")]  # a pair the rules never tested
    for mon in (0, 1, 2):
        detected = {k.kernel for k in detect(graph(), rules_file(tmp_path, mon)).kernels}
        assert detected and all(unfused_pairs(k, rules) == [] for k in detected)
        assert "dwconv-bn-relu6" not in detected  # the graph has dw -> bn -> relu6, run as two kernels


def test_available_kernels_decide_between_equivalent_types(tmp_path):
    rules = rules_file(tmp_path, 0)
    det = detect(
        graph(),
        rules,
        available={
            "conv-relu",
            "conv-block",
            "dwconv-block",
            "relu6",
            "addrelu",
            "relu",
            "add",
            "global-avgpool",
            "fc",
        },
    )
    kinds = {k.nodes[0]: k.kernel for k in det.kernels}
    assert kinds["conv1"] == "conv-relu" and kinds["conv2"] == "conv-block" and kinds["dw"] == "dwconv-block"
    assert not det.unsupported
    det = detect(graph(), rules, available={"fc"})
    missing = {k.nodes[0]: k.problem for k in det.unsupported}
    assert "no regressor for conv-bn-relu or conv-relu" in missing["conv1"]


def test_unknown_op_and_bad_config_are_reported(tmp_path):
    g = Graph("odd", inputs={"x": [1, 14, 14, 8]})
    g.add(Node("t", "Transpose", ["x"], [[1, 14, 14, 8]], [[1, 8, 14, 14]]))
    g.add(Node("big", "conv", ["x"], [[1, 14, 14, 8]], [[1, 14, 14, 8]], {"kernel_size": [11, 11], "strides": [1, 1]}))
    g.add(
        Node(
            "gc",
            "conv",
            ["x"],
            [[1, 14, 14, 8]],
            [[1, 14, 14, 8]],
            {"kernel_size": [3, 3], "strides": [1, 1], "groups": 2},
        )
    )
    det = detect(g, rules_file(tmp_path, 0))
    problems = {k.nodes[0]: k.problem for k in det.unsupported}
    assert "'Transpose' is not in the vocabulary" in problems["t"]
    assert "KERNEL_SIZE=11 is not valid" in problems["big"]
    assert "grouped conv" in problems["gc"]


def test_patterns_collapse_once():
    g = Graph("p", inputs={"x": [1, 7, 7, 8]})
    s = [[1, 7, 7, 8]]
    one = [[1, 1, 1, 8]]
    g.add(Node("a", "add", ["x"], s, s, {"constant": 3.0}))
    g.add(Node("r", "relu6", ["a"], s, s))
    g.add(Node("m", "mul", ["r"], s, s, {"constant": 1 / 6}))
    g.add(Node("hs", "mul", ["x", "m"], s + s, s))  # hswish(x)
    g.add(Node("sig", "sigmoid", ["hs"], s, s))
    g.add(Node("sw", "mul", ["hs", "sig"], s + s, s))  # swish
    g.add(Node("gap", "global-avgpool", ["sw"], s, one))
    g.add(Node("c1", "conv", ["gap"], one, [[1, 1, 1, 2]], {"kernel_size": [1, 1], "strides": [1, 1]}))
    g.add(Node("c1r", "relu", ["c1"], [[1, 1, 1, 2]], [[1, 1, 1, 2]]))
    g.add(Node("c2", "conv", ["c1r"], [[1, 1, 1, 2]], one, {"kernel_size": [1, 1], "strides": [1, 1]}))
    g.add(Node("gate", "sigmoid", ["c2"], one, one))
    g.add(Node("se", "mul", ["sw", "gate"], s + one, s))  # squeeze-and-excitation
    g.add(Node("r1", "reshape", ["se"], s, [[1, 7, 7, 2, 4]]))
    g.add(Node("tr", "Transpose", ["r1"], [[1, 7, 7, 2, 4]], [[1, 7, 7, 4, 2]]))
    g.add(Node("r2", "reshape", ["tr"], [[1, 7, 7, 4, 2]], s))  # channel shuffle
    g.outputs = ["r2"]
    recognise(g.check())
    assert [(n.name, n.op, n.inputs) for n in g.nodes.values()] == [
        ("hs", "hswish", ["x"]),
        ("sw", "swish", ["hs"]),
        ("se", "se", ["sw"]),
        ("r2", "channelshuffle", ["se"]),
    ]
    assert recognise(g).op_counts() == {"hswish": 1, "swish": 1, "se": 1, "channelshuffle": 1}


@pytest.mark.parametrize("squeeze, collapses", [(12, True), (16, True), (2, False)])
def test_se_gate_is_the_se_kernel_only_at_the_kernels_squeeze_width(squeeze, collapses):
    """MobileNetV3 squeezes 48 channels to 12 or 16 (a quarter, rounded to 8): one ``se``. EfficientNet squeezes
    them to 2 (a quarter of the block's input): its parts, so that its weights are not counted 6x."""
    g = Graph("se", inputs={"x": [1, 7, 7, 48]})
    s, one, mid = [[1, 7, 7, 48]], [[1, 1, 1, 48]], [[1, 1, 1, squeeze]]
    g.add(Node("gap", "global-avgpool", ["x"], s, one))
    g.add(Node("c1", "conv", ["gap"], one, mid, {"kernel_size": [1, 1], "strides": [1, 1]}))
    g.add(Node("c1r", "relu", ["c1"], mid, mid))
    g.add(Node("c2", "conv", ["c1r"], mid, one, {"kernel_size": [1, 1], "strides": [1, 1]}))
    g.add(Node("gate", "sigmoid", ["c2"], one, one))
    g.add(Node("se", "mul", ["x", "gate"], s + one, s))
    g.outputs = ["se"]
    counts = recognise(g.check()).op_counts()
    assert counts == ({"se": 1} if collapses else {"global-avgpool": 1, "conv": 2, "relu": 1, "sigmoid": 1, "mul": 1})


def test_non_square_conv_and_wide_concat_get_stand_ins_of_the_same_work(tmp_path):
    from nnmeter import ops

    g = Graph("inception-ish", inputs={"x": [1, 17, 17, 160]})
    s, out = [[1, 17, 17, 160]], [[1, 17, 17, 192]]
    g.add(Node("c17", "conv", ["x"], s, out, {"kernel_size": [1, 7], "strides": [1, 1]}))
    g.add(Node("c71", "conv", ["x"], s, out, {"kernel_size": [7, 1], "strides": [1, 1]}))
    g.add(Node("c13", "conv", ["x"], s, out, {"kernel_size": [1, 3], "strides": [1, 1]}))
    g.add(Node("dw17", "dwconv", ["x"], s, s, {"kernel_size": [1, 7], "strides": [1, 1], "depth_multiplier": 1}))
    six = [[1, 17, 17, 44]] * 6
    g.add(Node("cat", "concat", ["c17", "c71", "c13", "x", "c17", "c71"], six, [[1, 17, 17, 264]], {"axis": 3}))
    det = detect(g, rules_file(tmp_path, 0))
    by_node = {k.nodes[0]: k for k in det.kernels}
    for name in ("c17", "c71"):  # 7 taps: the 3x3 conv with the same reduction length, 160 * 7 / 9 channels
        assert by_node[name].config == {"HW": 17, "CIN": 124, "COUT": 192, "KERNEL_SIZE": 3, "STRIDES": 1}
        assert "predicted as the 3x3 conv with CIN 124" in by_node[name].stand_in
        twin_gemm = ops.gemm_shape("conv-bn", by_node[name].config)
        assert twin_gemm[:2] == (17 * 17, 192) and abs(twin_gemm[2] - 160 * 7) <= 9
    assert by_node["c13"].config["KERNEL_SIZE"] == 3 and by_node["c13"].config["CIN"] == round(160 * 3 / 9)
    assert by_node["cat"].config == {"HW": 17, "CINS": [44, 44, 44, 132]}
    assert "6-input concat" in by_node["cat"].stand_in
    assert "not square" in by_node["dw17"].problem  # a depthwise conv has no matrix product to match

"""Patterns of the mobile models' default forms, on hand-built IR graphs: an affine map by constants (a
``Rescaling`` of the input, a ``Normalization``, a bn whose zero shift a converter dropped) is the bn op, and
two strided slices taking the halves of a map's channels (a ShuffleNet's split) are one split node that the
readers of both read."""

from __future__ import annotations

import pytest

from nnmeter.predictor.ir import Graph, Node
from nnmeter.predictor.patterns import recognise

pytestmark = pytest.mark.unit

S = [1, 16, 16, 8]


def _graph(nodes: list[Node], outputs: list[str]) -> Graph:
    g = Graph("p", inputs={"x": S})
    for n in nodes:
        g.add(n)
    g.outputs = outputs
    return g.check()


@pytest.mark.parametrize(
    "first, second",
    [
        (("mul", 1 / 127.5), ("add", -1.0)),  # Rescaling(1 / 127.5, offset=-1)
        (("add", "tensor"), ("mul", "tensor")),  # Normalization: (x - mean) / std
        (("mul", "tensor"), ("add", "tensor")),  # a bn spelled out
    ],
)
def test_an_affine_map_by_constants_is_a_bn(first, second):
    g = _graph(
        [
            Node("a", first[0], ["x"], [S], [S], {"constant": first[1]}),
            Node("b", second[0], ["a"], [S], [S], {"constant": second[1]}),
            Node("c", "conv", ["b"], [S], [S], {"kernel_size": [3, 3], "strides": [1, 1]}),
        ],
        ["c"],
    )
    recognise(g)
    assert [(n.name, n.op, n.inputs) for n in g.nodes.values()] == [("b", "bn", ["x"]), ("c", "conv", ["b"])]


def test_a_per_channel_scale_alone_is_a_bn_and_a_scalar_one_stays_a_mul():
    g = _graph(
        [
            Node("s", "mul", ["x"], [S], [S], {"constant": "tensor"}),  # bn without its (zero) shift
            Node("k", "mul", ["s"], [S], [S], {"constant": 0.5}),  # x * 0.5: a multiply
            Node("r", "relu", ["k"], [S], [S]),
        ],
        ["r"],
    )
    recognise(g)
    assert [(n.name, n.op) for n in g.nodes.values()] == [("s", "bn"), ("k", "mul"), ("r", "relu")]


def _slices(second_begin: int, second_first: bool) -> Graph:
    half = [1, 16, 16, 4]
    first = Node("lo", "crop", ["x"], [S], [half], {"channel_begin": 0})
    second = Node("hi", "crop", ["x"], [S], [half], {"channel_begin": second_begin})
    return _graph(
        [
            *((second, first) if second_first else (first, second)),
            Node("conv", "conv", ["hi"], [half], [half], {"kernel_size": [1, 1], "strides": [1, 1]}),
            Node("cat", "concat", ["lo", "conv"], [half, half], [S], {"axis": -1}),
        ],
        ["cat"],
    )


@pytest.mark.parametrize("second_first", [False, True])
def test_two_slices_of_the_channel_halves_are_one_split(second_first):
    g = recognise(_slices(4, second_first))
    place = "hi" if second_first else "lo"  # the split takes the place of the slice met first
    assert [(n.name, n.op, n.inputs) for n in g.nodes.values()] == [
        (place, "split", ["x"]),
        ("conv", "conv", [place]),
        ("cat", "concat", [place, "conv"]),
    ]
    assert g.nodes[place].output_shapes == [[1, 16, 16, 4], [1, 16, 16, 4]]


def test_slices_that_are_not_the_two_halves_stay_slices():
    g = recognise(_slices(2, False))  # channels 2..5 overlap the first half: no split
    assert [n.op for n in g.nodes.values()] == ["crop", "crop", "conv", "concat"]

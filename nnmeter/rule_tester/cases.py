"""The fusion test cases of a campaign: which models to build and measure, and what each case compares.

A pair case op1 -> op2 compares three models: op1 alone, op2 alone and op1
followed by op2. Each op alone gets the input it has inside the pair (op2 after a
conv gets COUT channels, after a pool the smaller map, after global-avgpool a
vector), so that the sum of the singles is the pair run unfused. Every model is
an op chain at an input shape and is named after both
(``conv>relu@28x28x64``), so a single that several pairs need is built and
measured once. One more model, the empty one (``relu@1``), gives the runtime's
cost of an inference, which the detection takes off. The MON case (an op whose output feeds two ops) compares its block
with the chains of nn-Meter's three partitions (:data:`~nnmeter.kernel_gen.pairs.MON_CASES`).

Planning never fails on bad input: an unknown op or a pair that cannot be
connected becomes a case with an ``error``, reported in the summary, and the other
cases go on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from nnmeter import ops
from nnmeter.kernel_gen.pairs import (
    LIGHT_CONV_KERNEL_SIZE,
    MON_CASES,
    TestShapes,
    UnconnectablePair,
    build_chain,
    build_mon,
    is_light_conv,
    pair_input_shapes,
    pair_output_channels,
)
from nnmeter.predictor.rules import pair_key
from nnmeter.rule_tester.settings import RuleTestSettings

#: The pair the MON case depends on (nn-Meter tests MON only when dwconv -> relu fuses).
MON_DEPENDENCY = (ops.DWCONV, ops.RELU)
#: The empty model whose latency is the runtime's cost of one inference: one element through a relu.
EMPTY_MODEL = ((ops.RELU,), (1,))


@dataclass(frozen=True)
class TestModel:
    """One model to build, convert and measure. ``name`` + ``config`` are its identity in the store."""

    __test__ = False  # not a pytest class

    name: str
    config: dict[str, Any]
    build: Callable[..., Any]
    build_args: tuple


@dataclass(frozen=True)
class PairCase:
    """op1 -> op2 and the names of its three models (``None`` when the case could not be made)."""

    op1: str
    op2: str
    single1: str | None = None
    single2: str | None = None
    pair: str | None = None
    error: str = ""

    @property
    def key(self) -> str:
        return pair_key(self.op1, self.op2)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m in (self.single1, self.single2, self.pair) if m is not None)


@dataclass(frozen=True)
class MonCase:
    """The MON block and, per partition (``case1``..``case3``), the models it sums."""

    block: str
    partitions: dict[str, tuple[str, ...]]

    @property
    def models(self) -> tuple[str, ...]:
        return (self.block,) + tuple(m for ms in self.partitions.values() for m in ms)


@dataclass(frozen=True)
class CasePlan:
    pairs: list[PairCase]
    mon: MonCase | None
    empty: str  # the empty model, measured with every case
    models: dict[str, TestModel] = field(default_factory=dict)

    def errors(self) -> list[PairCase]:
        return [c for c in self.pairs if c.error]


def test_shapes(settings: RuleTestSettings) -> TestShapes:
    """The kernel generator's shapes from the campaign's ``rules.shapes``."""
    return TestShapes(**dataclasses.asdict(settings.shapes))


def requested_pairs(settings: RuleTestSettings) -> list[tuple[str, str] | str]:
    """Every ordered pair of ``settings.ops``, then ``settings.pairs``, then the MON dependency; no repeats.

    A malformed entry of ``pairs`` (not ``op1_op2``) is returned as its text, to be reported.
    """
    out: list[tuple[str, str] | str] = [(a, b) for a in settings.ops for b in settings.ops]
    for text in settings.pairs:
        parts = text.split("_")
        out.append((parts[0], parts[1]) if len(parts) == 2 and all(parts) else text)
    if settings.mon:
        out.append(MON_DEPENDENCY)
    return list(dict.fromkeys(out))


def plan_cases(settings: RuleTestSettings) -> CasePlan:
    """The cases and the (deduplicated) models of a campaign's ``rules`` section."""
    shapes = test_shapes(settings)
    models: dict[str, TestModel] = {}
    pairs = [_pair_case(p, shapes, models) for p in requested_pairs(settings)]
    mon = _mon_case(shapes, models) if settings.mon else None
    empty = chain_model(*EMPTY_MODEL, shapes)
    models.setdefault(empty.name, empty)
    return CasePlan(pairs=pairs, mon=mon, empty=empty.name, models=models)


def chain_model(
    chain: Sequence[str], input_shape: Sequence[int], shapes: TestShapes, last_cout: int | None = None
) -> TestModel:
    """The model of ``chain`` (one op or more) applied to an input of ``input_shape``, its last op giving
    ``last_cout`` channels if set (named ``relu>conv@28x28x64>8``)."""
    input_shape = tuple(int(d) for d in input_shape)
    name = ">".join(chain) + "@" + "x".join(map(str, input_shape)) + (f">{last_cout}" if last_cout else "")
    config = {"ops": list(chain), "input_shape": list(input_shape), "shapes": dataclasses.asdict(shapes)}
    if last_cout:
        config["last_cout"] = last_cout
    if any(is_light_conv(op, shapes) for op in chain):
        config["conv_kernel_size"] = LIGHT_CONV_KERNEL_SIZE  # the store tells it from nn-Meter's conv
    return TestModel(name, config, build_chain, (tuple(chain), shapes, input_shape, last_cout))


def _pair_case(pair: tuple[str, str] | str, shapes: TestShapes, models: dict[str, TestModel]) -> PairCase:
    if isinstance(pair, str):
        return PairCase(pair, "", error=f"rules.pairs: {pair!r} is not op1_op2 (e.g. conv_relu)")
    op1, op2 = pair
    unknown = [op for op in (op1, op2) if op not in ops.OPS]
    if unknown:
        return PairCase(op1, op2, error=f"unknown op {unknown[0]!r}; known: {', '.join(ops.OPS)}")
    try:
        in1, in2 = pair_input_shapes(op1, op2, shapes)
    except UnconnectablePair as err:
        return PairCase(op1, op2, error=str(err))
    except ValueError as err:  # e.g. an odd channel count for split/channelshuffle
        return PairCase(op1, op2, error=f"cannot build {op1} -> {op2}: {err}")
    out2 = pair_output_channels(op2, shapes)
    made = [
        chain_model((op1,), in1, shapes),
        chain_model((op2,), in2, shapes, out2),
        chain_model((op1, op2), in1, shapes, out2),
    ]
    for m in made:
        models.setdefault(m.name, m)
    return PairCase(op1, op2, made[0].name, made[1].name, made[2].name)


def _mon_case(shapes: TestShapes, models: dict[str, TestModel]) -> MonCase:
    block_input = (shapes.HW, shapes.HW, shapes.CIN)
    block_name = "mon@" + "x".join(map(str, block_input))
    models.setdefault(
        block_name, TestModel(block_name, {"mon": True, "shapes": dataclasses.asdict(shapes)}, build_mon, (shapes,))
    )
    partitions: dict[str, tuple[str, ...]] = {}
    for case, chains in MON_CASES.items():
        # every chain of the block starts on a map of the block's input shape (dwconv keeps it)
        made = [chain_model(chain, block_input, shapes) for chain in chains]
        for m in made:
            models.setdefault(m.name, m)
        partitions[case] = tuple(m.name for m in made)
    return MonCase(block_name, partitions)


def describe_plan(plan: CasePlan) -> str:
    """One line: how many cases and models, and how many cases cannot be made."""
    bad = len(plan.errors())
    return f"{len(plan.pairs) - bad} pair cases{' + MON' if plan.mon else ''}, {len(plan.models)} models" + (
        f"; {bad} cases cannot be made (listed in the summary)" if bad else ""
    )

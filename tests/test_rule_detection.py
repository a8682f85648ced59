"""Fusion decisions on synthetic latencies, and the rules file format (ours and nn-Meter's)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnmeter.errors import ConfigError
from nnmeter.predictor.rules import (
    MON_FIRST,
    MON_NONE,
    FusionRules,
    PairRule,
    default_rules,
    load_rules,
    rules_to_dict,
    save_rules,
)
from nnmeter.rule_tester.detection import MonPass, PairPass, decide_mon, decide_pair

pytestmark = pytest.mark.unit


def rounds(median_ms: float, rel_noise: float, n: int = 40, seed: int = 0) -> list[float]:
    """Round medians scattered around ``median_ms`` (relative normal noise)."""
    rng = np.random.default_rng(seed)
    return list(median_ms * (1 + rel_noise * rng.standard_normal(n)))


def passes(
    t1: float,
    t2: float,
    t12: float,
    t0: float | None = None,
    *,
    n: int = 3,
    noise: float = 0.02,
    shifts=None,
    rounds_per_pass: int = 40,
    seed: int = 0,
) -> list[PairPass]:
    """``n`` passes of a case. ``shifts[p]`` scales the models of pass p (t1, t2, t12, t0): the latency a
    model has in one load and batch, which its rounds in that pass scatter around."""
    out = []
    for p in range(n):
        k = shifts[p] if shifts is not None else (1.0, 1.0, 1.0, 1.0)
        made = [
            rounds(t * s, noise, rounds_per_pass, seed + 10 * p + i)
            for i, (t, s) in enumerate(zip((t1, t2, t12, t0 or 1.0), k))
        ]
        out.append(PairPass(made[0], made[1], made[2], made[3] if t0 is not None else ()))
    return out


def test_fused_pair_is_decided_fused_with_confidence():
    # conv 1.0 ms, relu 0.3 ms, conv+relu 1.02 ms: the relu is nearly free inside the pair
    rule = decide_pair("conv", "relu", passes(1.0, 0.3, 1.02))
    assert rule.obey is True and not rule.uncertain and rule.passes == 3
    assert rule.confidence > 0.975
    assert rule.margin_low > 0
    assert rule.margin == pytest.approx(
        (rule.t1.median_ms + rule.t2.median_ms - rule.t12.median_ms) / min(rule.t1.median_ms, rule.t2.median_ms) - 0.5,
        abs=0.01,
    )
    assert rule.t1.rounds == 120  # every pass's rounds


def test_unfused_pair_is_decided_not_fused():
    rule = decide_pair("conv", "conv", passes(1.0, 1.0, 2.0))
    assert rule.obey is False and not rule.uncertain
    assert rule.margin_high < 0 and rule.confidence > 0.975


def test_margin_inside_the_noise_is_uncertain():
    # T1 + T2 - T12 = 0.5 * min(T1, T2): exactly on the threshold, with 20 % noise per round
    rule = decide_pair("a", "b", passes(1.0, 1.0, 1.5, noise=0.2))
    assert rule.uncertain
    assert rule.margin_low < 0 < rule.margin_high
    assert 0.5 <= rule.confidence < 0.975


def test_passes_that_agree_by_chance_keep_the_noise_of_their_rounds():
    # two passes with identical load shifts but noisy rounds: their spread alone would make the interval tiny
    rule = decide_pair("a", "b", passes(1.0, 1.0, 1.4, n=2, noise=0.3, rounds_per_pass=10))
    assert rule.uncertain and rule.margin_low < 0 < rule.margin_high


def test_a_between_pass_shift_larger_than_the_margin_is_uncertain_not_a_confident_flip():
    # margin +0.1 (T12 1.12 against 1.0 + 0.3); rounds are precise (0.2 %), but the pair model runs 3 % slower
    # or faster depending on its load: T12 * 1.03 puts the margin at -0.01, T12 * 0.97 at +0.21
    slow, fast = (1.0, 1.0, 1.03, 1.0), (1.0, 1.0, 0.97, 1.0)
    # one load's rounds are sure of their margin, on opposite sides: an interval over rounds would flip "certainly"
    alone_slow = decide_pair("conv", "relu", passes(1.0, 0.3, 1.12, n=1, noise=0.002, shifts=[slow]))
    alone_fast = decide_pair("conv", "relu", passes(1.0, 0.3, 1.12, n=1, noise=0.002, shifts=[fast]))
    assert alone_slow.margin_high < 0 < alone_fast.margin_low
    assert alone_slow.uncertain and alone_fast.uncertain  # one pass never decides
    # over passes the interval covers the spread between loads: each run says uncertain instead of flipping
    run1 = decide_pair("conv", "relu", passes(1.0, 0.3, 1.12, n=2, noise=0.002, shifts=[slow, (1, 1, 1.01, 1)]))
    run2 = decide_pair("conv", "relu", passes(1.0, 0.3, 1.12, n=2, noise=0.002, shifts=[fast, (1, 1, 0.99, 1)], seed=7))
    assert run1.uncertain and run2.uncertain
    assert run1.margin_low < 0.1 < run1.margin_high and run2.margin_low < 0.1 < run2.margin_high


def test_repeated_runs_with_load_to_load_shifts_never_flip_a_certain_decision():
    # 40 runs of 3 passes of a case with margin +0.1 whose models shift 2 % (sd) from load to load, independently
    rng = np.random.default_rng(3)
    rules = [
        decide_pair(
            "a", "b", passes(1.0, 0.3, 1.12, noise=0.005, seed=run, shifts=1 + 0.02 * rng.standard_normal((3, 4)))
        )
        for run in range(40)
    ]
    certain = [r for r in rules if not r.uncertain]
    assert certain and all(r.obey for r in certain)  # certain runs agree (and are right)
    assert any(r.uncertain for r in rules)
    assert sum(r.margin_low < 0.1 < r.margin_high for r in rules) >= 32  # the interval covers the true margin


def test_more_passes_settle_a_noisy_decision():
    # a real margin of +0.2 under a 5 % load-to-load shift of the pair model
    rng = np.random.default_rng(1)
    shifts = [(1.0, 1.0, 1 + 0.05 * z, 1.0) for z in rng.standard_normal(12)]
    few = decide_pair("a", "b", passes(1.0, 1.0, 1.3, n=2, noise=0.01, shifts=shifts[:2]))
    many = decide_pair("a", "b", passes(1.0, 1.0, 1.3, n=12, noise=0.01, shifts=shifts))
    assert few.uncertain
    assert many.obey is True and not many.uncertain
    assert many.margin_high - many.margin_low < few.margin_high - few.margin_low


def test_decision_is_invariant_to_a_common_slowdown_and_repeatable():
    base = decide_pair("a", "b", passes(1.0, 0.4, 1.1, noise=0.05))
    slow = decide_pair("a", "b", passes(1.0, 0.4, 1.1, noise=0.05, shifts=[(1.4,) * 4] * 3))
    assert slow.margin == pytest.approx(base.margin)
    assert slow.obey == base.obey and slow.confidence == pytest.approx(base.confidence)
    assert decide_pair("a", "b", passes(1.0, 0.4, 1.1, noise=0.05)) == base  # seeded: same rounds, same answer


def test_bad_latencies_are_refused():
    with pytest.raises(ValueError, match="T2: no round medians"):
        decide_pair("a", "b", [PairPass([1.0], [], [1.0])])
    with pytest.raises(ValueError, match="T2: latencies must be positive"):
        decide_pair("a", "b", [PairPass([1.0], [0.0], [1.0])])
    with pytest.raises(ValueError, match="no passes"):
        decide_pair("a", "b", [])


def mon_passes(block: float, parts: dict, t0: float | None = None, n: int = 3) -> list[MonPass]:
    return [
        MonPass(
            rounds(block, 0.01, seed=100 + p),
            {c: [rounds(m, 0.01, seed=10 * p + i) for i, m in enumerate(ms)] for c, ms in parts.items()},
            rounds(t0, 0.01, seed=200 + p) if t0 is not None else (),
        )
        for p in range(n)
    ]


def test_mon_picks_the_partition_nearest_to_the_block():
    parts = {"case1": [1.0, 0.5, 1.0], "case2": [1.2, 0.8], "case3": [1.1, 1.0, 0.5]}
    mon = decide_mon(mon_passes(2.0, parts))
    assert mon.value == MON_FIRST  # case2 sums to 2.0
    assert mon.confidence > 0.975 and not mon.uncertain and mon.passes == 3
    assert mon.latencies_ms["case2"] == pytest.approx(2.0, rel=0.02)
    with pytest.raises(ValueError, match="case3"):
        decide_mon([MonPass([1.0], {"case1": [[1.0]], "case2": [[1.0]]})])


# --- the rules file ------------------------------------------------------------------


def test_measured_rules_round_trip_through_json(tmp_path):
    fused = decide_pair("conv", "relu", passes(1.0, 0.3, 1.02))
    same = decide_pair("relu", "relu", passes(0.3, 0.3, 0.6))
    failed = PairRule("fc", "conv", None, error="ops fc -> conv cannot be connected")
    mon = decide_mon(mon_passes(2.0, {"case1": [2.0], "case2": [3.0], "case3": [4.0]}))
    rules = FusionRules(
        pairs={("conv", "relu"): fused, ("relu", "relu"): same, ("fc", "conv"): failed},
        mon=mon,
        device="local:test",
        backend="tflite-local",
        runtime="litert",
        protocol={"rounds": 40},
        alpha=0.5,
        source="measured",
    )
    path = save_rules(rules, tmp_path / "rules" / "fusion_rules.json")
    data = json.loads(path.read_text())
    # readable by nn-Meter's kernel detector: every entry has `obey`, pairs are BF_<op1>_<op2>, MON an int
    assert all("obey" in entry for entry in data.values())
    assert data["BF_conv_relu"]["obey"] is True and data["BF_fc_conv"]["obey"] is None
    assert data["MON"]["obey"] == MON_NONE
    assert set(data["BF_relu_relu"]["latency"]) == {"relu_1", "relu_2", "block", "ops"}
    back = load_rules(path)
    assert back.pairs == rules.pairs
    assert back.mon == rules.mon
    assert (back.device, back.backend, back.runtime, back.alpha) == ("local:test", "tflite-local", "litert", 0.5)
    assert back.fused("conv", "relu") and not back.fused("relu", "relu")
    assert not back.fused("fc", "conv") and not back.fused("conv", "softmax")  # undecided, unknown: not fused
    assert back.undecided() == ["BF_fc_conv"]


def test_reads_nnmeter_fusion_rules():
    nnmeter_file = {  # the shape of nn-Meter's shipped rule files (older names included)
        "RBC": {"latency": {}, "obey": None},
        "BF_conv_relu": {"latency": {"conv": "7080.23 +- 49.0", "relu": "2.5 +- 0.0"}, "obey": True},
        "BF_dense_relu": {"obey": True},
        "BF_pooling_conv": {"obey": False},
        "BF_conv_bn_relu": {"obey": True},
        "MON": {"latency": {}, "obey": "case2"},
    }
    rules = load_rules(nnmeter_file)
    assert rules.fused("conv", "relu") and rules.fused("fc", "relu")
    assert ("maxpool", "conv") in rules.pairs and ("avgpool", "conv") in rules.pairs
    assert not rules.fused("avgpool", "conv")
    assert rules.chains == {("conv", "bn", "relu"): True}
    assert rules.mon_policy == MON_FIRST
    assert load_rules({"MON": {"obey": None}}).mon_policy == MON_NONE  # undecided: nn-Meter's default
    assert "BF_conv_bn_relu" in rules_to_dict(rules)  # chains are written back


@pytest.mark.parametrize(
    "data, key, message",
    [
        ({"BF_conv_foo": {"obey": True}}, "BF_conv_foo", "'foo' is not an op"),  # fused with an unknown op
        ({"BF_conv_relu": {"obey": "yes"}}, "BF_conv_relu.obey", "not true, false or null"),
        ({"BF_conv_relu": True}, "BF_conv_relu", "'obey' field"),
        ({"MON": {"obey": 7}}, "MON.obey", "valid: 0, 1, 2"),
    ],
)
def test_bad_rules_name_the_key(data, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_rules(data)
    assert err.value.key_path == key


def test_missing_or_broken_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such rules file"):
        load_rules(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a JSON rules file"):
        load_rules(tmp_path / "bad.json")


def test_default_rules_fuse_the_pairs_of_the_kernel_vocabulary():
    rules = default_rules()
    assert rules.fused("conv", "bn") and rules.fused("bn", "relu") and rules.fused("add", "relu")
    assert rules.fused("dwconv", "relu6") and rules.fused("conv", "hswish")
    assert not rules.fused("conv", "conv") and not rules.fused("relu", "conv")
    assert rules.mon_policy == MON_NONE and rules.source == "default"


def test_the_cost_of_an_inference_is_taken_off():
    # OpenVINO-like: 15 us per inference, two ops of 10 us each that do not fuse (T12 = 15 + 10 + 10)
    naive = decide_pair("bn", "relu", passes(0.025, 0.025, 0.035, noise=0.01))
    assert naive.obey is True  # counted twice in T1 + T2, the inference cost looks like fusion
    corrected = decide_pair("bn", "relu", passes(0.025, 0.025, 0.035, 0.015, noise=0.01))
    assert corrected.obey is False and not corrected.uncertain
    assert corrected.margin == pytest.approx(-0.5, abs=0.1)
    assert corrected.t0.median_ms == pytest.approx(0.015, rel=0.02)
    # MON: a partition of three models holds two inference costs more than the block
    parts = {"case1": [0.025] * 3, "case2": [0.035] * 2, "case3": [0.02] * 3}
    assert decide_mon(mon_passes(0.045, parts, t0=0.015)).value == MON_NONE  # 75 - 30 = 45


def test_an_op_no_slower_than_an_empty_inference_is_uncertain():
    # reshape: 15 us alone, as long as an empty inference: its own work is not resolved
    rule = decide_pair("bn", "reshape", passes(0.025, 0.015, 0.0252, 0.015, noise=0.01))
    assert rule.uncertain
    assert abs(rule.margin) < 20  # the denominator is floored, the margin stays readable

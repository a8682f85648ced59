"""Fusion decisions on synthetic latencies, and the rules file format (ours and nn-Meter's)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnmeter.errors import ConfigError
from nnmeter.predictor.rules import (MON_FIRST, MON_NONE, FusionRules, PairRule, default_rules, load_rules,
                                     rules_to_dict, save_rules)
from nnmeter.rule_tester.detection import decide_mon, decide_pair


def rounds(median_ms: float, rel_noise: float, n: int = 40, seed: int = 0) -> list[float]:
    """Round medians scattered around ``median_ms`` (relative normal noise)."""
    rng = np.random.default_rng(seed)
    return list(median_ms * (1 + rel_noise * rng.standard_normal(n)))


def test_fused_pair_is_decided_fused_with_confidence():
    # conv 1.0 ms, relu 0.3 ms, conv+relu 1.02 ms: the relu is nearly free inside the pair
    rule = decide_pair("conv", "relu", rounds(1.0, 0.02, seed=1), rounds(0.3, 0.02, seed=2),
                       rounds(1.02, 0.02, seed=3))
    assert rule.obey is True
    assert not rule.uncertain
    assert rule.confidence > 0.95
    assert rule.margin_low > 0
    assert rule.margin == pytest.approx((rule.t1.median_ms + rule.t2.median_ms - rule.t12.median_ms)
                                        / min(rule.t1.median_ms, rule.t2.median_ms) - 0.5)


def test_unfused_pair_is_decided_not_fused():
    rule = decide_pair("conv", "conv", rounds(1.0, 0.02, seed=1), rounds(1.0, 0.02, seed=2),
                       rounds(2.0, 0.02, seed=3))
    assert rule.obey is False
    assert not rule.uncertain
    assert rule.margin_high < 0
    assert rule.confidence > 0.95


def test_margin_inside_the_noise_is_uncertain():
    # T1 + T2 - T12 = 0.5 * min(T1, T2): exactly on the threshold, with 20 % noise per round
    rule = decide_pair("a", "b", rounds(1.0, 0.2, seed=1), rounds(1.0, 0.2, seed=2), rounds(1.5, 0.2, seed=3))
    assert rule.uncertain
    assert rule.margin_low < 0 < rule.margin_high
    assert 0.3 < rule.confidence < 0.95


def test_more_rounds_settle_a_noisy_decision():
    # a real margin of +0.2 hidden by noise in 10 rounds, visible in 400
    few = decide_pair("a", "b", rounds(1.0, 0.3, 10, 1), rounds(1.0, 0.3, 10, 2), rounds(1.3, 0.3, 10, 3))
    many = decide_pair("a", "b", rounds(1.0, 0.3, 400, 1), rounds(1.0, 0.3, 400, 2), rounds(1.3, 0.3, 400, 3))
    assert few.uncertain
    assert many.obey is True and not many.uncertain


def test_decision_is_invariant_to_a_common_slowdown_and_repeatable():
    t1, t2, t12 = rounds(1.0, 0.05, seed=1), rounds(0.4, 0.05, seed=2), rounds(1.1, 0.05, seed=3)
    base = decide_pair("a", "b", t1, t2, t12)
    slow = decide_pair("a", "b", [1.4 * t for t in t1], [1.4 * t for t in t2], [1.4 * t for t in t12])
    assert slow.margin == pytest.approx(base.margin)
    assert slow.obey == base.obey and slow.confidence == base.confidence
    assert decide_pair("a", "b", t1, t2, t12) == base  # seeded bootstrap: same rounds, same answer


def test_drift_between_batches_widens_the_interval():
    # a small op (relu) after a big one (conv): a 2 % drift of the conv between batches is 4x the relu
    t1, t2, t12 = rounds(1.0, 0.005, seed=1), rounds(0.05, 0.005, seed=2), rounds(1.01, 0.005, seed=3)
    together = decide_pair("conv", "relu", t1, t2, t12)
    apart = decide_pair("conv", "relu", t1, t2, t12, drift=0.02)
    assert together.obey and not together.uncertain
    assert apart.margin == together.margin  # the drift moves the interval, not the estimate
    assert apart.uncertain and apart.margin_high - apart.margin_low > 5 * (together.margin_high - together.margin_low)


def test_bad_latencies_are_refused():
    with pytest.raises(ValueError, match="T2: no round medians"):
        decide_pair("a", "b", [1.0], [], [1.0])
    with pytest.raises(ValueError, match="positive"):
        decide_pair("a", "b", [1.0], [0.0], [1.0])


def test_mon_picks_the_partition_nearest_to_the_block():
    parts = {"case1": [rounds(1.0, 0.02, seed=1), rounds(0.5, 0.02, seed=2), rounds(1.0, 0.02, seed=3)],
             "case2": [rounds(1.2, 0.02, seed=4), rounds(0.8, 0.02, seed=5)],
             "case3": [rounds(1.1, 0.02, seed=6), rounds(1.0, 0.02, seed=7), rounds(0.5, 0.02, seed=8)]}
    mon = decide_mon(rounds(2.0, 0.02, seed=9), parts)
    assert mon.value == MON_FIRST  # case2 sums to 2.0
    assert mon.confidence > 0.95 and not mon.uncertain
    assert mon.latencies_ms["case2"] == pytest.approx(2.0, rel=0.02)
    with pytest.raises(ValueError, match="case3"):
        decide_mon([1.0], {"case1": [[1.0]], "case2": [[1.0]]})


# --- the rules file ------------------------------------------------------------------


def test_measured_rules_round_trip_through_json(tmp_path):
    fused = decide_pair("conv", "relu", rounds(1.0, 0.02, seed=1), rounds(0.3, 0.02, seed=2), rounds(1.02, 0.02))
    same = decide_pair("relu", "relu", rounds(0.3, 0.02, seed=1), rounds(0.3, 0.02, seed=2), rounds(0.6, 0.02))
    failed = PairRule("fc", "conv", None, error="ops fc -> conv cannot be connected")
    mon = decide_mon(rounds(2.0, 0.02), {"case1": [rounds(2.0, 0.02)], "case2": [rounds(3.0, 0.02)],
                                        "case3": [rounds(4.0, 0.02)]})
    rules = FusionRules(pairs={("conv", "relu"): fused, ("relu", "relu"): same, ("fc", "conv"): failed}, mon=mon,
                        device="local:test", backend="tflite-local", runtime="litert", protocol={"rounds": 40},
                        alpha=0.5, source="measured")
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


@pytest.mark.parametrize("data, key, message", [
    ({"BF_conv_foo": {"obey": True}}, "BF_conv_foo", "'foo' is not an op"),  # fused with an unknown op
    ({"BF_conv_relu": {"obey": "yes"}}, "BF_conv_relu.obey", "not true, false or null"),
    ({"BF_conv_relu": True}, "BF_conv_relu", "'obey' field"),
    ({"MON": {"obey": 7}}, "MON.obey", "valid: 0, 1, 2"),
])
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
    t0 = rounds(0.015, 0.01, seed=4)
    t1, t2, t12 = rounds(0.025, 0.01, seed=1), rounds(0.025, 0.01, seed=2), rounds(0.035, 0.01, seed=3)
    naive = decide_pair("bn", "relu", t1, t2, t12)
    assert naive.obey is True  # counted twice in T1 + T2, the inference cost looks like fusion
    corrected = decide_pair("bn", "relu", t1, t2, t12, t0=t0)
    assert corrected.obey is False and not corrected.uncertain
    assert corrected.margin == pytest.approx(-0.5, abs=0.1)
    assert corrected.t0.median_ms == pytest.approx(0.015, rel=0.02)
    # MON: a partition of three models holds two inference costs more than the block
    parts = {"case1": [rounds(0.025, 0.01, seed=5)] * 3, "case2": [rounds(0.03, 0.01, seed=6)] * 2,
             "case3": [rounds(0.02, 0.01, seed=7)] * 3}
    assert decide_mon(rounds(0.045, 0.01, seed=8), parts, t0=t0).value == MON_NONE  # 75 - 30 = 45


def test_an_op_no_slower_than_an_empty_inference_is_uncertain():
    # reshape: 15 us alone, as long as an empty inference: its own work is not resolved
    t0 = rounds(0.015, 0.01, seed=4)
    rule = decide_pair("bn", "reshape", rounds(0.025, 0.01, seed=1), rounds(0.015, 0.01, seed=2),
                       rounds(0.0252, 0.01, seed=3), t0=t0)
    assert rule.uncertain
    assert abs(rule.margin) < 20  # the denominator is floored, the margin stays readable

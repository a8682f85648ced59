"""The fusion-rule tester end to end on tflite-local: real models, real LiteRT measurements, the rules file."""

from __future__ import annotations

import pytest
from conftest import make_workspace

from nnmeter.builder.rules import run_workspace_rules
from nnmeter.builder.workspace import Workspace
from nnmeter.cli import main
from nnmeter.predictor.rules import MON_VALUES, load_rules

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    # a handful of pairs, the bad inputs of each kind, and a short protocol (tiny models, few rounds)
    return make_workspace(
        tmp_path_factory.mktemp("rules") / "ws",
        rules={
            "ops": ["conv", "relu"],
            "pairs": ["conv_bn", "conv_swish", "fc_conv", "foo_relu", "dwconv_relu"],
            "mon": True,
            "shapes": {"HW": 28, "CIN": 32, "COUT": 64},
            "max_remeasures": 2,
        },
        protocol={"rounds": 12, "warmup_runs": 2},
    )


@pytest.fixture(scope="module")
def first_run(workspace):
    with Workspace.open(workspace) as ws:
        return run_workspace_rules(ws, workers=1)


def test_conv_relu_and_conv_bn_come_out_fused(first_run):
    rules = first_run.rules
    # TFLite folds bn into the conv and runs relu as the conv's fused activation
    assert rules.fused("conv", "relu")
    assert rules.fused("conv", "bn")
    assert not rules.fused("conv", "conv")  # two convolutions are two kernels
    # swish is a LOGISTIC and a MUL after the conv; next to nn-Meter's conv (3x3, 64 -> 128 channels) it was lost
    # in the conv's noise on the Intel host and came out fused
    assert not rules.fused("conv", "swish")
    conv_relu = rules.rule("conv", "relu")
    assert conv_relu.t1.median_ms > 0 and conv_relu.t12.median_ms > 0 and conv_relu.confidence is not None
    assert not conv_relu.uncertain and conv_relu.passes >= 2
    assert (rules.backend, rules.alpha) == ("tflite-local", 0.5)


def test_bad_cases_are_reported_and_the_run_goes_on(first_run):
    rules = first_run.rules
    assert "cannot be connected" in rules.rule("fc", "conv").error
    assert "unknown op 'foo'" in rules.rule("foo", "relu").error
    assert set(rules.undecided()) >= {"BF_fc_conv", "BF_foo_relu"}
    decided = [r for r in rules.pairs.values() if r.obey is not None]
    assert len(decided) == 7  # conv/relu x conv/relu, conv_bn, conv_swish, dwconv_relu
    if rules.fused("dwconv", "relu"):
        assert rules.mon.value in MON_VALUES
    else:
        assert rules.mon.value is None and "does not fuse" in rules.mon.error


def test_rules_file_is_written_and_reads_back(first_run, workspace):
    path = workspace / "rules" / "fusion_rules.json"
    back = load_rules(path)
    assert back.pairs == first_run.rules.pairs
    assert back.mon == first_run.rules.mon
    assert back.device == first_run.rules.device


def test_second_run_reuses_every_pass(first_run, workspace):
    with Workspace.open(workspace) as ws:
        before = ws.store.summary()
        second = run_workspace_rules(ws, workers=1)
        after = ws.store.summary()
    assert after.models == before.models  # nothing rebuilt
    assert [s.measurements for s in after.setups] == [s.measurements for s in before.setups]  # nothing measured
    assert second.rules.pairs == first_run.rules.pairs and second.rules.mon == first_run.rules.mon


def test_an_independent_run_agrees_on_every_certain_decision(first_run, workspace):
    # new loads and batches for every pass: a decision may change only where one of the runs says uncertain
    with Workspace.open(workspace) as ws:
        again = run_workspace_rules(ws, workers=1, remeasure=True)
    decided = [k for k, r in first_run.rules.pairs.items() if r.obey is not None]
    certain = [k for k in decided if not first_run.rules.pairs[k].uncertain and not again.rules.pairs[k].uncertain]
    assert again.rules.pairs[("conv", "relu")].obey is True  # how certain depends on the host's noise
    assert {k: again.rules.pairs[k].obey for k in certain} == {k: first_run.rules.pairs[k].obey for k in certain}
    assert all(again.rules.pairs[k].passes >= 2 for k in decided)


def test_cli_shows_the_saved_rules(first_run, workspace, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["rules", str(workspace), "--show"]) == 0
    out = capsys.readouterr().out
    assert "conv -> relu" in out and "fused" in out.lower()
    assert "not decided" in out and "BF_foo_relu" in out

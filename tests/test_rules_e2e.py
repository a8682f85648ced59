"""The fusion-rule tester end to end on tflite-local: real models, real LiteRT measurements, the rules file."""

from __future__ import annotations

import pytest
import yaml

from nnmeter.builder.workspace import Workspace
from nnmeter.cli import main
from nnmeter.predictor.rules import MON_VALUES, load_rules
from nnmeter.rule_tester.runner import run_rule_test

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("rules") / "ws"
    Workspace.create(root, "tflite-local")
    path = root / "campaign.yaml"
    campaign = yaml.safe_load(path.read_text())
    # a handful of pairs, the bad inputs of each kind, and a short protocol (tiny models, few rounds)
    campaign["rules"] = {"ops": ["conv", "relu"], "pairs": ["conv_bn", "fc_conv", "foo_relu", "dwconv_relu"],
                         "mon": True, "shapes": {"HW": 28, "CIN": 32, "COUT": 64}, "max_remeasures": 1}
    campaign["protocol"] = {**(campaign.get("protocol") or {}), "rounds": 12, "warmup_runs": 2}
    path.write_text(yaml.safe_dump(campaign))
    return root


@pytest.fixture(scope="module")
def first_run(workspace):
    with Workspace.open(workspace) as ws:
        return run_rule_test(ws, workers=1)


def test_conv_relu_and_conv_bn_come_out_fused(first_run):
    rules = first_run.rules
    # TFLite folds bn into the conv and runs relu as the conv's fused activation
    assert rules.fused("conv", "relu")
    assert rules.fused("conv", "bn")
    assert not rules.fused("conv", "conv")  # two convolutions are two kernels
    conv_relu = rules.rule("conv", "relu")
    assert conv_relu.t1.median_ms > 0 and conv_relu.t12.median_ms > 0 and conv_relu.confidence is not None
    assert (rules.backend, rules.alpha) == ("tflite-local", 0.5)


def test_bad_cases_are_reported_and_the_run_goes_on(first_run):
    rules = first_run.rules
    assert "cannot be connected" in rules.rule("fc", "conv").error
    assert "unknown op 'foo'" in rules.rule("foo", "relu").error
    assert set(rules.undecided()) >= {"BF_fc_conv", "BF_foo_relu"}
    decided = [r for r in rules.pairs.values() if r.obey is not None]
    assert len(decided) == 6  # conv/relu x conv/relu, conv_bn, dwconv_relu
    if rules.fused("dwconv", "relu"):
        assert rules.mon.value in MON_VALUES
    else:
        assert rules.mon.value is None and "does not fuse" in rules.mon.error


def test_rules_file_is_written_and_reads_back(first_run, workspace):
    path = workspace / "rules" / "fusion_rules.json"
    assert first_run.path == path
    back = load_rules(path)
    assert back.pairs == first_run.rules.pairs
    assert back.mon == first_run.rules.mon
    assert back.device == first_run.rules.device


def test_second_run_reuses_the_store_and_agrees(first_run, workspace):
    with Workspace.open(workspace) as ws:
        models_before = ws.store.summary().models
        second = run_rule_test(ws, workers=1)
        assert ws.store.summary().models == models_before  # nothing rebuilt
    # the conv decisions have margins far outside the noise; pairs of microsecond ops can still flip between
    # runs (see docs/fusion-rules.md, known gaps), so they are not asserted here
    for key in (("conv", "relu"), ("conv", "bn"), ("conv", "conv")):
        assert second.rules.pairs[key].obey == first_run.rules.pairs[key].obey


def test_cli_shows_the_saved_rules(first_run, workspace, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["rules", str(workspace), "--show"]) == 0
    out = capsys.readouterr().out
    assert "conv -> relu" in out and "fused" in out.lower()
    assert "not decided" in out and "BF_foo_relu" in out

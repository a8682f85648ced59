"""A tiny real campaign through `nnmeter-build run` on tflite-local: killed with SIGKILL during kernel
measurement, resumed, completed; then a corrupt campaign.yaml is refused without touching the store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_process, measurement_rows

from nnmeter.builder import kernels as training
from nnmeter.builder.steps import step_status
from nnmeter.builder.workspace import Workspace
from nnmeter.predictor.detection import unfused_pairs
from nnmeter.predictor.rules import load_rules

pytestmark = pytest.mark.e2e

# A campaign small enough for a test: two rule ops, the kernels a tiny ResNet-style net needs, a few
# samples each, short measurements, three tiny evaluation models.
TINY_CAMPAIGN = """\
backend:
  name: tflite-local
protocol:
  rounds: 8
  max_remeasures: 0
  batch_size: 4
rules:
  ops: [conv, relu, add]
  mon: false
  max_remeasures: 0
kernels:
  kernels: [conv-bn-relu, conv-bn, add, addrelu, relu, maxpool, global-avgpool, fc, conv-block, conv-bn-hswish]
  init_samples: 14
  iterations: 0
  min_train_samples: 5
  validation_fraction: 0.2
evaluation:
  families: [nas-resnet]
  resolutions: [32]
  models_per_family: 3
  repeats: 2
"""


def _file_state(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("campaign") / "ws"
    init = subprocess.run(
        [sys.executable, "-m", "nnmeter.cli", "init", str(ws), "--backend", "tflite-local"],
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    (ws / "campaign.yaml").write_text(TINY_CAMPAIGN)
    return ws


def test_killed_during_kernel_measurement_then_resumed(workspace: Path, monkeypatch):
    store = workspace / "store.sqlite"
    run = cli_process("run", str(workspace))
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and run.poll() is None:
            kernel_rows = [r for r in measurement_rows(store) if r[1] == "kernel"]
            if len(kernel_rows) >= 8:  # two batches of kernel samples are stored: kill mid-step
                break
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before kernel measurement:\n" + run.stdout.read()
        os.killpg(run.pid, signal.SIGKILL)  # kill -9 the command and its workers
    finally:
        run.wait(timeout=60)
    before = measurement_rows(store)
    assert any(r[1] == "kernel" for r in before)
    assert not (workspace / "predictor" / "manifest.yaml").exists()
    # the lock file still names the killed run, but its flock died with it: the resumed run is not refused
    assert json.loads((workspace / ".nnmeter.lock").read_text())["pid"] == run.pid

    resumed = cli_process("run", str(workspace))
    out, _ = resumed.communicate(timeout=1200)
    assert resumed.returncode == 0, out
    after = measurement_rows(store)
    # nothing stored is lost or changed, and nothing measured is measured again
    assert after[: len(before)] == before
    # (the rule tester measures each case in several independent passes, each its own series)
    once = [(r[2], r[3], r[5]) for r in after if r[1] in ("kernel", "rule-case") and r[4] == "ok"]
    assert len(once) == len(set(once)), "a kernel or rule-case model was measured twice"
    # the evaluation measures each model twice on purpose (repeatability): never more
    evaluation = [(r[2], r[3]) for r in after if r[1] == "evaluation"]
    assert max(evaluation.count(m) for m in set(evaluation)) == 2

    assert (workspace / "predictor" / "manifest.yaml").is_file()
    assert (workspace / "rules" / "fusion_rules.json").is_file()
    # the kernels the measured rules form are trained and packaged, the others not (conv -> hswish is not
    # among the tested pairs, so conv-bn-hswish never is)
    rules = load_rules(workspace / "rules" / "fusion_rules.json")
    packaged = set(yaml.safe_load((workspace / "predictor" / "manifest.yaml").read_text())["kernels"])
    campaign = set(yaml.safe_load(TINY_CAMPAIGN)["kernels"]["kernels"])
    assert packaged == {k for k in campaign if not unfused_pairs(k, rules)}
    assert "conv-bn-hswish" not in packaged
    assert re.search(
        r"not formed by the device's rules, not trained: [a-z0-9, -]*conv-bn-hswish", " ".join(out.split())
    )
    # intervals at 90 %: the model's is calibrated on the calibration models when there are enough (9) of them
    manifest = yaml.safe_load((workspace / "predictor" / "manifest.yaml").read_text())
    correction = manifest["model_correction"]
    assert manifest["interval_coverage"] == 0.9
    assert ("interval_log_ratio" in correction) == (correction["fitted_on"] >= 9)
    result = json.loads((workspace / "reports" / "evaluation.json").read_text())
    assert len(result["models"]) == 3
    for model in result["models"]:
        assert model["measured_ms"] > 0 and model["repeat_ms"] > 0, model
        assert model["predictions"]["nnmeter"] is not None and model["predictions"]["nnmeter"] > 0, model
        assert model["predictions"]["flops-linear"] is not None, model
        assert (model["interval_ms"] is not None) == ("interval_log_ratio" in correction), model
    html = (workspace / "reports" / "index.html").read_text()
    assert "nas-resnet_000_32" in html and "<svg" in html
    assert "invoke overhead" in html and "model correction" in html  # the artifact's device calibrations
    # the calibration models are measured next to their kernels, not in a block of their own before them
    calibration = [r[0] for r in after if r[6].startswith("calibration-")]
    kernels_between = [r for r in after if r[1] == "kernel" and calibration[0] < r[0] < calibration[-1]]
    assert len(calibration) >= 2 and kernels_between
    assert "drift correction" in html and "repeated measurements" in html  # the weight of the anchors' factors

    # a third run finds every step up to date and measures nothing
    again = cli_process("run", str(workspace))
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert out.count("up to date") >= 4, out
    assert measurement_rows(store) == after

    # a new nnmeter whose features changed finds the kernels step to run again (then the steps after it)
    with Workspace.open(workspace) as ws:
        assert step_status(ws)["kernels"] == "up to date"
        monkeypatch.setattr(training, "FEATURE_SCHEMA_VERSION", training.FEATURE_SCHEMA_VERSION + 1)
        assert step_status(ws)["kernels"] == "to run"


def test_corrupt_campaign_is_refused_and_store_untouched(workspace: Path):
    store = workspace / "store.sqlite"
    campaign = workspace / "campaign.yaml"
    good = campaign.read_text()
    before = _file_state(store)
    try:
        for bad, expected in (
            (good.replace("rounds: 8", "rounds: -3"), "protocol.rounds"),
            (good.replace("init_samples: 14", "init_sampels: 14"), "kernels.init_sampels"),
            (good + "\n  : : [\n", "malformed YAML"),
        ):
            campaign.write_text(bad)
            run = cli_process("run", str(workspace))
            out, _ = run.communicate(timeout=300)
            assert run.returncode == 2, out
            assert "campaign.yaml" in out and expected in out, out
            assert "Traceback" not in out
            assert _file_state(store) == before
    finally:
        campaign.write_text(good)


def test_evaluate_remeasure_measures_both_passes_again(workspace: Path):
    store = workspace / "store.sqlite"
    report = workspace / "reports" / "evaluation.json"
    before, old = measurement_rows(store), json.loads(report.read_text())
    run = subprocess.run(
        [sys.executable, "-m", "nnmeter.cli", "evaluate", str(workspace), "--remeasure"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    after = measurement_rows(store)
    assert after[: len(before)] == before  # the old measurements are kept
    again = [r[2] for r in after[len(before) :] if r[1] == "evaluation"]
    assert sorted(again) == sorted(m["model_id"] for m in old["models"] for _ in range(2))
    new = {m["model_id"]: m for m in json.loads(report.read_text())["models"]}
    # scored on the new measurements: a small model's fastest round can repeat to the 0.1 us (0.1757 ms twice),
    # its four timings (two old, two new) hardly, and those of every model never
    timings = {m["model_id"]: (m["measured_ms"], m["repeat_ms"]) for m in old["models"]}
    assert [i for i, t in timings.items() if (new[i]["measured_ms"], new[i]["repeat_ms"]) != t]

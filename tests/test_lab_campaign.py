"""Whole campaigns on a lab through `nnmeter-build run`: loopback ADB phones (real adb servers, the benchmark_model
stand-in on the real LiteRT interpreter), the local engine. One campaign runs every step on two units and packages
a predictor; two campaigns of two device types run at once (`run ws1 ws2`), each measured by its own units only."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest_lab import lab_campaign, lab_hosts, measured_by, stop_hosts

pytestmark = pytest.mark.e2e

NNMETER = [sys.executable, "-m", "nnmeter.cli"]

# The smallest campaign that runs every step: two rule ops, the kernels of a tiny ResNet-style net with a few
# samples each, two evaluation models.
SMALL_CAMPAIGN = {
    "rules": {"ops": ["conv", "relu"], "mon": False, "max_remeasures": 0},
    "kernels": {
        "kernels": ["conv-bn-relu", "conv-relu", "conv-block", "relu", "add", "addrelu", "maxpool", "global-avgpool"]
        + ["fc"],
        "init_samples": 8,
        "iterations": 0,
        "min_train_samples": 5,
        "validation_fraction": 0.2,
    },
    "evaluation": {"families": ["nas-resnet"], "resolutions": [32], "models_per_family": 2, "repeats": 2},
}

# Only the kernels step, of one kernel: what two campaigns at once need to show that each has its own units.
KERNELS_ONLY = {"kernels": {"kernels": ["relu"], "init_samples": 6, "iterations": 0, "min_train_samples": 4}}


def lab_workspace(path: Path, phones, campaign: dict) -> Path:
    init = subprocess.run([*NNMETER, "init", str(path), "--backend", "tflite-adb"], capture_output=True, text=True)
    assert init.returncode == 0, init.stdout + init.stderr
    data = yaml.safe_load((path / "campaign.yaml").read_text())
    (path / "campaign.yaml").write_text(yaml.safe_dump({**data, **campaign}))
    lab_campaign(path, phones, engine="local")
    return path


def nnmeter(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([*NNMETER, *args], capture_output=True, text=True, timeout=timeout)


def test_a_whole_campaign_on_two_units_packages_a_predictor(tmp_path):
    hosts = lab_hosts(tmp_path, {"here": 2})
    try:
        phones = hosts["here"]
        ws = lab_workspace(tmp_path / "ws", phones, SMALL_CAMPAIGN)
        out = nnmeter("run", str(ws), timeout=2400)
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        manifest = yaml.safe_load((ws / "predictor" / "manifest.yaml").read_text())
        assert manifest["device"]["id"] == "lab:tflite-adb" and manifest["kernels"]
        assert (ws / "reports" / "index.html").is_file()
        rows = measured_by(ws)
        serials = {p.serial for p in phones}
        assert {r[2] for r in rows} == serials and all(r[3] for r in rows)  # both units measured, each with its host
        kernels = collections.Counter(r[1] for r in rows if r[0] == "kernel")
        assert kernels and set(kernels.values()) == {1}  # no kernel model measured twice
        status = nnmeter("lab", "status", str(ws), timeout=60)
        assert status.returncode == 0 and all(s in status.stdout for s in serials), status.stdout + status.stderr
    finally:
        stop_hosts(hosts)


def test_two_campaigns_at_once_each_on_its_own_units(tmp_path):
    hosts = lab_hosts(tmp_path, {"here": 3})
    try:
        phones = hosts["here"]
        ws1 = lab_workspace(tmp_path / "ws1", phones[:2], KERNELS_ONLY)
        ws2 = lab_workspace(tmp_path / "ws2", phones[2:], KERNELS_ONLY)
        out = nnmeter("run", str(ws1), str(ws2), "--only", "kernels", timeout=1200)
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        for ws, own in ((ws1, phones[:2]), (ws2, phones[2:])):
            rows = measured_by(ws)
            kernels = collections.Counter(r[1] for r in rows if r[0] == "kernel")
            assert len(kernels) >= 6 and set(kernels.values()) == {1}, kernels  # every model measured once
            assert {r[2] for r in rows} == {p.serial for p in own}  # by its own units, all of them
        log = out.stdout + out.stderr
        assert "ws1: " in log and "ws2: " in log
    finally:
        stop_hosts(hosts)

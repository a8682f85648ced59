"""Bad input to a lab, through `nnmeter-build run`: one clear error naming the key or the unit, exit 2, before
anything is measured, the store untouched (a unit listed twice, a unit no node advertises, a cluster address that
does not answer, Ray not installed with engine: ray)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest_lab import RayCluster
from conftest_remote import free_port

NNMETER = [sys.executable, "-m", "nnmeter.cli"]


def lab_workspace(tmp_path: Path, devices: list[dict], cluster: dict) -> Path:
    ws = tmp_path / "ws"
    subprocess.run([*NNMETER, "init", str(ws), "--backend", "tflite-adb"], check=True, capture_output=True)
    path = ws / "campaign.yaml"
    campaign = yaml.safe_load(path.read_text())
    campaign["devices"], campaign["cluster"] = devices, cluster
    path.write_text(yaml.safe_dump(campaign))
    return ws


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(ws: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    before = digest(ws / "store.sqlite")
    out = subprocess.run([*NNMETER, "run", str(ws)], capture_output=True, text=True, timeout=180, env=env)
    assert digest(ws / "store.sqlite") == before  # untouched
    assert not (ws / "store.sqlite-wal").exists() or (ws / "store.sqlite-wal").stat().st_size == 0
    return out


@pytest.mark.integration
def test_a_unit_listed_twice(tmp_path):
    ws = lab_workspace(tmp_path, [{"serial": "R5CT1234"}, {"serial": "R5CT1234", "remote_dir": "/x"}], {})
    out = run(ws)
    assert out.returncode == 2
    assert "devices[1]: unit 'R5CT1234' is listed twice (also devices[0])" in out.stderr


@pytest.mark.integration
def test_ray_not_installed(tmp_path):
    blocker = tmp_path / "no-ray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    ws = lab_workspace(tmp_path, [{"serial": "R5CT1234"}], {"engine": "ray"})
    import os

    out = run(ws, env={**os.environ, "PYTHONPATH": str(blocker)})
    assert out.returncode == 2, out.stderr
    assert "cluster.engine: ray needs the Ray package, which is not installed" in out.stderr
    assert "nnmeter[lab]" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.integration
def test_an_address_that_does_not_answer(tmp_path):
    ws = lab_workspace(tmp_path, [{"serial": "R5CT1234"}], {"engine": "ray", "address": f"127.0.0.1:{free_port()}"})
    out = run(ws)
    assert out.returncode == 2, out.stderr
    assert "cluster.address: no Ray head answers at 127.0.0.1:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.integration
def test_a_unit_no_node_advertises(tmp_path):
    cluster = RayCluster(tmp_path, {"hostA": ["R5CT1234"]})
    try:
        ws = lab_workspace(
            tmp_path, [{"serial": "R5CT1234"}, {"serial": "R5CT5678"}], {"engine": "ray", "address": cluster.address}
        )
        out = run(ws)
        assert out.returncode == 2, out.stderr
        assert "devices[1]: unit 'R5CT5678': no node of the Ray cluster" in out.stderr
        assert "lab join HEAD:PORT --unit R5CT5678" in out.stderr and "Traceback" not in out.stderr
    finally:
        cluster.stop()

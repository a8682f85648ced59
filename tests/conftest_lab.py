"""Fixtures of the lab tests: loopback phones on per-"host" adb servers, a two-node Ray cluster on this machine,
and lab workspaces. Import them with ``from conftest_lab import *``.

The Ray cluster is real: a head (``ray start --head``) and a second node (``ray start --address``), each in its
own process group, advertising the units "attached" to it as custom resources and naming its host through
``NNMETER_LAB_HOST`` (what ``nnmeter-build lab join --host`` sets). Teardown kills both process groups.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest_remote import ADBServer, LoopbackPhone, adb_binary, free_port, wait_port

from nnmeter.lab.settings import unit_resource

TESTS = Path(__file__).resolve().parent
RAY = str(Path(sys.executable).parent / "ray")

__all__ = [
    "RayCluster",
    "RayNode",
    "lab_campaign",
    "lab_hosts",
    "measured_by",
    "run_driver",
    "start_driver",
    "template_workspace",
]

#: campaign settings small enough for tests: each benchmark_model round is a process start
TEST_PROTOCOL = dict(
    warmup_runs=1,
    rounds=2,
    runs_per_round=2,
    min_round_ms=0.0,
    settle_runs=0,
    max_median_ci=1.0,
    max_remeasures=0,
    batch_size=2,
    anchors=False,
)


class RayNode:
    """One Ray node (``ray start --block``) in a process group of its own."""

    def __init__(self, args: list[str], host: str, units: list[str], log: Path) -> None:
        resources = json.dumps({unit_resource(u): 1 for u in units})
        env = {**os.environ, "NNMETER_LAB_HOST": host, "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [RAY, "start", *args, "--num-cpus=1", "--object-store-memory=80000000", f"--resources={resources}"]
        self.process = subprocess.Popen(
            [*cmd, "--block", "--disable-usage-stats"],
            stdout=open(log, "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def kill(self) -> None:
        """SIGKILL the node and everything it started (its raylet and the workers of its actors)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()


class RayCluster:
    """A head and a second node on this machine: two "hosts" with their units."""

    def __init__(self, root: Path, units: dict[str, list[str]]) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit
        self.root = root
        self.nodes: dict[str, RayNode] = {}
        (head, head_units), *others = units.items()
        self.nodes[head] = RayNode(
            ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp}"],
            head,
            head_units,
            root / "ray-head.log",
        )
        wait_port(self.port, timeout=60)
        for host, host_units in others:
            self.start_node(host, host_units)
        self.wait_units([u for us in units.values() for u in us])

    def start_node(self, host: str, units: list[str]) -> None:
        self.nodes[host] = RayNode([f"--address={self.address}"], host, units, self.root / f"ray-{host}.log")

    def wait_units(self, units: list[str], timeout: float = 90) -> None:
        """Until the cluster advertises every unit's resource."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                [RAY, "status", f"--address={self.address}"], capture_output=True, text=True, timeout=60
            ).stdout
            if all(unit_resource(u) in out for u in units):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster does not advertise {units}: {out}")
            time.sleep(1)

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()
        shutil.rmtree(self.temp, ignore_errors=True)


def lab_hosts(root: Path, hosts: dict[str, int]) -> dict[str, list[LoopbackPhone]]:
    """Loopback phones per host name, each host with an adb server of its own (at a free port)."""
    out = {}
    for host, count in hosts.items():
        server = ADBServer(adb_binary(), free_port())
        server.start()
        out[host] = [LoopbackPhone(server, root / f"{host}-{i}") for i in range(count)]
    return out


def stop_hosts(hosts: dict[str, list[LoopbackPhone]]) -> None:
    for phones in hosts.values():
        for phone in phones:
            phone.kill()
        if phones:
            phones[0].server.kill()


def lab_campaign(ws: Path, phones: list[LoopbackPhone], **cluster) -> None:
    """Make ``ws``'s campaign a lab of ``phones`` (tflite-adb) with the test protocol and ``cluster`` keys."""
    path = ws / "campaign.yaml"
    campaign = yaml.safe_load(path.read_text())
    first = phones[0]
    campaign["backend"] = {
        "name": "tflite-adb",
        "benchmark_model": str(first.benchmark_model),
        "cpu_mask": "1",
        "command_timeout_s": 60.0,
        "retries": 1,
        "backoff_s": 0.1,
        "op_profiling": False,
    }
    campaign["devices"] = [
        {
            "serial": p.serial,
            "adb_port": p.server.port,
            "benchmark_model": str(p.benchmark_model),
            "remote_dir": p.remote_dir,
        }
        for p in phones
    ]
    campaign["cluster"] = {"retry_lost_s": 2.0, "lost_timeout_s": 120.0, "start_timeout_s": 60.0, **cluster}
    campaign["protocol"] = {**(campaign.get("protocol") or {}), **TEST_PROTOCOL}
    path.write_text(yaml.safe_dump(campaign))


@pytest.fixture(scope="session")
def template_workspace(tmp_path_factory) -> Path:
    """A tflite-adb workspace whose store holds the converted relu models and anchors (no measurement): each
    test copies it, so no test converts."""
    from nnmeter.builder.workspace import Workspace

    root = tmp_path_factory.mktemp("lab template") / "ws"
    Workspace.create(root, "tflite-adb").close()
    out = subprocess.run(
        [sys.executable, str(TESTS / "lab_prepare.py"), str(root), "-n", "12"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def start_driver(ws: Path, n: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TESTS / "lab_driver.py"), str(ws), "-n", str(n)],
        stdout=subprocess.PIPE,
        stderr=open(log, "a"),
        text=True,
    )


def run_driver(ws: Path, n: int, log: Path, timeout: float = 600) -> dict:
    process = start_driver(ws, n, log)
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, log.read_text()[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def measured_by(ws: Path) -> list[tuple[str, str, str, str]]:
    """(model kind, model id, unit, host) of every stored measurement, in storing order."""
    with sqlite3.connect(ws / "store.sqlite") as db:
        return list(
            db.execute(
                "SELECT mo.kind, me.model_id, me.unit, me.host FROM measurements me "
                "JOIN models mo ON mo.id = me.model_id ORDER BY me.id"
            )
        )

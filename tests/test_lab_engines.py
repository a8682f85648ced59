"""A lab on real units: loopback ADB phones (real adb servers, the benchmark_model stand-in on the real LiteRT
interpreter) driven by the local engine and by a real two-node Ray cluster on this machine. Each test shards the
measurement of 12 relu kernel models over 2-3 units and checks the store: every model measured exactly once,
each measurement with its unit and host, nothing lost, whatever was killed on the way."""

from __future__ import annotations

import collections
import shutil
import signal
import time

import pytest
from conftest_lab import *  # noqa: F403
from conftest_lab import RayCluster, lab_campaign, lab_hosts, measured_by, run_driver, start_driver, stop_hosts

N = 12


def copy_workspace(template, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    return ws


def assert_each_once(rows, units):
    kernels = [r for r in rows if r[0] == "kernel"]
    counts = collections.Counter(r[1] for r in kernels)
    assert len(counts) == N and set(counts.values()) == {1}, counts
    assert {r[2] for r in kernels} <= set(units) and all(r[3] for r in kernels)
    return kernels


@pytest.mark.integration
def test_local_engine_shards_and_requeues_a_lost_phone(template_workspace, tmp_path):
    hosts = lab_hosts(tmp_path, {"here": 2})
    try:
        phones = hosts["here"]
        ws = copy_workspace(template_workspace, tmp_path)
        lab_campaign(ws, phones, engine="local")
        for phone in phones:  # a device whose time is on the device: rounds of 0.3 s, so that the kill lands mid-run
            (phone.sandbox / "device-ms").write_text("150")
        driver = start_driver(ws, N, tmp_path / "driver.log")
        deadline = time.monotonic() + 300
        while sum(r[0] == "kernel" for r in measured_by(ws)) < 2:  # the first batch is in
            assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()
            time.sleep(0.2)
        phones[1].kill()  # adbd gone mid-run: its batch goes back to the queue
        out, _ = driver.communicate(timeout=600)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log[-3000:]
        kernels = assert_each_once(measured_by(ws), [p.serial for p in phones])
        assert "lost" in log
        assert {r[2] for r in kernels} == {p.serial for p in phones} or phones[0].serial in {r[2] for r in kernels}
    finally:
        stop_hosts(hosts)


@pytest.mark.integration
def test_ray_two_hosts_node_killed_then_driver_killed(template_workspace, tmp_path):
    hosts = lab_hosts(tmp_path, {"hostA": 1, "hostB": 1})
    units = {h: [p.serial for p in phones] for h, phones in hosts.items()}
    cluster = RayCluster(tmp_path, units)
    try:
        phones = [p for ps in hosts.values() for p in ps]
        for phone in phones:
            (phone.sandbox / "device-ms").write_text("150")
        ws = copy_workspace(template_workspace, tmp_path)
        lab_campaign(ws, phones, engine="ray", address=cluster.address)
        log = tmp_path / "driver.log"
        driver = start_driver(ws, N, log)
        deadline = time.monotonic() + 300
        while sum(r[0] == "kernel" and r[3] == "hostB" for r in measured_by(ws)) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        cluster.nodes["hostB"].kill()  # the second node dies mid-run: its batch goes back to the queue
        while "went away" not in log.read_text():
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        stored = sum(r[0] == "kernel" for r in measured_by(ws))
        while sum(r[0] == "kernel" for r in measured_by(ws)) < stored + 2:  # hostA's unit took it
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)  # the driver killed with -9 mid-run
        driver.wait()
        before = measured_by(ws)
        cluster.start_node("hostB", units["hostB"])  # the node rejoins: its unit is used again
        cluster.wait_units(units["hostB"])
        run_driver(ws, N, log)
        rows = measured_by(ws)
        assert rows[: len(before)] == before  # nothing stored was measured again
        kernels = assert_each_once(rows, [p.serial for p in phones])
        assert {r[3] for r in kernels} == {"hostA", "hostB"}
    finally:
        cluster.stop()
        stop_hosts(hosts)


@pytest.mark.integration
def test_ray_head_lost_is_one_error_and_a_rerun_resumes(template_workspace, tmp_path):
    hosts = lab_hosts(tmp_path, {"hostA": 1})
    units = {"hostA": [p.serial for p in hosts["hostA"]]}
    cluster = RayCluster(tmp_path, units)
    fresh = None
    try:
        (hosts["hostA"][0].sandbox / "device-ms").write_text("150")
        ws = copy_workspace(template_workspace, tmp_path)
        lab_campaign(ws, hosts["hostA"], engine="ray", address=cluster.address)
        log = tmp_path / "driver.log"
        driver = start_driver(ws, N, log)
        deadline = time.monotonic() + 300
        while sum(r[0] == "kernel" for r in measured_by(ws)) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        cluster.nodes["hostA"].kill()  # the head (its GCS, its raylet) killed mid-run
        lost_at = time.monotonic()
        driver.communicate(timeout=60)  # Ray's own client would end it after 60 s
        text = log.read_text()
        assert driver.returncode == 1 and time.monotonic() - lost_at < 30, text[-3000:]
        assert f"error: lost the Ray head of the lab at {cluster.address}: its GCS at " in text, text[-3000:]
        assert "it resumes, measuring only what is missing" in text
        assert "Failed to connect to GCS" not in text and "Traceback" not in text, text[-3000:]
        before = measured_by(ws)
        assert 2 <= len(before) < N
        (tmp_path / "fresh").mkdir()
        fresh = RayCluster(tmp_path / "fresh", units)  # the head restarted: a new cluster
        lab_campaign(ws, hosts["hostA"], engine="ray", address=fresh.address)
        run_driver(ws, N, log)
        rows = measured_by(ws)
        assert rows[: len(before)] == before  # what was stored stays, nothing measured twice
        assert_each_once(rows, units["hostA"])
    finally:
        for c in (fresh, cluster):
            if c is not None:
                c.stop()
        stop_hosts(hosts)

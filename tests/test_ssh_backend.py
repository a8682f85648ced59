"""tflite-ssh and openvino-ssh end to end against a real sshd on 127.0.0.1 running the real runtimes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from conftest_remote import *  # noqa: F401,F403  (fixtures)
from conftest_remote import QUICK, free_port, install_fake_benchmark_model

from nnmeter.backends import litert_runner
from nnmeter.backends.base import ConversionJob, MeasureStatus
from nnmeter.backends.openvino_ssh import OpenVINOSSHBackend, OpenVINOSSHConfig
from nnmeter.backends.tflite_ssh import TFLiteSSHBackend, TFLiteSSHConfig
from nnmeter.errors import BackendError

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent


def litert_backend(server, tmp_path, **overrides) -> TFLiteSSHBackend:
    values = dict(python=sys.executable, remote_dir=str(tmp_path / "board dir; touch pwned"))
    values.update(overrides)
    backend = TFLiteSSHBackend(server.config(TFLiteSSHConfig, **values))
    backend.connect()
    return backend


def test_litert_runner_over_ssh(sshd_server, tiny_models, tmp_path):
    with litert_backend(sshd_server, tmp_path) as backend:
        info = backend.device_info
        assert info.device.startswith("ssh:") and "127.0.0.1" in info.device
        assert info.runtime.startswith("ai-edge-litert") and int(info.facts["cores"]) >= 1
        caches = [c for c in (litert_runner.cache_bytes(cpu, True) for cpu in range(os.cpu_count() or 1)) if c]
        assert info.facts.get("private_cache_kb") == (str(max(caches) // 1024) if caches else None)  # no cpu_mask
        results = backend.measure(tiny_models[:2], QUICK)
    for r in results:
        assert r.status is MeasureStatus.OK, r.error
        assert r.stats.rounds == QUICK.rounds and r.stats.runs >= QUICK.rounds * QUICK.runs_per_round
    remote = tmp_path / "board dir; touch pwned"
    assert sorted(p.name for p in remote.iterdir()) == ["litert_runner.py"]  # models removed
    assert not (Path.home() / "pwned").exists() and not (remote / "pwned").exists()


def test_benchmark_model_runner_over_ssh_quotes_paths(sshd_server, tiny_models, tmp_path):
    fake = install_fake_benchmark_model(tmp_path / "bench bin", "litert", tmp_path / "fault", tmp_path / "calls.log")
    odd = tmp_path / "models" / "a b;touch pwned.tflite"
    odd.parent.mkdir()
    shutil.copy(tiny_models[0].path, odd)
    model = replace(tiny_models[0], path=odd)
    with litert_backend(sshd_server, tmp_path, runner="benchmark_model", benchmark_model=str(fake)) as backend:
        assert backend.device_info.runtime_versions["benchmark_model"].startswith("sha256:")
        [result] = backend.measure([model], QUICK)
    assert result.status is MeasureStatus.OK, result.error
    assert result.op_profile and result.op_profile[0].avg_ms > 0
    logged = (tmp_path / "calls.log").read_text()
    assert "a b;touch pwned.tflite" in logged
    assert not (Path.home() / "pwned").exists()


def test_host_key_is_verified_unless_accept_new(sshd_server, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(BackendError) as err:
        litert_backend(sshd_server, tmp_path, known_hosts=str(empty))
    assert "not in" in err.value.message and "accept-new" in err.value.hint
    with litert_backend(sshd_server, tmp_path, known_hosts=str(empty), host_key_policy="accept-new"):
        pass
    assert "ssh-ed25519" in empty.read_text()  # remembered: the next connection verifies it
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{sshd_server.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]))
    with pytest.raises(BackendError) as err:
        litert_backend(sshd_server, tmp_path, known_hosts=str(changed), host_key_policy="accept-new")
    assert "host key changed" in err.value.message


def test_bad_key_and_unreachable_host_are_clear_errors(sshd_server, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(BackendError) as err:
        litert_backend(sshd_server, tmp_path, key_file=str(stranger))
    assert "authentication failed" in err.value.message
    with pytest.raises(BackendError) as err:
        litert_backend(sshd_server, tmp_path, port=free_port())
    assert "cannot connect" in err.value.message


def test_openvino_ssh_runs_benchmark_app(sshd_server, tmp_path):
    from conftest_remote import build_tiny_conv

    config = sshd_server.config(
        OpenVINOSSHConfig, benchmark_app=str(VENV_BIN / "benchmark_app"), remote_dir=str(tmp_path / "ov dir;x")
    )
    with OpenVINOSSHBackend(config) as backend:
        info = backend.connect()
        assert "CPU" in info.facts["openvino_devices"] and info.runtime_versions["openvino"] != ""
        [converted] = backend.convert([ConversionJob("ovconv", tmp_path / "ir", build_tiny_conv, (4,))])
        assert converted.ok, converted.error
        [result] = backend.measure([converted.model], replace(QUICK, rounds=2))
    assert result.status is MeasureStatus.OK, result.error
    assert result.latency_ms > 0 and result.stats.rounds == 2


def test_myriad_without_the_plugin_says_what_to_install(sshd_server, tmp_path):
    config = sshd_server.config(OpenVINOSSHConfig, benchmark_app=str(VENV_BIN / "benchmark_app"), device="MYRIAD")
    with pytest.raises(BackendError) as err:
        OpenVINOSSHBackend(config).connect()
    assert "no MYRIAD device" in err.value.message and "2022.3" in err.value.hint


def test_sshd_killed_mid_batch_then_resume_measures_only_failures(sshd_server, tiny_models, tmp_path):
    from nnmeter.measurement import MeasuringSession, ModelRecord, Store

    # long enough batches that the kill lands inside the second one
    # no drift anchors: the test counts the invocations of its own models
    protocol = replace(QUICK, batch_size=2, rounds=150, min_round_ms=5.0, anchors=False)
    store = Store(tmp_path / "store.sqlite")
    records = store.add_models([ModelRecord(m.id, "kernel", m.id, files={"tflite": str(m.path)}) for m in tiny_models])
    killed = threading.Event()

    def on_progress(done: int, total: int) -> None:
        if done == 2 and not killed.is_set():
            killed.set()
            threading.Timer(0.5, sshd_server.kill).start()

    with litert_backend(sshd_server, tmp_path) as backend:
        session = MeasuringSession(store, tmp_path, backend, protocol)
        first = session.measure(records, progress=on_progress)
        assert [m.status for m in first[:2]] == [MeasureStatus.OK] * 2
        assert [m.status for m in first[2:]] == [MeasureStatus.UNREACHABLE] * 2, [m.error for m in first]
        assert any("device unreachable" in m.error and "attempts" in m.error for m in first[2:]), [
            m.error for m in first
        ]
        sshd_server.start()
        second = session.measure(records)
    assert [m.status for m in second] == [MeasureStatus.OK] * 4
    assert [m.id for m in second[:2]] == [m.id for m in first[:2]]  # kept, not measured again
    assert all(m.id != f.id for m, f in zip(second[2:], first[2:]))  # new measurements of the failures
    store.close()


def test_config_errors_name_the_key():
    from nnmeter.backends import load_backend_config
    from nnmeter.errors import ConfigError

    with pytest.raises(ConfigError, match=r"backend\.host: is required"):
        load_backend_config("tflite-ssh", {"user": "pi"})
    with pytest.raises(ConfigError, match=r"backend\.cpu_mask: 'big' is not a hex CPU mask"):
        load_backend_config("tflite-ssh", {"host": "pi.local", "cpu_mask": "big"})
    with pytest.raises(ConfigError, match=r"backend\.host_key_policy: 'yes' is not valid"):
        load_backend_config("openvino-ssh", {"host": "x", "host_key_policy": "yes"})
    assert load_backend_config("tflite-adb", {"cpu_mask": 70}).cpu_mask == "70"

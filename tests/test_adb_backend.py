"""tflite-adb end to end: adbutils -> a real adb server -> the loopback ADB device -> a benchmark_model
stand-in (LiteRT)."""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest_remote import *  # noqa: F401,F403  (fixtures)
from conftest_remote import QUICK, invocations, wait_gone

from nnmeter.backends import litert_runner
from nnmeter.backends.base import MeasureStatus
from nnmeter.backends.tflite_adb import TFLiteADBBackend
from nnmeter.errors import BackendError

pytestmark = pytest.mark.integration


def backend_for(phone, **overrides) -> TFLiteADBBackend:
    backend = TFLiteADBBackend(phone.config(**overrides))
    backend.connect()
    return backend


def remote_files(phone) -> list[str]:
    folder = Path(phone.remote_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("output_format", ["tflite2", "litert"])
def test_measures_with_benchmark_model_pinned_and_cleans_up(loopback_phone, tiny_models, output_format):
    phone = loopback_phone(output_format=output_format)
    with backend_for(phone) as backend:
        info = backend.device_info
        assert info.device == f"adb:{phone.serial}"
        assert "Loopback Phone Double" in info.description
        assert info.facts["os"] == "Android 14 (SDK 34)" and int(info.facts["cores"]) >= 1
        pinned_core_cache = litert_runner.cache_bytes(0, True)  # cpu_mask "1": core 0, this machine's sysfs
        assert info.facts.get("private_cache_kb") == (str(pinned_core_cache // 1024) if pinned_core_cache else None)
        assert info.runtime_versions["benchmark_model"].startswith("sha256:")
        results = backend.measure(tiny_models[:2], QUICK)
    assert [r.model_id for r in results] == [m.id for m in tiny_models[:2]]
    for r in results:
        assert r.status is MeasureStatus.OK, r.error
        assert r.stats.rounds == QUICK.rounds and r.latency_ms > 0
        assert r.op_profile and r.op_profile[0].op_type == "TfLiteXNNPackDelegate" and r.op_profile[0].avg_ms > 0
    calls = invocations(phone.sandbox)
    assert len(calls) == 2 * (1 + QUICK.rounds)  # one profiling run and one process per round, per model
    assert all(c["affinity"] == [0] for c in calls)  # taskset 1 pinned every run to core 0
    profiled = [c for c in calls if "--enable_op_profiling=true" in c["argv"]]
    assert len(profiled) == 2
    assert any(a.startswith("--graph=") and "nn meter;models" in a for a in calls[0]["argv"])
    assert remote_files(phone) == []  # pushed models removed


def test_gpu_delegate_failure_is_a_recorded_error_not_retried(loopback_phone, tiny_models):
    phone = loopback_phone()
    with backend_for(phone, delegate="gpu") as backend:
        [result] = backend.measure(tiny_models[:1], QUICK)
    assert result.status is MeasureStatus.ERROR
    assert "GPU delegate" in result.error
    calls = invocations(phone.sandbox)
    assert len(calls) == 1 and "--use_gpu=true" in calls[0]["argv"]


def test_crash_is_retried_then_measured(loopback_phone, tiny_models):
    phone = loopback_phone()
    with backend_for(phone) as backend:
        phone.fault_file.write_text("crash-once")
        [result] = backend.measure(tiny_models[:1], QUICK)
    assert result.status is MeasureStatus.OK, result.error
    assert len(invocations(phone.sandbox)) == 1 + 1 + QUICK.rounds  # the crashed attempt, then the normal ones


def test_persistent_crash_becomes_a_crash_result(loopback_phone, tiny_models):
    phone = loopback_phone()
    with backend_for(phone, retries=2) as backend:
        phone.fault_file.write_text("crash")
        results = backend.measure(tiny_models[:2], QUICK)
    assert [r.status for r in results] == [MeasureStatus.CRASH] * 2
    assert "crashed" in results[0].error and "after 2 attempts" in results[0].error


def test_hang_becomes_a_timeout_result(loopback_phone, tiny_models):
    phone = loopback_phone()
    with backend_for(phone, command_timeout_s=3.0, retries=1) as backend:
        phone.fault_file.write_text("hang")
        [result] = backend.measure(tiny_models[:1], QUICK)
        phone.fault_file.unlink()
        [again] = backend.measure(tiny_models[:1], QUICK)  # the device is still usable
    assert result.status is MeasureStatus.TIMEOUT and "did not finish" in result.error
    assert again.status is MeasureStatus.OK, again.error


def test_full_disk_is_a_recorded_failure(loopback_phone, tiny_models):
    phone = loopback_phone(quota_bytes=1)  # the sandbox already holds the scripts: no model fits
    with backend_for(phone) as backend:
        [result] = backend.measure(tiny_models[:1], QUICK)
    assert result.status is MeasureStatus.ERROR
    assert "disk full" in result.error and "after 2 attempts" in result.error


def test_bad_serial_lists_the_attached_devices(loopback_phone):
    phone = loopback_phone()
    with pytest.raises(BackendError) as err:
        TFLiteADBBackend(phone.config(serial="R58M123ABC")).connect()
    assert "R58M123ABC" in str(err.value) and phone.serial in str(err.value)


def test_missing_benchmark_model_says_how_to_push_it(loopback_phone):
    phone = loopback_phone()
    with pytest.raises(BackendError) as err:
        TFLiteADBBackend(phone.config(benchmark_model="/data/local/tmp/nothing")).connect()
    assert "missing or not executable" in err.value.message and "adb push" in err.value.hint


def test_reconnects_after_the_adb_server_restarts(loopback_phone, adb_server, tiny_models):
    phone = loopback_phone()
    with backend_for(phone) as backend:
        adb_server.kill()
        adb_server.start()  # a fresh server knows no network devices: the backend attaches it again
        [result] = backend.measure(tiny_models[:1], QUICK)
    assert result.status is MeasureStatus.OK, result.error


def kill_after(phone, calls: int) -> threading.Thread:
    """Kill the phone once the fake has been started ``calls`` times (in the middle of a batch)."""

    def watch() -> None:
        deadline = time.monotonic() + 300
        while len(invocations(phone.sandbox)) < calls and time.monotonic() < deadline:
            time.sleep(0.02)
        phone.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_device_lost_mid_campaign_then_resume_measures_only_failures(loopback_phone, tiny_models, tmp_path):
    from dataclasses import replace

    from nnmeter.measurement import MeasuringSession, ModelRecord, Store

    phone = loopback_phone()
    protocol = replace(QUICK, batch_size=2, anchors=False)  # no drift anchors: it counts its models' invocations
    per_model = 1 + protocol.rounds
    records = [ModelRecord(m.id, "kernel", m.id, files={"tflite": str(m.path)}) for m in tiny_models]
    store = Store(tmp_path / "store.sqlite")
    records = store.add_models(records)
    with backend_for(phone) as backend:
        watcher = kill_after(phone, 2 * per_model + 1)  # during the second batch
        session = MeasuringSession(store, tmp_path, backend, protocol)
        first = session.measure(records)
        watcher.join()
        assert [m.status for m in first[:2]] == [MeasureStatus.OK] * 2
        assert [m.status for m in first[2:]] == [MeasureStatus.UNREACHABLE] * 2
        assert "device lost" in first[2].error or "unreachable" in first[2].error
        done_before = len(invocations(phone.sandbox))

        phone.start()  # the phone is back: the same backend object measures only what failed
        second = session.measure(records)
    assert [m.status for m in second] == [MeasureStatus.OK] * 4
    assert [m.id for m in second[:2]] == [m.id for m in first[:2]]  # kept, not measured again
    assert len(invocations(phone.sandbox)) - done_before == 2 * per_model
    store.close()


def phone_processes(backend) -> str:
    """``ps`` on the phone, through adb: one command line per process."""
    return backend.transport.run("ps -eww -o args=", 30).stdout


def test_hung_benchmark_model_is_gone_after_the_timeout(loopback_phone, tiny_models):
    phone = loopback_phone()
    with backend_for(phone, command_timeout_s=3.0, retries=1) as backend:
        phone.fault_file.write_text("hang-child")  # adbd's SIGHUP reaches the tool, not the child it waits for
        [result] = backend.measure(tiny_models[:1], QUICK)
        left = wait_gone(lambda: phone_processes(backend), str(phone.fault_file))
        phone.fault_file.unlink()
        [again] = backend.measure(tiny_models[:1], QUICK)
    assert result.status is MeasureStatus.TIMEOUT, result.error
    assert left == []
    assert again.status is MeasureStatus.OK, again.error


def test_push_to_a_phone_that_stops_answering_is_a_bounded_fault(loopback_phone, tiny_models):
    phone = loopback_phone()
    with backend_for(phone, command_timeout_s=3.0, retries=1) as backend:
        (phone.sandbox / "stall-sync").write_text("")
        outcome: dict = {}

        def measure() -> None:
            started = time.monotonic()
            outcome["results"] = backend.measure(tiny_models[:1], QUICK)
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=measure, daemon=True)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "the push still hangs"
        [result] = outcome["results"]
        assert result.status is MeasureStatus.TIMEOUT and "did not finish within 3 s" in result.error, result.error
        assert outcome["seconds"] < 3.0 + 5
        (phone.sandbox / "stall-sync").unlink()
        [again] = backend.measure(tiny_models[:1], QUICK)
    assert again.status is MeasureStatus.OK, again.error


def test_device_lost_mid_batch_leaves_nothing_on_the_phone(loopback_phone, tiny_models):
    phone = loopback_phone()
    protocol = replace(QUICK, batch_size=4, rounds=20, anchors=False)
    with backend_for(phone) as backend:
        watcher = kill_after(phone, 3)  # while the batch's models are being pushed and warmed up
        results = backend.measure(tiny_models, protocol)
        watcher.join()
        assert MeasureStatus.UNREACHABLE in [r.status for r in results]
        assert remote_files(phone)  # the dropped batch's models are still there
        phone.start()  # the phone is back before the backend closes
    assert remote_files(phone) == []


def test_remote_dir_of_another_user_is_refused(loopback_phone):
    phone = loopback_phone()
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    theirs = Path(phone.remote_dir)
    theirs.mkdir(parents=True)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(BackendError) as err:
        backend_for(phone)
    assert str(theirs) in err.value.message and "belongs to user id 65534" in err.value.message


def test_non_finite_timeouts_are_bounded_or_refused(loopback_phone, tiny_models):
    phone = loopback_phone()
    with backend_for(phone, command_timeout_s=math.inf) as backend:  # a week at most: never an OverflowError
        [result] = backend.measure(tiny_models[:1], QUICK)
    assert result.status is MeasureStatus.OK, result.error
    with pytest.raises(BackendError) as err:
        backend_for(phone, command_timeout_s=math.nan)
    assert "command_timeout_s" in err.value.message

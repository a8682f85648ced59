"""The local backends for real: convert tiny Keras models, measure them with LiteRT and OpenVINO."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import failing_model, tiny_conv_model, tiny_two_input_model

from nnmeter.backends import (
    backend_class,
    backend_names,
    connect_backend,
    create_backend,
    list_backends,
    litert_runner,
    load_backend_config,
)
from nnmeter.backends.base import ConversionJob, MeasureStatus, ModelFile
from nnmeter.backends.converters import converter_version
from nnmeter.backends.local import RunnerSession
from nnmeter.backends.protocol import MeasureError, MeasurementProtocol
from nnmeter.backends.remote import parse_facts
from nnmeter.backends.tflite_local import TFLiteLocalBackend
from nnmeter.errors import BackendError, ConfigError, NnmeterError

QUICK = MeasurementProtocol(warmup_runs=1, rounds=4, runs_per_round=2, min_round_ms=0.0, max_remeasures=0)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    """A tflite-local backend and its conversions of a small batch (one TensorFlow worker for the module)."""
    out = tmp_path_factory.mktemp("models")
    backend = connect_backend("tflite-local", {"convert_workers": 1})
    jobs = [
        ConversionJob("conv8", out, tiny_conv_model, (8, 4, 8)),
        ConversionJob("conv6", out, tiny_conv_model, (6, 3, 5)),
        ConversionJob("two", out, tiny_two_input_model),
        ConversionJob("broken", out, failing_model),
    ]
    progress = []
    results = backend.convert(jobs, progress=lambda done, total: progress.append((done, total)))
    yield backend, jobs, results, progress
    backend.close()


def test_convert_writes_models_and_reports_failures(tflite):
    backend, jobs, results, progress = tflite
    assert [r.job_id for r in results] == ["conv8", "conv6", "two", "broken"]
    conv8, conv6, two, broken = results
    assert conv8.ok and conv8.model.path == jobs[0].out_dir / "conv8.tflite" and conv8.model.path.stat().st_size > 0
    assert conv8.model.input_shapes == ((1, 8, 8, 4),)
    assert conv6.model.input_shapes == ((1, 6, 6, 3),)
    assert two.model.input_shapes == ((1, 8, 8, 4), (1, 8, 8, 4))
    assert not broken.ok and "no such kernel configuration" in broken.error
    assert progress[-1] == (4, 4)


def test_convert_does_not_rebuild_existing_outputs(tflite):
    backend, jobs, results, _ = tflite
    before = results[0].model.path.stat().st_mtime_ns
    again = backend.convert(jobs[:1])
    assert again[0].model == results[0].model and results[0].model.path.stat().st_mtime_ns == before


def test_measure_gives_consistent_statistics(tflite):
    backend, _, results, _ = tflite
    models = [r.model for r in results if r.ok]
    measured = backend.measure(models, QUICK)
    assert [m.model_id for m in measured] == ["conv8", "conv6", "two"]
    for result in measured:
        assert result.status in (MeasureStatus.OK, MeasureStatus.UNSTABLE), result.error
        s = result.stats
        assert 0 < s.min_ms <= s.median_ms <= s.p90_ms
        assert s.rounds == QUICK.rounds and s.runs >= QUICK.rounds * QUICK.runs_per_round
        assert result.latency_ms == s.median_ms and result.device_seconds > 0


def test_thread_clock_is_used_for_one_thread_and_refused_for_more(tflite):
    """clock auto times single-threaded LiteRT on the invoking thread's CPU time; the runner refuses the
    thread clock where other threads do part of the work (it would under-count them)."""
    backend, _, results, _ = tflite
    path = str(results[0].model.path)
    process = backend.open_runner()
    try:
        one = process.request("load", path=path, threads=1)
        two = process.request("load", path=path, threads=2)
        assert one["thread_clock"] is True and two["thread_clock"] is False
        times = process.request("run", handle=one["handle"], runs=3, min_time_ms=0.0, clock="thread")["times_ms"]
        assert len(times) == 3 and all(t > 0 for t in times)
        with pytest.raises(MeasureError, match="thread clock"):
            process.request("run", handle=two["handle"], runs=1, clock="thread")
        with pytest.raises(MeasureError, match="unknown clock 'cpu'"):
            process.request("run", handle=one["handle"], runs=1, clock="cpu")
    finally:
        process.close()
    assert ("run", "thread") in _sent_field(RunnerSession(backend.open_runner(), 1, {}, clock="auto"), path, "clock")
    wall = backend.measure([results[0].model], dataclasses.replace(QUICK, clock="wall"))[0]
    assert wall.status.has_latency


def test_settling_invokes_untimed_until_the_ramp_flattens(tflite, monkeypatch):
    """A round settles before it is timed: untimed invocations while each is faster than SETTLED times the one
    before, at most settle_runs; the real runner takes the field."""
    now = [0.0]
    monkeypatch.setitem(litert_runner.CLOCKS, "scripted", lambda: now[0])

    def invoking(durations):
        steps = iter(durations)
        return lambda model: now.__setitem__(0, now[0] + next(steps))

    assert litert_runner.settle(invoking([8.0, 6.0, 4.0, 4.1, 9.9]), None, 16, "scripted") == 4
    assert litert_runner.settle(invoking([10.0, 9.0, 8.0, 7.0, 6.0, 5.0]), None, 5, "scripted") == 5  # the cap
    assert litert_runner.settle(invoking([]), None, 0, "scripted") == 0

    backend, _, results, _ = tflite
    process = backend.open_runner()
    try:
        handle = process.request("load", path=str(results[0].model.path), threads=1)["handle"]
        times = process.request("run", handle=handle, runs=3, min_time_ms=0.0, settle_runs=16)["times_ms"]
        assert len(times) == 3 and all(t > 0 for t in times)
        # an unknown field is ignored (a newer client, an older runner on a board)
        assert len(process.request("run", handle=handle, runs=2, later_field=1)["times_ms"]) == 2
    finally:
        process.close()


def test_private_cache_size_is_the_largest_cache_the_core_does_not_share(tmp_path):
    caches = {
        "index0": ("Data", "48K", "1"),
        "index1": ("Instruction", "64K", "1"),
        "index2": ("Unified", "1024K", "1"),
        "index3": ("Unified", "32768K", "0-1"),
    }
    for name, (kind, size, shared) in caches.items():
        folder = tmp_path / "cpu1" / "cache" / name
        folder.mkdir(parents=True)
        for field, value in (("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (folder / field).write_text(value + "\n")
    assert litert_runner.cache_bytes(1, True, str(tmp_path)) == 1 << 20
    assert litert_runner.cache_bytes(1, False, str(tmp_path)) == 32 << 20
    assert litert_runner.cache_bytes(0, True, str(tmp_path)) is None  # no sysfs entry for cpu0


def test_device_info_names_host_runtime_and_converter(tflite):
    info = tflite[0].device_info
    assert info.backend == "tflite-local" and info.device.startswith("local:")
    assert info.runtime_versions["converter"] == converter_version("tflite")
    assert info.facts["xnnpack"] == "yes" and "ai-edge-litert" in info.runtime
    measuring_core_cache = litert_runner.cache_bytes(int(info.facts["measure_cores"].split(",")[0]), True)
    assert info.facts.get("private_cache_kb") == (str(measuring_core_cache // 1024) if measuring_core_cache else None)


def test_device_facts_pick_the_private_cache_of_the_pinned_core():
    big_little = "cpu=x\nprivate_cache_kb_by_cpu= 0:128 1:128 10:1024 4:512 5:512\n"
    assert parse_facts(big_little)["private_cache_kb"] == "1024"  # unpinned: the core with the largest
    assert parse_facts(big_little, cpu_mask="30")["private_cache_kb"] == "512"  # cores 4-5
    assert parse_facts(big_little, cpu_mask="0x400")["private_cache_kb"] == "1024"  # core 10
    assert "private_cache_kb" not in parse_facts("private_cache_kb_by_cpu=\n", cpu_mask="1")


def test_bad_models_in_a_batch_are_errors_and_the_rest_is_measured(tflite, tmp_path):
    backend, _, results, _ = tflite
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer")
    models = [
        ModelFile("garbage", garbage, "tflite"),
        results[0].model,
        ModelFile("missing", tmp_path / "missing.tflite", "tflite"),
        ModelFile("keras", tmp_path / "m.keras", "keras"),
    ]
    garbage_r, good, missing, keras_r = backend.measure(models, QUICK)
    assert garbage_r.status == MeasureStatus.ERROR and "flatbuffer" in garbage_r.error.lower()
    assert good.status.has_latency and good.stats.rounds == QUICK.rounds
    assert missing.status == MeasureStatus.ERROR and "no such model file" in missing.error
    assert keras_r.status == MeasureStatus.ERROR and "convert it first" in keras_r.error


class _KillsRunnerBackend(TFLiteLocalBackend):
    """Kills its runner process (SIGKILL, as the OOM killer would) in the 2nd round of ``victim``."""

    victim = "conv6.tflite"

    def open_session(self, clock: str = "wall") -> RunnerSession:
        session = super().open_session(clock)
        paths, runs = {}, []
        load, run = session.load, session.run

        def tracking_load(model_path):
            handle = load(model_path)
            paths[handle] = Path(model_path).name
            return handle

        def killing_run(handle, n, min_ms, settle_runs=0):
            if paths[handle] == self.victim:
                runs.append(handle)
                if len(runs) == 2:
                    os.kill(session.process.pid, signal.SIGKILL)
            return run(handle, n, min_ms, settle_runs)

        session.load, session.run = tracking_load, killing_run
        return session


def test_a_runner_killed_mid_batch_is_a_crash_and_the_batch_goes_on(tflite):
    _, _, results, _ = tflite
    backend = _KillsRunnerBackend(load_backend_config("tflite-local", {}))
    first, victim, last = backend.measure([r.model for r in results[:3]], QUICK)
    assert victim.status == MeasureStatus.CRASH and "SIGKILL" in victim.error
    for other in (first, last):
        assert other.status.has_latency and other.stats.rounds == QUICK.rounds


def test_a_command_over_the_timeout_is_a_timeout(tflite):
    _, _, results, _ = tflite
    backend = create_backend("tflite-local", {"command_timeout_s": 0.2})
    # two million warm-up invocations of a microsecond model: seconds, far over the timeout
    slow = MeasurementProtocol(warmup_runs=2_000_000, rounds=1, max_remeasures=0)
    [result] = backend.measure([results[0].model], slow)
    assert result.status == MeasureStatus.TIMEOUT and "within 0.2 s" in result.error


def test_openvino_local_converts_and_measures_ir_and_tflite(tflite, tmp_path):
    _, _, tflite_results, _ = tflite
    backend = connect_backend("openvino-local", {"convert_workers": 1})
    try:
        assert backend.device_info.runtime.startswith("openvino")
        from_keras, from_file = backend.convert(
            [
                ConversionJob("conv8", tmp_path, tiny_conv_model, (8, 4, 8)),
                ConversionJob("user", tmp_path, source=tflite_results[1].model.path),
            ]
        )
        assert from_keras.ok and from_keras.model.path.suffix == ".xml", from_keras.error
        assert from_keras.model.path.with_suffix(".bin").exists()
        assert from_file.ok and from_file.model.input_shapes == ((1, 6, 6, 3),)
        measured = backend.measure([from_keras.model, from_file.model, tflite_results[2].model], QUICK)
        for result in measured:
            assert result.status.has_latency, result.error
            assert result.stats.min_ms <= result.stats.median_ms <= result.stats.p90_ms
            assert result.stats.rounds == QUICK.rounds
    finally:
        backend.close()


def hanging_model(pid_file: str):
    """A build function that never returns, as a converter that hangs (module-level: workers import it)."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(3600)


def test_a_conversion_over_the_timeout_fails_and_its_worker_is_replaced(tmp_path):
    """One job hangs: it fails with a timeout once it has run convert_timeout_s, its worker process is killed,
    and the other jobs (those in flight with it included) are converted; the pool goes on working."""
    from nnmeter.builder.workspace import tiny_model_path

    backend = create_backend("tflite-local", {"convert_workers": 2, "convert_timeout_s": 3})
    pid_file = tmp_path / "hanging.pid"
    tiny = tiny_model_path()  # a .tflite source is copied: no TensorFlow import counts against the timeout
    jobs = [
        ConversionJob("hangs", tmp_path, hanging_model, (str(pid_file),)),
        *[ConversionJob(f"copy{i}", tmp_path, source=tiny) for i in range(4)],
    ]
    started = time.monotonic()
    try:
        results = backend.convert(jobs)
        seconds = time.monotonic() - started
        assert [r.job_id for r in results] == ["hangs", "copy0", "copy1", "copy2", "copy3"]
        assert not results[0].ok
        assert "did not finish within 3 s (backend.convert_timeout_s)" in results[0].error
        assert "worker process was killed and replaced" in results[0].error
        assert all(r.ok for r in results[1:]), [r.error for r in results]
        assert seconds < 60, seconds  # not the hour the job would take
        hung = int(pid_file.read_text())
        deadline = time.monotonic() + 10
        while _alive(hung) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(hung)
        again = backend.convert([ConversionJob("after", tmp_path, source=tiny)])  # the pool still converts
        assert again[0].ok, again[0].error
        assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    finally:
        backend.close()


def test_convert_reports_unreadable_user_files(tmp_path):
    backend = create_backend("tflite-local", {"convert_workers": 1})
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    results = backend.convert(
        [
            ConversionJob("missing", tmp_path, source=tmp_path / "nope.keras"),
            ConversionJob("text", tmp_path, source=text),
        ]
    )
    backend.close()
    assert "no such file" in results[0].error
    assert "not a model file" in results[1].error


_POOL_THEN_WAIT = """
import multiprocessing, sys, time
from pathlib import Path
from nnmeter.backends.base import ConversionJob
from nnmeter.backends.conversion import ConversionPool
pool = ConversionPool("tflite", 2, [])
pool.run([ConversionJob(str(i), Path(sys.argv[1]), source=Path(sys.argv[1]) / "nope.keras") for i in range(4)])
print(*[p.pid for p in multiprocessing.active_children()], flush=True)
time.sleep(600)
"""


def test_conversion_workers_exit_when_their_parent_is_killed(tmp_path):
    """kill -9 of the command alone (not its process group) must not leave its TensorFlow workers behind."""
    parent = subprocess.Popen([sys.executable, "-c", _POOL_THEN_WAIT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
    finally:
        parent.kill()
        parent.wait()
    assert len(workers) == 2
    deadline = time.monotonic() + 60  # they poll their parent every second
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # an exited orphan waits for init to reap it


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(NnmeterError, match="'tflite-locl' is not a backend; known: .*tflite-local"):
        backend_class("tflite-locl")
    with pytest.raises(ConfigError, match=r"^campaign.yaml: backend.name: 'tflite-locl' is not a backend"):
        load_backend_config("tflite-locl", {})


@pytest.mark.parametrize(
    "options, key, message",
    [
        ({"thread": 2}, "backend.thread", "did you mean 'threads'"),
        ({"threads": 0}, "backend.threads", "below the minimum"),
        ({"measure_cores": "fast"}, "backend.measure_cores", "'auto' or a list"),
        ({"measure_cores": [4096]}, "backend.measure_cores", "not all cores"),
        ({"convert_workers": "many"}, "backend.convert_workers", "'auto' or a number"),
    ],
)
def test_config_errors_point_at_the_key(options, key, message):
    with pytest.raises(ConfigError) as caught:
        load_backend_config("tflite-local", {"name": "tflite-local", **options}, source="ws/campaign.yaml")
    assert caught.value.key_path == key and message in str(caught.value)
    assert str(caught.value).startswith(f"ws/campaign.yaml: {key}: ")


def test_registry_lists_every_entry_point_and_why_one_is_unusable():
    entries = {e.name: e for e in list_backends()}
    assert set(entries) == set(backend_names())
    assert {"tflite-local", "openvino-local"} <= set(entries)
    assert entries["tflite-local"].usable and entries["tflite-local"].reason == ""
    for entry in entries.values():
        assert entry.usable or entry.reason  # an unusable backend always says why


def _sent_field(session: RunnerSession, path, field: str) -> list[tuple[str, object]]:
    """(command, value of ``field``) of every request ``session`` sends to load ``path`` and run one round."""
    sent = []
    request = session.process.request
    session.process.request = lambda cmd, **kw: (sent.append((cmd, kw.get(field))), request(cmd, **kw))[1]
    try:
        session.run(session.load(path), 2, 0.0)
    finally:
        session.close()
    return sent


def test_conversion_workers_use_every_core_the_measuring_one_included():
    """Conversion and measurement take turns, so conversions get the measuring core too while it is idle."""
    backend = create_backend("tflite-local", {})
    assert backend.convert_cores == sorted(os.sched_getaffinity(0))
    assert set(backend.measure_cores) <= set(backend.convert_cores)


def test_a_runner_that_cannot_be_pinned_is_a_clear_error_and_leaves_no_process():
    from nnmeter.backends.local import RunnerProcess

    with pytest.raises(BackendError, match=r"cannot pin the runner to cores \[4096\]") as err:
        RunnerProcess(TFLiteLocalBackend.runner_script, [4096], command_timeout_s=10)
    assert "measure_cores" in err.value.hint

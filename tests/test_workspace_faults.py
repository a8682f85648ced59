"""Faults around a workspace: two writers at once, SIGTERM, interrupted writes, store rows that point outside it.

The unit tests hold the writer lock from a small Python process; the e2e tests run `nnmeter-build run` on a tiny
campaign: a second writer fails at once while `status` works, and a campaign stopped by SIGTERM during its kernels
step exits 130, leaves no temporary file, and resumes to the end without losing or repeating a measurement.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import cli_process, make_workspace, measurement_rows

from nnmeter.backends import converters
from nnmeter.builder import kernels
from nnmeter.builder.workspace import LOCK_FILE, Workspace, write_text_atomic
from nnmeter.cli.main import main
from nnmeter.errors import WorkspaceInUse
from nnmeter.measurement import ModelRecord
from nnmeter.progress import Reporter

# A process that holds a workspace's writer lock until it is killed, as a running command does.
_HOLDER = """
import sys, time
from nnmeter.builder.workspace import Workspace
with Workspace.open(sys.argv[1]) as ws, ws.lock("nnmeter-build run " + sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""

# `nnmeter-build hold WS`: a command that takes the lock and writes a temporary file, then waits for a signal.
_HOLD_COMMAND = """
import sys, time
from pathlib import Path
from nnmeter.cli.main import command, main, workspace_argument

@command("hold", "hold the lock", workspace_argument)
def _hold(args):
    from nnmeter.builder.workspace import Workspace
    with Workspace.open(args.workspace) as ws, ws.lock():
        tmp = ws.reports_dir / ".index.html.tmp"
        try:
            tmp.write_text("half a report")
            print("locked", flush=True)
            time.sleep(600)
        finally:
            tmp.unlink(missing_ok=True)
    return 0

sys.exit(main(["hold", sys.argv[1]]))
"""

_SINCE = r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def _start(script: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "locked", line + proc.stderr.read()
    return proc


def _locked_elsewhere(ws: Path) -> bool:
    """Whether some open file description holds the workspace's flock (a new one cannot take it)."""
    fd = os.open(ws / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.unit
def test_a_second_writer_fails_at_once_naming_the_holder_and_readers_still_work(tmp_path, capsys):
    ws = make_workspace(tmp_path / "ws")
    campaign = (ws / "campaign.yaml").read_text()
    holder = _start(_HOLDER, str(ws))
    try:
        started = time.monotonic()
        with pytest.raises(WorkspaceInUse) as caught, Workspace.open(ws) as other, other.lock():
            pass
        assert time.monotonic() - started < 1.0  # at once, not after SQLite's 60 s
        assert re.fullmatch(
            rf"workspace {re.escape(str(ws))} is in use by PID {holder.pid} \(nnmeter-build run {re.escape(str(ws))}\) "
            + _SINCE,
            caught.value.message,
        ), caught.value.message
        assert caught.value.exit_code == 1 and "reading commands work meanwhile" in caught.value.hint

        for argv in (["report", str(ws)], ["init", str(ws), "--force"], ["run", str(ws)], ["train", str(ws)]):
            assert main(argv) == 1, argv
            err = capsys.readouterr().err
            assert f"error: workspace {ws} is in use by PID {holder.pid}" in err, err
        assert (ws / "campaign.yaml").read_text() == campaign  # init --force changed nothing

        # reading commands take no lock
        assert main(["status", str(ws)]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"in use by PID {holder.pid} \(nnmeter-build run .*\) {_SINCE}", out), out
        assert main(["status", str(ws), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["in_use_by"]["pid"] == holder.pid
        assert main(["rules", str(ws), "--show"]) == 2  # no rules yet: the reason is that, not the lock
        assert "no rules yet" in capsys.readouterr().err
    finally:
        holder.kill()  # kill -9: the kernel releases the flock with the process
        holder.wait()
    with Workspace.open(ws) as again:
        assert again.lock_holder() is None  # the file still names the dead process: not a holder
        with again.lock():
            assert again.lock_holder()["pid"] == os.getpid()
        assert again.lock_holder() is None
    assert main(["status", str(ws)]) == 0 and "in use by" not in capsys.readouterr().out


@pytest.mark.unit
def test_the_lock_is_reentrant_in_a_process_and_released_on_exit_and_on_errors(tmp_path):
    ws = Workspace.open(make_workspace(tmp_path / "ws"))
    with ws.lock("outer"):
        with Workspace.open(ws.root).lock("inner"):  # the steps run_campaign calls take it again
            assert _locked_elsewhere(ws.root)
        assert _locked_elsewhere(ws.root) and ws.lock_holder()["command"] == "outer"
    assert not _locked_elsewhere(ws.root)
    assert (ws.root / LOCK_FILE).read_text() == ""  # who held it is cleared on release
    with pytest.raises(KeyboardInterrupt), ws.lock():
        raise KeyboardInterrupt
    assert not _locked_elsewhere(ws.root)


@pytest.mark.unit
def test_sigterm_is_an_interrupt_exit_130_that_runs_the_cleanups_and_releases_the_lock(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    proc = _start(_HOLD_COMMAND, str(ws))
    assert _locked_elsewhere(ws) and (ws / "reports" / ".index.html.tmp").exists()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (proc.returncode, err)
    assert (
        "nnmeter-build hold: terminated (SIGTERM); what was measured is in the store, "
        "run the command again to resume" in err
    ), err
    assert "Traceback" not in err
    assert not (ws / "reports" / ".index.html.tmp").exists()
    assert not _locked_elsewhere(ws)


@pytest.mark.unit
def test_model_files_the_store_places_outside_the_workspace_are_never_deleted(tmp_path):
    """A store is only a file: a model row whose path leads out of models/ is skipped and reported, not deleted."""
    ws = Workspace.open(make_workspace(tmp_path / "a" / "ws"))
    outside = tmp_path / "outside.tflite"  # = ws/../../outside.tflite
    absolute = tmp_path / "absolute.tflite"
    inside = ws.models_dir / "tflite" / "kernel" / "inside.tflite"
    for path in (outside, absolute, inside):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"TFL3")
    ws.store.add_models(
        [
            ModelRecord(id="up", kind="kernel", name="fc", files={"tflite": "../../outside.tflite"}),
            ModelRecord(id="abs", kind="kernel", name="fc", files={"tflite": str(absolute)}),
            ModelRecord(id="in", kind="kernel", name="fc", files={"tflite": inside.relative_to(ws.root).as_posix()}),
        ]
    )
    records = ws.store.models(kind="kernel")  # as the kernels step reads them back

    class Notes(Reporter):
        def __init__(self) -> None:
            self.notes: list[tuple[str, bool]] = []

        def note(self, text: str, *, warning: bool = False) -> None:
            self.notes.append((text, warning))

    notes = Notes()
    session = SimpleNamespace(backend=SimpleNamespace(model_format="tflite"), root=ws.root, reporter=notes)
    skipped = kernels._remove_measured_files(session, records)
    assert outside.exists() and absolute.exists()
    assert not inside.exists()  # the workspace's own file is deleted as before
    assert skipped == ["../../outside.tflite", str(absolute)]
    assert len(notes.notes) == 2 and all(warning for _, warning in notes.notes)
    assert "'../../outside.tflite' in the store is outside" in notes.notes[0][0] and "not deleted" in notes.notes[0][0]
    ws.close()


@pytest.mark.unit
def test_interrupted_writes_leave_no_temporary_file(tmp_path, monkeypatch):
    """campaign.yaml, the evaluation, the report (write_text_atomic) and converted models (_write_atomic): a write
    interrupted between the temporary file and its rename leaves the old file and no temporary one."""
    target = tmp_path / "index.html"
    target.write_text("old")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Path, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_text_atomic(target, "new")
    model = tmp_path / "m.tflite"
    with monkeypatch.context() as m:
        m.setattr(converters.os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            converters._write_atomic(model, b"TFL3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]
    assert target.read_text() == "old"
    assert write_text_atomic(target, "new").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


# --- e2e: `nnmeter-build run` on a tiny campaign ------------------------------------------------------------

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
  kernels: [conv-bn-relu, conv-bn, add, addrelu, relu, maxpool, global-avgpool, fc, conv-block]
  init_samples: 12
  iterations: 0
  min_train_samples: 5
  validation_fraction: 0.2
evaluation:
  families: [nas-resnet]
  resolutions: [32]
  models_per_family: 2
  repeats: 2
"""


def _leftovers(ws: Path) -> list[str]:
    """Temporary files and staging folders anywhere in the workspace (hidden entries of its root but the lock)."""
    return sorted(
        p.relative_to(ws).as_posix()
        for p in ws.rglob("*")
        if ".tmp" in p.name or (p.parent == ws and p.name.startswith(".") and p.name != LOCK_FILE)
    )


def _holds_lock(ws: Path, pid: int) -> bool:
    try:
        return json.loads((ws / LOCK_FILE).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def tiny_workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("faults") / "ws"
    init = subprocess.run(
        [sys.executable, "-m", "nnmeter.cli", "init", str(ws), "--backend", "tflite-local"],
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    (ws / "campaign.yaml").write_text(TINY_CAMPAIGN)
    return ws


@pytest.mark.e2e
def test_two_writers_on_one_workspace(tiny_workspace: Path):
    """A second `run` fails at once naming the first; `status` works meanwhile; SIGTERM ends the first with 130."""
    ws = tiny_workspace
    first = cli_process("run", str(ws))
    try:
        deadline = time.monotonic() + 120
        while not _holds_lock(ws, first.pid) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _holds_lock(ws, first.pid), "the run never took the lock"
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "nnmeter.cli", "run", str(ws)], capture_output=True, text=True, timeout=120
        )
        seconds = time.monotonic() - started
        assert second.returncode == 1, second.stdout + second.stderr
        assert re.search(
            rf"nnmeter-build run: error: workspace {re.escape(str(ws))} is in use by PID {first.pid} "
            rf"\(nnmeter-build run {re.escape(str(ws))}\) {_SINCE}",
            second.stderr,
        ), second.stderr
        assert seconds < 30, seconds  # Python's start and imports; no wait for the first run
        status = subprocess.run(
            [sys.executable, "-m", "nnmeter.cli", "status", str(ws)], capture_output=True, text=True, timeout=120
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"in use by PID {first.pid} (nnmeter-build run {ws})" in status.stdout
        assert first.poll() is None, "the first run ended on its own: " + first.stdout.read()
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 130, out
    assert "terminated (SIGTERM); what was measured is in the store, run the command again to resume" in out
    assert "Traceback" not in out
    assert not _leftovers(ws)
    assert (ws / LOCK_FILE).read_text() == ""


@pytest.mark.e2e
def test_sigterm_mid_campaign_then_resumed_loses_nothing_and_measures_nothing_twice(tiny_workspace: Path):
    ws = tiny_workspace
    store = ws / "store.sqlite"
    kernel_rows = sum(r[1] == "kernel" for r in measurement_rows(store))
    run = cli_process("run", str(ws))
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and run.poll() is None:
            if sum(r[1] == "kernel" for r in measurement_rows(store)) >= kernel_rows + 8:  # the kernels step, 2 batches
                break
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before kernel measurement:\n" + run.stdout.read()
        run.send_signal(signal.SIGTERM)  # `kill PID`: the command alone, which stops its own workers
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 130, out
    assert "run: terminated (SIGTERM); what was measured is in the store" in out and "Traceback" not in out
    assert not _leftovers(ws)
    assert (ws / LOCK_FILE).read_text() == ""
    before = measurement_rows(store)
    assert any(r[1] == "kernel" for r in before)
    assert not (ws / "predictor" / "manifest.yaml").exists()

    # the steps that were interrupted, to the end (the later ones resume like any run: test_campaign_e2e.py)
    resumed = cli_process("run", str(ws), "--only", "rules", "kernels")
    out, _ = resumed.communicate(timeout=1800)
    assert resumed.returncode == 0, out
    after = measurement_rows(store)
    assert after[: len(before)] == before  # nothing stored before SIGTERM is lost or changed
    once = [(r[2], r[3], r[5]) for r in after if r[1] in ("kernel", "rule-case") and r[4] == "ok"]
    assert len(once) == len(set(once)), "a kernel or rule-case model was measured twice"
    assert "kernels  ran" in out
    assert not _leftovers(ws)

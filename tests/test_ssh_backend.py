"""tflite-ssh and openvino-ssh end to end against a real sshd on 127.0.0.1 running the real runtimes."""

from __future__ import annotations

import base64
import math
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest_remote import *  # noqa: F401,F403  (fixtures)
from conftest_remote import QUICK, free_port, install_fake_benchmark_model, install_hanging_python, wait_gone

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


def pushed_files(folder: Path) -> list[str]:
    """The files under ``folder`` (what nnmeter pushed and left), relative; folders themselves do not count."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


def board_processes(backend) -> str:
    """``ps`` on the board, over the backend's own SSH connection: one command line per process."""
    return backend.transport.run("ps -eww -o args=", 30).stdout


def test_litert_runner_over_ssh(sshd_server, tiny_models, tmp_path):
    with litert_backend(sshd_server, tmp_path) as backend:
        info = backend.device_info
        assert info.device.startswith("ssh:") and "127.0.0.1" in info.device
        assert info.runtime.startswith("ai-edge-litert") and int(info.facts["cores"]) >= 1
        caches = [c for c in (litert_runner.cache_bytes(cpu, True) for cpu in range(os.cpu_count() or 1)) if c]
        assert info.facts.get("private_cache_kb") == (str(max(caches) // 1024) if caches else None)  # no cpu_mask
        sock = backend.transport.client.get_transport().sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)  # and SSH keepalives: a dead link shows
        results = backend.measure(tiny_models[:2], QUICK)
        remote = tmp_path / "board dir; touch pwned"
        assert pushed_files(remote) == []  # after the batch: its models and the runner removed
        assert (remote.stat().st_mode & 0o777) == 0o700  # created private
    for r in results:
        assert r.status is MeasureStatus.OK, r.error
        assert r.stats.rounds == QUICK.rounds and r.stats.runs >= QUICK.rounds * QUICK.runs_per_round
    assert list(remote.iterdir()) == []  # closed: nothing nnmeter made is left
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
    assert list((tmp_path / "ov dir;x").iterdir()) == []  # the IR and benchmark_app's report folder removed


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
    assert list((tmp_path / "board dir; touch pwned").iterdir()) == []  # the dropped batch's files too
    store.close()


def test_hung_benchmark_model_is_killed_on_the_board(sshd_server, tiny_models, tmp_path):
    fault = tmp_path / "fault"
    fake = install_fake_benchmark_model(tmp_path / "bench bin", "litert", fault, tmp_path / "calls.log")
    config = dict(runner="benchmark_model", benchmark_model=str(fake), command_timeout_s=3.0, retries=1)
    with litert_backend(sshd_server, tmp_path, **config) as backend:
        fault.write_text("hang")
        started = time.monotonic()
        [result] = backend.measure(tiny_models[:1], QUICK)
        took = time.monotonic() - started
        left = wait_gone(lambda: board_processes(backend), f"--fault_file={fault}")
        fault.unlink()
        [again] = backend.measure(tiny_models[:1], QUICK)  # alone on the board again
    assert result.status is MeasureStatus.TIMEOUT, result.error
    assert took < 3.0 + 10
    assert left == []  # OpenSSH signals nothing when a channel closes: nnmeter killed it
    assert again.status is MeasureStatus.OK, again.error


def test_hung_litert_runner_is_killed_on_the_board(sshd_server, tiny_models, tmp_path):
    fault = tmp_path / "runner fault"
    python = install_hanging_python(tmp_path / "hanging python", fault)
    # 5 s: enough for a load on a busy machine, so that what times out is the invoke() that hangs
    with litert_backend(sshd_server, tmp_path, python=str(python), command_timeout_s=5.0, retries=1) as backend:
        fault.write_text("hang")  # runners started from now on hang in their first invoke()
        [result] = backend.measure(tiny_models[:1], QUICK)
        left = wait_gone(lambda: board_processes(backend), str(tmp_path / "board dir; touch pwned"))
        fault.unlink()
        [again] = backend.measure(tiny_models[:1], QUICK)
    assert result.status is MeasureStatus.TIMEOUT and "did not answer 'warmup'" in result.error, result.error
    assert left == []
    assert again.status is MeasureStatus.OK, again.error


def test_command_a_dropped_connection_left_running_is_killed_on_reconnect(sshd_server, tmp_path):
    from nnmeter.backends.remote import DeviceFault, FaultKind, connect_ssh

    marker = f"--left-by-a-dropped-connection={tmp_path}"

    def local_processes() -> str:  # the board is this machine
        return subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout

    transport = connect_ssh(sshd_server.config(TFLiteSSHConfig))
    try:
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = transport.run(
                    shlex.join([sys.executable, "-c", "import time; time.sleep(600)", marker]), 60
                )
            except DeviceFault as fault:
                outcome["fault"] = fault

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while marker not in local_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in sshd_server.sessions():  # the connection drops; the board and the command live on
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                os.kill(pid, signal.SIGKILL)
        thread.join(30)
        assert "fault" in outcome and outcome["fault"].kind is FaultKind.DISCONNECT, outcome
        assert marker in local_processes()  # sshd ended the session, not the command
        transport.reconnect()
        assert wait_gone(local_processes, marker) == []
    finally:
        transport.close()


def test_push_to_a_board_that_stops_answering_is_a_bounded_fault(sshd_server, tiny_models, tmp_path):
    from nnmeter.backends.remote import DeviceFault

    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    board = tmp_path / "board"
    board.mkdir()
    target = board / "big.bin"
    with litert_backend(sshd_server, tmp_path, command_timeout_s=3.0, retries=1) as backend:
        transport = backend.transport
        transport.min_transfer_bytes_per_s = 256 << 20  # a short bound for the test: the floor, 3 s
        outcome: dict = {}

        def push() -> None:
            started = time.monotonic()
            try:
                transport.push_checked(big, str(target), str(board), 3.0)
            except DeviceFault as fault:
                outcome["fault"] = fault
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=push, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not target.exists() and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0005)
        sshd_server.stop_sessions()  # mid-push: the file is open on the board, the data on its way
        thread.join(20)
        sshd_server.continue_sessions()
        assert not thread.is_alive(), "the push still hangs"
        assert "fault" in outcome, outcome
        assert outcome["seconds"] < 3.0 + 5 and "did not finish within 3 s" in str(outcome["fault"])
        assert target.stat().st_size < big.stat().st_size  # it stopped mid-push
        [result] = backend.measure(tiny_models[:1], QUICK)  # the next operation connects again
    assert result.status is MeasureStatus.OK, result.error


def test_remote_dir_of_another_user_or_open_to_others_is_refused(sshd_server, tmp_path):
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
    else:
        theirs = Path("/")  # root's
    with pytest.raises(BackendError) as err:
        litert_backend(sshd_server, tmp_path, remote_dir=str(theirs))
    assert str(theirs) in err.value.message and "belongs to user id" in err.value.message
    assert "remote_dir" in err.value.hint
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BackendError) as err:
        litert_backend(sshd_server, tmp_path, remote_dir=str(shared))
    assert str(shared) in err.value.message and "writable by other users" in err.value.message
    assert f"chmod 700 {shared}" in err.value.hint


def test_runner_swapped_on_the_board_is_not_run(sshd_server, tiny_models, tmp_path):
    mark = tmp_path / "swapped runner ran"
    swapped = tmp_path / "swapped" / "litert_runner.py"
    swapped.parent.mkdir()
    swapped.write_text(f"open({str(mark)!r}, 'w').write('pwned')\n")
    with litert_backend(sshd_server, tmp_path, retries=1) as backend:
        push = backend.transport.push

        def swap(local, remote, *args):  # another user replaces the runner between the push and its start
            push(local, remote, *args)
            if Path(local).name == "litert_runner.py":
                shutil.copy(swapped, remote)

        backend.transport.push = swap
        [result] = backend.measure(tiny_models[:1], QUICK)
    assert not mark.exists()
    assert result.status is MeasureStatus.ERROR and "sha256" in result.error, result.error


def other_public_key(tmp_path: Path, name: str) -> str:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def security_key_public_key() -> str:
    """An sk-ssh-ed25519@openssh.com public key (a FIDO key's: paramiko cannot use it, OpenSSH can)."""

    def field(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    blob = field(b"sk-ssh-ed25519@openssh.com") + field(bytes(range(32))) + field(b"ssh:")
    return f"sk-ssh-ed25519@openssh.com {base64.b64encode(blob).decode()}"


def test_accept_new_appends_one_line_and_keeps_every_other_byte(sshd_server, tmp_path):
    from nnmeter.backends.remote import connect_ssh

    other, revoked = other_public_key(tmp_path, "other"), other_public_key(tmp_path, "revoked")
    known_hosts = tmp_path / "known_hosts"
    original = (
        "# my hosts, commented by hand\n"
        f"other.example,10.0.0.7 {other} me@laptop\n"
        f"fido.example {security_key_public_key()} me@yubikey\n"
        f"@cert-authority *.example.com {other}\n"
        f"@revoked * {revoked}\n"
        "\t# an indented comment\n"
        "\n"
        f"last.example {other}"  # no newline at the end
    ).encode()
    known_hosts.write_bytes(original)
    config = sshd_server.config(TFLiteSSHConfig, known_hosts=str(known_hosts), host_key_policy="accept-new")
    connect_ssh(config).close()
    data = known_hosts.read_bytes()
    host_key = " ".join(Path(f"{sshd_server.host_key}.pub").read_text().split()[:2])
    assert data == original + f"\n[127.0.0.1]:{sshd_server.port} {host_key}\n".encode()
    connect_ssh(replace(config, host_key_policy="verify")).close()  # the added line is the one checked
    assert known_hosts.read_bytes() == data


def test_unreadable_or_revoked_host_keys_are_clear_errors(sshd_server, tmp_path):
    from nnmeter.backends.remote import connect_ssh

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("# fine\nbad.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI\n")
    config = sshd_server.config(TFLiteSSHConfig, known_hosts=str(known_hosts))
    with pytest.raises(BackendError) as err:
        connect_ssh(config)
    assert f"{known_hosts}:2" in err.value.message
    host_key = " ".join(Path(f"{sshd_server.host_key}.pub").read_text().split()[:2])
    known_hosts.write_text(
        sshd_server.known_hosts.read_text() + f"@revoked [127.0.0.1]:{sshd_server.port} {host_key}\n"
    )
    for policy in ("verify", "accept-new"):
        with pytest.raises(BackendError) as err:
            connect_ssh(replace(config, host_key_policy=policy))
        assert "revoked" in err.value.message and str(known_hosts) in err.value.message


def test_non_finite_timeouts_are_refused(sshd_server, tmp_path):
    for key in ("command_timeout_s", "connect_timeout_s"):
        with pytest.raises(BackendError) as err:
            litert_backend(sshd_server, tmp_path, **{key: math.nan})
        assert key in err.value.message


def test_config_errors_name_the_key():
    from nnmeter.backends import load_backend_config
    from nnmeter.errors import ConfigError

    with pytest.raises(ConfigError, match=r"backend\.host: is required"):
        load_backend_config("tflite-ssh", {"user": "pi"})
    with pytest.raises(ConfigError, match=r"backend\.cpu_mask: 'big' is not a hex CPU mask"):
        load_backend_config("tflite-ssh", {"host": "pi.local", "cpu_mask": "big"})
    with pytest.raises(ConfigError, match=r"backend\.host_key_policy: 'yes' is not valid"):
        load_backend_config("openvino-ssh", {"host": "x", "host_key_policy": "yes"})
    with pytest.raises(ConfigError, match=r"backend\.cpu_mask: 70 is a number, not text"):  # YAML's 0x70 is 112
        load_backend_config("tflite-adb", {"cpu_mask": 70})
    assert load_backend_config("tflite-adb", {"cpu_mask": "70"}).cpu_mask == "70"

"""Fixtures of the remote-backend tests: a real adb server with the loopback device, a real sshd, tiny models.

Import the fixtures into a test module with ``from conftest_remote import *``.
Needs Debian's ``openssh-server`` (``/usr/sbin/sshd``, ``ssh-keygen``) and an adb
binary (adbutils' bundled one, or ``NNMETER_TEST_ADB=/usr/bin/adb``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnmeter.backends.base import ConversionJob, ModelFile
from nnmeter.backends.conversion import ConversionPool
from nnmeter.backends.protocol import MeasurementProtocol

TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable
SSHD = "/usr/sbin/sshd"

__all__ = [
    "tiny_models",
    "adb_server",
    "loopback_phone",
    "sshd_server",
    "QUICK",
    "LoopbackPhone",
    "SSHServer",
    "free_port",
    "invocations",
    "build_tiny_conv",
]

#: a protocol small enough for tests: each benchmark_model round is a process start
QUICK = MeasurementProtocol(
    warmup_runs=1, rounds=2, runs_per_round=2, min_round_ms=0.0, max_median_ci=10.0, max_remeasures=0, batch_size=8
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def build_tiny_conv(channels: int):
    """A Keras model small enough to convert and run in a moment (a module-level function for the pool)."""
    import keras

    inputs = keras.Input((8, 8, 4), batch_size=1)
    return keras.Model(inputs, keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(inputs))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> list[ModelFile]:
    """Four tiny .tflite models, converted once per test session."""
    out = tmp_path_factory.mktemp("tiny models")
    pool = ConversionPool("tflite", 1, [])
    try:
        results = pool.run([ConversionJob(f"conv{c}", out, build_tiny_conv, (c,)) for c in (4, 8, 12, 16)])
    finally:
        pool.close()
    assert all(r.ok for r in results), [r.error for r in results]
    return [r.model for r in results]


def invocations(sandbox: Path) -> list[dict]:
    """The benchmark_model invocations the fake logged (argv and CPU affinity)."""
    log = sandbox / "invocations.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def install_fake_benchmark_model(folder: Path, output_format: str, fault_file: Path, log_file: Path) -> Path:
    """A ``benchmark_model`` wrapper script running the LiteRT stand-in."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "benchmark_model"
    script.write_text(
        "#!/bin/sh\nexec "
        + shlex.join(
            [
                PYTHON,
                str(TESTS / "fake_benchmark_model.py"),
                f"--output_format={output_format}",
                f"--fault_file={fault_file}",
                f"--log_file={log_file}",
            ]
        )
        + ' "$@"\n'
    )
    script.chmod(0o755)
    return script


def install_hanging_python(folder: Path, fault_file: Path) -> Path:
    """A ``python`` for the board whose LiteRT ``invoke()`` sleeps for an hour while ``fault_file`` exists (a
    runner that hangs in a model); otherwise this test session's python."""
    folder.mkdir(parents=True, exist_ok=True)
    site = folder / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os, time\n"
        f"if os.path.exists({str(fault_file)!r}):\n"
        "    from ai_edge_litert.interpreter import Interpreter\n"
        "    Interpreter.invoke = lambda self: time.sleep(3600)\n"
    )
    script = folder / "python"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(site))} exec {shlex.quote(PYTHON)} "$@"\n')
    script.chmod(0o755)
    return script


def wait_gone(list_processes, needle: str, timeout: float = 10.0) -> list[str]:
    """The command lines with ``needle`` in them that ``list_processes()`` (``ps -eww -o args=`` output) shows,
    once none is left or ``timeout`` has passed (a process killed a moment ago may still be on its way out)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in list_processes().splitlines() if needle in line and "ps -e" not in line]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# --- ADB ------------------------------------------------------------------------------


def adb_binary() -> str:
    import adbutils

    return os.environ.get("NNMETER_TEST_ADB") or adbutils.adb_path()


@dataclass
class ADBServer:
    binary: str
    port: int

    def adb(self, *args: str, check: bool = True) -> str:
        result = subprocess.run([self.binary, "-P", str(self.port), *args], capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"adb {' '.join(args)}: {result.stdout} {result.stderr}")
        return result.stdout

    def start(self) -> None:
        self.adb("start-server")

    def kill(self) -> None:
        self.adb("kill-server", check=False)


@pytest.fixture(scope="session")
def adb_server():
    server = ADBServer(adb_binary(), free_port())
    server.start()
    yield server
    server.kill()


GETPROP = """#!/bin/sh
case "$1" in
  ro.product.manufacturer) echo Loopback ;;
  ro.product.model) echo "Phone Double" ;;
  ro.soc.model) echo "host CPU" ;;
  ro.build.version.release) echo 14 ;;
  ro.build.version.sdk) echo 34 ;;
  ro.product.cpu.abi) echo x86_64 ;;
  *) echo ;;
esac
"""


class LoopbackPhone:
    """The loopback ADB device in a subprocess, attached to ``server``; its sandbox path has a space and a ';'."""

    def __init__(self, server: ADBServer, root: Path, output_format: str = "tflite2", quota_bytes: int = 0) -> None:
        self.server = server
        self.port = free_port()
        while 5555 <= self.port <= 5585:  # adb scans these for emulators
            self.port = free_port()
        self.sandbox = root / "phone sandbox; rm -rf x"
        self.serial = f"127.0.0.1:{self.port}"
        self.quota_bytes = quota_bytes
        bin_dir = self.sandbox / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "getprop").write_text(GETPROP)
        (bin_dir / "getprop").chmod(0o755)
        self.fault_file = self.sandbox / "fault"
        self.benchmark_model = install_fake_benchmark_model(
            bin_dir, output_format, self.fault_file, self.sandbox / "invocations.log"
        )
        self.remote_dir = str(self.sandbox / "data/local/tmp/nn meter;models")
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        cmd = [PYTHON, str(TESTS / "adb_loopback.py"), "--port", str(self.port), "--sandbox", str(self.sandbox)]
        if self.quota_bytes:
            cmd += ["--quota-bytes", str(self.quota_bytes)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "listening"
        self.attach()

    def attach(self) -> None:
        out = self.server.adb("connect", self.serial)
        assert "connected" in out, out
        deadline = time.monotonic() + 20
        while f"{self.serial}\tdevice" not in self.server.adb("devices"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.serial} did not come up: {self.server.adb('devices')}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def config(self, **overrides):
        from nnmeter.backends.tflite_adb import TFLiteADBConfig

        values = dict(
            serial=self.serial,
            adb_port=self.server.port,
            benchmark_model=str(self.benchmark_model),
            remote_dir=self.remote_dir,
            cpu_mask="1",
            command_timeout_s=60.0,
            retries=2,
            backoff_s=0.2,
        )
        values.update(overrides)
        return TFLiteADBConfig(**values)


@pytest.fixture
def loopback_phone(adb_server, tmp_path):
    phones: list[LoopbackPhone] = []

    def make(**kwargs) -> LoopbackPhone:
        phones.append(LoopbackPhone(adb_server, tmp_path, **kwargs))
        return phones[-1]

    yield make
    for phone in phones:
        adb_server.adb("disconnect", phone.serial, check=False)
        phone.kill()


# --- SSH ------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """The process ids below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class SSHServer:
    """A real sshd on 127.0.0.1 for the current user, with a generated host key and client key.

    It runs in its own process group so that killing it (:meth:`kill`) also ends
    the per-connection children, as a board losing power does.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.host_key = root / "ssh_host_ed25519_key"
        self.client_key = root / "id_ed25519"
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.authorized_keys = root / "authorized_keys"
        shutil.copy(str(self.client_key) + ".pub", self.authorized_keys)
        self.known_hosts = root / "known_hosts"
        host_pub = Path(str(self.host_key) + ".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config_file = root / "sshd_config"
        self.config_file.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    f"PidFile {root / 'sshd.pid'}",
                    "LogLevel ERROR",
                    "Subsystem sftp internal-sftp",
                    # bash run by sshd sources ~/.bashrc unless SHLVL says it is nested; this machine's .bashrc runs
                    # `pyenv rehash`, whose lock a test that kills sshd would leave behind
                    "SetEnv SHLVL=1",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
        self.log = root / "sshd.log"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config_file)], stderr=open(self.log, "a"), start_new_session=True
        )
        wait_port(self.port)

    def kill(self) -> None:
        """Kill sshd and every process it started (the per-connection sshd-session and the user's commands)."""
        if self.process is None or self.process.poll() is not None:
            return
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()

    def sessions(self) -> list[int]:
        """The processes of the open connections: the per-connection sshd processes and what they run."""
        return descendants(self.process.pid) if self.process is not None else []

    def stop_sessions(self) -> None:
        """SIGSTOP every open connection's processes: the board stops answering; new connections still work."""
        for pid in self.sessions():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def continue_sessions(self) -> None:
        for pid in self.sessions():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def config(self, cls, **overrides):
        values = dict(
            host="127.0.0.1",
            port=self.port,
            key_file=str(self.client_key),
            known_hosts=str(self.known_hosts),
            command_timeout_s=60.0,
            retries=2,
            backoff_s=0.2,
        )
        values.update(overrides)
        return cls(**values)


@pytest.fixture
def sshd_server(tmp_path):
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} is missing: install Debian's openssh-server")
    server = SSHServer(tmp_path / "sshd")
    yield server
    server.kill()

"""``tflite-adb``: TFLite models on an Android phone's CPU or GPU, timed by ``benchmark_model`` over ADB.

Models are converted on the host, pushed to the connection's run folder in
``remote_dir`` (private: mode 700, owner checked) when a batch starts, run with
``benchmark_model`` (pinned with ``taskset`` to ``cpu_mask``), and removed when the
batch ends; the run folder goes when the backend closes. The phone is reached
through an adb server with adbutils; when that server restarts (or the phone drops
off Wi-Fi adb), the next operation attaches the device again (``adb connect`` for
``host:port`` serials).

Commands (shell protocol v2) and pushes (the sync protocol) are spoken here over
adbutils' connections, with a deadline on each: adbutils reads a shell with a
per-read timeout only and pushes with none. adbd answers a closed shell with a
SIGHUP to the shell alone, so a command that times out is also killed on the phone
by its job id (``remote.KILL_JOB_SCRIPT``).
"""

from __future__ import annotations

import contextlib
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nnmeter.backends.base import DeviceInfo, OpTime
from nnmeter.backends.remote import (
    DEVICE_FACTS_SCRIPT,
    CommandResult,
    DeviceFault,
    FaultKind,
    InvocationSession,
    RemoteBackend,
    RemoteConfig,
    Transport,
    benchmark_model_invocation,
    bounded_timeout,
    check_seconds,
    describe,
    parse_facts,
    shell_join,
    shown,
)
from nnmeter.errors import BackendError
from nnmeter.schema import setting


@dataclass(frozen=True)
class TFLiteADBConfig(RemoteConfig):
    """The ``backend:`` keys of tflite-adb."""

    serial: str = setting("", "device serial (`adb devices`); empty: the only attached device")
    adb_host: str = setting("127.0.0.1", "host of the adb server")
    adb_port: int = setting(5037, "port of the adb server", minimum=1, maximum=65535)
    benchmark_model: str = setting("/data/local/tmp/benchmark_model", "benchmark_model binary on the device")
    remote_dir: str = setting(
        "/data/local/tmp/nnmeter",
        "private folder on the phone for the models (in the shell user's /data/local/tmp); created with mode 700, "
        "refused when another user owns it or may write to it; each run works in a run-<id> folder in it",
    )
    delegate: str = setting("cpu", "cpu, or gpu (benchmark_model --use_gpu=true: Adreno/Mali)", choices=("cpu", "gpu"))
    threads: int = setting(1, "--num_threads", minimum=1, maximum=1024)
    cpu_mask: str = setting(
        "",
        "taskset hex mask of the cores to run on, e.g. '70' for cores 4-6 "
        "(the big cores of many phones); empty: no pinning",
    )
    extra_args: list[str] = setting([], "more benchmark_model flags, e.g. ['--use_xnnpack=false']")


SYNC_DATA_MAX = 64 * 1024  # the largest DATA chunk of adb's sync protocol
EXIT_MARK = b"nnmeter-exit="  # shell protocol v1 (no exit codes): the exit code, echoed after the command


class ADBTransport(Transport):
    """A device behind an adb server, through adbutils."""

    def __init__(self, config: TFLiteADBConfig) -> None:
        import adbutils

        super().__init__()
        check_seconds(config)
        self.config = config
        # every call of adbutils that takes no timeout of its own (device list, features) waits at most this
        timeout_s = bounded_timeout(config.command_timeout_s, "backend.command_timeout_s")
        self.client = adbutils.AdbClient(host=config.adb_host, port=config.adb_port, socket_timeout=timeout_s)
        self.serial = config.serial
        self.device: Any = None
        self.shell_v2 = True

    @property
    def label(self) -> str:
        return f"adb {self.serial}"

    def open(self) -> None:
        """Find the device; BackendError listing the attached ones when it is not there."""
        from adbutils.errors import AdbError

        self.device = self._find()
        try:
            self.shell_v2 = "shell_v2" in self.device.get_features().split(",")
        except (AdbError, OSError, EOFError):
            self.shell_v2 = True  # every phone since Android 7
        self.broken = False
        self.kill_pending()

    def _find(self) -> Any:
        from adbutils.errors import AdbError

        where = f"the adb server at {self.config.adb_host}:{self.config.adb_port}"
        try:
            states = self._states()
            if self.serial and states.get(self.serial) != "device" and ":" in self.serial:
                states = self._attach_network_device()
        except (AdbError, OSError, EOFError) as err:
            raise BackendError(
                f"cannot talk to {where}: {err}", hint=f"start it with `adb -P {self.config.adb_port} start-server`"
            ) from None
        listing = ", ".join(f"{s} ({st})" for s, st in states.items()) or "none"
        if self.serial:
            if states.get(self.serial) != "device":
                state = states.get(self.serial, "not attached")
                raise BackendError(
                    f"adb device {self.serial!r} is {state}; attached: {listing}",
                    hint="check backend.serial against `adb devices`; accept the USB debugging "
                    "prompt on the phone if it is 'unauthorized'",
                )
            return self.client.device(serial=self.serial)
        ready = [s for s, st in states.items() if st == "device"]
        if len(ready) != 1:
            raise BackendError(
                f"{'no' if not ready else len(ready)} adb devices ready at {where}; attached: {listing}",
                hint="attach one phone, or set backend.serial to one of them",
            )
        self.serial = ready[0]
        return self.client.device(serial=self.serial)

    def _states(self) -> dict[str, str]:
        """serial -> state ("device", "offline", "unauthorized", ...) of every attached device."""
        return {info.serial: info.state for info in self.client.list()}

    def _attach_network_device(self) -> dict[str, str]:
        """``adb connect`` a host:port serial (again: after an adb server restart or a dropped link)."""
        from adbutils.errors import AdbError

        try:
            self.client.disconnect(self.serial)
        except AdbError:
            pass  # it was not attached
        self.client.connect(self.serial, timeout=10)
        deadline = time.monotonic() + 10
        while True:  # the server reports "offline" until the device's CNXN arrives
            states = self._states()
            if states.get(self.serial) == "device" or time.monotonic() > deadline:
                return states
            time.sleep(0.1)

    def _connection(self, command: str, timeout_s: float) -> Any:
        """An adbutils connection to the device's service ``command`` (``shell,v2:...``, ``sync:``)."""
        if self.device is None:
            raise DeviceFault(FaultKind.DISCONNECT, f"adb {self.serial}: not connected")
        conn = self.device.open_transport(timeout=timeout_s)
        try:
            conn.send_command(command)
            conn.check_okay()
        except BaseException:
            conn.close()
            raise
        return conn

    def execute(self, command: str, timeout_s: float) -> CommandResult:
        from adbutils.errors import AdbError, AdbTimeout

        timeout_s = bounded_timeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        v2 = self.shell_v2
        try:
            conn = self._connection(
                f"shell,v2:{command}" if v2 else f"shell:{command}\necho {EXIT_MARK.decode()}$?", timeout_s
            )
            try:
                code, stdout, stderr = _read_shell(conn.conn, deadline, v2)
            finally:
                conn.close()
        except (AdbTimeout, TimeoutError):
            raise DeviceFault(
                FaultKind.TIMEOUT, f"adb {self.serial}: `{shown(command)}` did not finish within {timeout_s:g} s"
            ) from None
        except (AdbError, OSError, EOFError) as err:
            raise DeviceFault(
                FaultKind.DISCONNECT, f"adb {self.serial}: device lost ({err or type(err).__name__})"
            ) from None
        return CommandResult(code, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    def push(self, local: Path, remote: str, timeout_s: float) -> None:
        """adb's sync SEND, every step within the deadline (adbutils' push waits without one)."""
        from adbutils.errors import AdbError, AdbTimeout

        timeout_s = bounded_timeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            conn = self._connection("sync:", timeout_s)
            try:
                _sync_send(conn.conn, local, remote, deadline)
            finally:
                conn.close()
        except DeviceFault:
            raise
        except (AdbTimeout, TimeoutError):
            size = local.stat().st_size if local.exists() else 0
            raise DeviceFault(
                FaultKind.TIMEOUT,
                f"adb {self.serial}: push of {local.name} ({size} bytes) to {remote} did not finish within "
                f"{timeout_s:g} s",
            ) from None
        except (AdbError, OSError, EOFError) as err:
            raise DeviceFault(FaultKind.DISCONNECT, f"adb {self.serial}: device lost during push ({err})") from None

    def reconnect(self) -> None:
        try:
            self.open()
        except BackendError as err:
            raise DeviceFault(FaultKind.DISCONNECT, err.message) from None


def _remaining(sock: socket.socket, deadline: float) -> None:
    """Let the next operation on ``sock`` wait until ``deadline`` at most (TimeoutError once it has passed)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(left)


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        _remaining(sock, deadline)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the device closed the stream")
        data += chunk
    return bytes(data)


def _read_shell(sock: socket.socket, deadline: float, v2: bool) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of a shell stream, read until it ends or ``deadline`` (TimeoutError)."""
    if not v2:  # v1: stdout and stderr in one stream, then the echoed exit code
        data = bytearray()
        while True:
            _remaining(sock, deadline)
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        at = data.rfind(EXIT_MARK)
        if at < 0:
            raise EOFError("the shell ended without its exit code")
        code = int(data[at + len(EXIT_MARK) :].strip() or b"255")
        return code, bytes(data[:at]), b""
    out, err = bytearray(), bytearray()
    while True:  # packets: id (1 stdout, 2 stderr, 3 exit code), little-endian u32 length, payload
        header = _recv_exact(sock, 5, deadline)
        payload = _recv_exact(sock, struct.unpack("<I", header[1:])[0], deadline)
        if header[0] == 1:
            out += payload
        elif header[0] == 2:
            err += payload
        elif header[0] == 3:
            return (payload[0] if payload else 255), bytes(out), bytes(err)


def _sync_send(sock: socket.socket, local: Path, remote: str, deadline: float) -> None:
    """Push ``local`` to ``remote`` (mode 644) over a ``sync:`` stream; DeviceFault(ERROR) when the device
    refuses it (with its reason: adbutils drops it)."""

    def send(data: bytes) -> None:
        _remaining(sock, deadline)
        sock.sendall(data)

    def refusal() -> DeviceFault | None:
        status = _recv_exact(sock, 8, deadline)
        if status[:4] == b"OKAY":
            return None
        if status[:4] == b"FAIL":
            reason = _recv_exact(sock, struct.unpack("<I", status[4:])[0], deadline).decode(errors="replace")
            return DeviceFault(FaultKind.ERROR, f"the device refused {remote}: {reason}")
        raise EOFError(f"unexpected sync reply {status[:4]!r}")

    target = f"{remote},{stat.S_IFREG | 0o644}".encode()
    try:
        send(b"SEND" + struct.pack("<I", len(target)) + target)
        with open(local, "rb") as f:
            for chunk in iter(lambda: f.read(SYNC_DATA_MAX), b""):
                send(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        send(b"DONE" + struct.pack("<I", int(time.time())))
    except (BrokenPipeError, ConnectionResetError):
        # adbd answers a file it cannot write (no space...) with FAIL and closes: read why, if it said
        with contextlib.suppress(OSError, EOFError):
            fault = refusal()
            if fault:
                raise fault from None
        raise
    fault = refusal()
    if fault:
        raise fault
    with contextlib.suppress(OSError):
        send(b"QUIT" + struct.pack("<I", 0))


class TFLiteADBBackend(RemoteBackend[ADBTransport]):
    """TFLite on an Android phone over ADB with benchmark_model."""

    name: ClassVar[str] = "tflite-adb"
    model_format: ClassVar[str] = "tflite"
    Config: ClassVar[type[Any]] = TFLiteADBConfig
    description: ClassVar[str] = "Android phone CPU/GPU, TFLite benchmark_model over adb"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import adbutils  # noqa: F401
        except ImportError:
            return "the adbutils package is not installed (pip install adbutils)"
        return None

    def connect(self) -> DeviceInfo:
        cfg = self.config
        transport = ADBTransport(cfg)
        transport.open()
        self.transport = transport
        try:
            facts = parse_facts(
                transport.check(DEVICE_FACTS_SCRIPT, cfg.command_timeout_s, "device facts"), cfg.cpu_mask
            )
            probe = transport.run(shell_join(["test", "-x", cfg.benchmark_model]), cfg.command_timeout_s)
            if probe.exit_code != 0:
                raise BackendError(
                    f"adb {transport.serial}: {cfg.benchmark_model} is missing or not executable",
                    hint=f"download benchmark_model for the phone's ABI ({facts.get('abi', 'arm64-v8a')}), then "
                    f"`adb push benchmark_model {cfg.benchmark_model}` and "
                    f"`adb shell chmod +x {cfg.benchmark_model}` (see docs/devices/android.md)",
                )
            digest = transport.run(shell_join(["sha256sum", cfg.benchmark_model]), cfg.command_timeout_s)
        except DeviceFault as fault:
            raise BackendError(f"adb {transport.serial}: {fault}") from None
        self.open_run_dir()
        sha = digest.stdout.split()[0][:16] if digest.exit_code == 0 and digest.stdout.split() else "unknown"
        facts.update(threads=str(cfg.threads), delegate=cfg.delegate, cpu_mask=cfg.cpu_mask or "none")
        self.device_info = DeviceInfo(
            backend=self.name,
            device=f"adb:{transport.serial}",
            description=describe(facts, f"Android device {transport.serial}"),
            runtime=f"TFLite benchmark_model ({cfg.benchmark_model}, sha256 {sha}) on {cfg.delegate.upper()}",
            runtime_versions={"benchmark_model": f"sha256:{sha}"},
            facts=facts,
        )
        return self.device_info

    def open_session(self, profiles: dict[str, tuple[OpTime, ...]]) -> InvocationSession:
        cfg = self.config
        invocation = benchmark_model_invocation(
            cfg.benchmark_model, cfg.threads, cfg.cpu_mask, cfg.delegate == "gpu", cfg.extra_args
        )
        return self.invocation_session(invocation, profiles, cfg.op_profiling)

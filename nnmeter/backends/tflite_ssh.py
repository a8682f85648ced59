"""``tflite-ssh``: TFLite models on a Linux board (Raspberry Pi, Jetson, ...) reached over SSH.

Two runners:

* ``litert`` (default): nnmeter copies its runner script (``litert_runner.py``:
  stdlib + numpy + ai-edge-litert) to the board and drives ONE persistent
  ``python3`` process over the SSH channel with JSON lines. A round costs one
  request (~a network round trip), so the protocol's many short rounds are cheap.
* ``benchmark_model``: each round is one ``benchmark_model`` process, which loads
  the model and warms up again every time (tens to hundreds of ms per round on a
  board): use fewer, longer rounds (docs/devices/linux-board.md). It gives an op
  profile, taken in one extra profiling run per model.

A lost connection, a hung or crashed runner are retried with back-off (reconnect,
restart the runner, load the batch's models again) and then recorded as failed
measurements.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, ClassVar, TypeVar

from nnmeter.backends.base import DeviceInfo, OpTime
from nnmeter.backends.remote import (
    DEVICE_FACTS_SCRIPT,
    DeviceFault,
    FaultKind,
    InvocationSession,
    RemoteBackend,
    RetryPolicy,
    SSHConfig,
    SSHTransport,
    benchmark_model_invocation,
    connect_ssh,
    describe,
    parse_facts,
    shell_join,
    with_retries,
)
from nnmeter.errors import BackendError
from nnmeter.schema import setting

T = TypeVar("T")
RUNNER_SCRIPT = Path(__file__).with_name("litert_runner.py")
STARTUP_TIMEOUT_S = 120.0  # numpy and the runtime import slowly on a Raspberry Pi's SD card


@dataclass(frozen=True)
class TFLiteSSHConfig(SSHConfig):
    """The ``backend:`` keys of tflite-ssh."""

    runner: str = setting(
        "litert",
        "litert: nnmeter's LiteRT runner in one python process (needs python3 with "
        "numpy and ai-edge-litert on the board); benchmark_model: one "
        "benchmark_model process per round",
        choices=("litert", "benchmark_model"),
    )
    python: str = setting("python3", "python on the board (runner: litert), e.g. /home/pi/venv/bin/python")
    benchmark_model: str = setting("benchmark_model", "benchmark_model on the board (runner: benchmark_model)")
    threads: int = setting(1, "inference threads", minimum=1)
    cpu_mask: str = setting("", "taskset hex mask of the cores to run on, e.g. '8' for core 3; empty: no pinning")
    extra_args: list[str] = setting([], "more benchmark_model flags (runner: benchmark_model)")


class RemoteRunner:
    """litert_runner.py in a process on the board, behind an SSH exec channel; JSON lines each way."""

    def __init__(self, transport: SSHTransport, command: str, timeout_s: float) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        client = transport.require_client()
        try:
            self.channel = client.get_transport().open_session(timeout=timeout_s)
            self.channel.exec_command(command)
        except Exception as exc:  # paramiko raises several kinds for a dead connection
            transport.broken = True
            raise DeviceFault(
                FaultKind.DISCONNECT, f"ssh {transport.address}: cannot start the runner ({exc or type(exc).__name__})"
            ) from None
        self._buffer = b""
        self._stderr = b""
        self._next_id = 1

    def request(self, cmd: str, timeout_s: float | None = None, **fields: Any) -> dict:
        """The runner's reply; DeviceFault ERROR for ok: false, TIMEOUT, CRASH or DISCONNECT otherwise."""
        rid = self._next_id
        self._next_id += 1
        try:
            self.channel.sendall((json.dumps({"id": rid, "cmd": cmd, **fields}) + "\n").encode())
        except Exception:
            raise self._gone(cmd) from None
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            line = self._read_line(deadline)
            if line is None:
                self.close()
                raise DeviceFault(
                    FaultKind.TIMEOUT, f"the runner did not answer '{cmd}' within {timeout_s or self.timeout_s:g} s"
                )
            if line == b"":
                raise self._gone(cmd)
            try:
                reply = json.loads(line)
            except ValueError:  # a login script that prints to stdout (.bashrc...): not a reply
                continue
            if not isinstance(reply, dict) or reply.get("id") != rid:
                continue
            if not reply.get("ok"):
                raise DeviceFault(FaultKind.ERROR, reply.get("error", "the runner gave no reason"))
            return reply

    def _read_line(self, deadline: float) -> bytes | None:
        while b"\n" not in self._buffer:
            if self.channel.recv_stderr_ready():
                self._stderr = (self._stderr + self.channel.recv_stderr(1 << 16))[-4000:]
            if self.channel.recv_ready():
                chunk = self.channel.recv(1 << 16)
                if not chunk:
                    return b""
                self._buffer += chunk
                continue
            if self.channel.closed or self.channel.eof_received or self.channel.exit_status_ready():
                if not self.channel.recv_ready():
                    return b""
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _gone(self, cmd: str) -> DeviceFault:
        transport = self.transport.client.get_transport() if self.transport.client else None
        if transport is None or not transport.is_active():
            self.transport.broken = True
            return DeviceFault(FaultKind.DISCONNECT, f"ssh {self.transport.address}: connection lost during '{cmd}'")
        code = self.channel.recv_exit_status() if self.channel.exit_status_ready() else -1
        tail = [
            ln for ln in self._stderr.decode(errors="replace").splitlines() if ln.strip() and not ln.startswith("INFO:")
        ][-3:]
        return DeviceFault(
            FaultKind.CRASH,
            f"the runner process died (exit status {code}) during '{cmd}'"
            + (f"; stderr: {' | '.join(tail)[:500]}" if tail else ""),
        )

    def close(self) -> None:
        # the connection may already be gone: paramiko then raises (EOFError, even from close)
        with contextlib.suppress(Exception):
            if not self.channel.closed:
                self.channel.sendall(b'{"id": 0, "cmd": "quit"}\n')
        with contextlib.suppress(Exception):
            self.channel.close()


class RunnerSession:
    """A DeviceSession over a :class:`RemoteRunner`, restarted (and its models loaded again) after a fault."""

    def __init__(self, backend: TFLiteSSHBackend) -> None:
        self.backend = backend
        self.transport: SSHTransport = backend.require_transport()
        self.config: TFLiteSSHConfig = backend.config
        self.policy: RetryPolicy = backend.retry_policy
        self.runner: RemoteRunner | None = None
        self.remote_paths: dict[str, str] = {}  # local model path -> its copy on the board
        self.handles: dict[str, int] = {}  # local model path -> handle in the current runner
        self.warmups: dict[str, int] = {}

    def _call(self, what: str, action: Callable[[], T]) -> T:
        def attempt() -> T:
            try:
                return action()
            except DeviceFault as fault:
                if fault.kind is not FaultKind.ERROR and self.runner is not None:
                    self.runner.close()
                    self.runner = None  # start a new one, and load the models into it again
                    self.handles.clear()
                raise

        return with_retries(attempt, self.transport, self.policy, what)

    def _runner(self) -> RemoteRunner:
        if self.runner is None:
            cfg = self.config
            script = str(PurePosixPath(cfg.remote_dir) / RUNNER_SCRIPT.name)
            self.transport.check(shell_join(["mkdir", "-p", cfg.remote_dir]), cfg.command_timeout_s, "mkdir")
            self.transport.push(RUNNER_SCRIPT, script)
            argv = (["taskset", cfg.cpu_mask] if cfg.cpu_mask else []) + [cfg.python, script]
            runner = RemoteRunner(self.transport, "exec " + shell_join(argv), cfg.command_timeout_s)
            runner.request("info", timeout_s=max(STARTUP_TIMEOUT_S, cfg.command_timeout_s))
            self.runner = runner
        return self.runner

    def _handle(self, model_path: str) -> int:
        """The model's handle in the current runner, loading (and warming) it there if needed."""
        if model_path not in self.handles:
            remote = self.remote_paths.get(model_path)
            if remote is None:
                remote = str(PurePosixPath(self.config.remote_dir) / Path(model_path).name)
                self._runner()  # connected and remote_dir made
                self.transport.push(Path(model_path), remote)
                self.remote_paths[model_path] = remote
            runner = self._runner()
            reply = runner.request("load", path=remote, threads=self.config.threads)
            self.handles[model_path] = reply["handle"]
            if self.warmups.get(model_path):
                runner.request("warmup", handle=reply["handle"], runs=self.warmups[model_path])
        return self.handles[model_path]

    def load(self, model_path: str) -> str:
        self._call(f"load {Path(model_path).name}", lambda: self._handle(model_path))
        return model_path

    def warmup(self, handle: str, runs: int) -> None:
        self.warmups[handle] = runs
        self._call(
            f"warm-up of {Path(handle).name}",
            lambda: self._runner().request("warmup", handle=self._handle(handle), runs=runs),
        )

    def run(self, handle: str, runs: int, min_time_ms: float, settle_runs: int = 0) -> list[float]:
        return self._call(
            f"round of {Path(handle).name}",
            lambda: self._runner().request(
                "run", handle=self._handle(handle), runs=runs, min_time_ms=min_time_ms, settle_runs=settle_runs
            )["times_ms"],
        )

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        if self.remote_paths and not self.transport.broken:
            try:
                self.transport.run(
                    shell_join(["rm", "-f", "--", *self.remote_paths.values()]), self.config.command_timeout_s
                )
            except DeviceFault:
                pass


class TFLiteSSHBackend(RemoteBackend[SSHTransport]):
    """TFLite on a Linux board over SSH: nnmeter's LiteRT runner or benchmark_model."""

    name: ClassVar[str] = "tflite-ssh"
    model_format: ClassVar[str] = "tflite"
    Config: ClassVar[type[Any]] = TFLiteSSHConfig
    description: ClassVar[str] = "Linux board CPU over SSH (LiteRT runner or benchmark_model)"

    def connect(self) -> DeviceInfo:
        cfg = self.config
        transport = connect_ssh(cfg)
        self.transport = transport
        try:
            facts = parse_facts(
                transport.check(DEVICE_FACTS_SCRIPT, cfg.command_timeout_s, "device facts"), cfg.cpu_mask
            )
            if cfg.runner == "litert":
                session = RunnerSession(self)
                try:
                    info = session._runner().request(
                        "info", timeout_s=max(STARTUP_TIMEOUT_S, cfg.command_timeout_s), probe=True
                    )
                finally:
                    session.close()
                versions = {k: str(v) for k, v in info["versions"].items()}
                runtime = f"{info['runtime']} {versions.get(info['runtime'], '')} (python {versions.get('python')})"
                facts.update(xnnpack=str(info.get("xnnpack")))
            else:
                probe = transport.run(f"command -v {shell_join([cfg.benchmark_model])}", cfg.command_timeout_s)
                if probe.exit_code != 0:
                    raise BackendError(
                        f"ssh {transport.address}: {cfg.benchmark_model} not found on the board",
                        hint="download or build benchmark_model for the board (see "
                        "docs/devices/linux-board.md) and set backend.benchmark_model",
                    )
                digest = transport.run(shell_join(["sha256sum", probe.stdout.strip()]), cfg.command_timeout_s)
                sha = digest.stdout.split()[0][:16] if digest.exit_code == 0 and digest.stdout.split() else "unknown"
                versions = {"benchmark_model": f"sha256:{sha}"}
                runtime = f"TFLite benchmark_model ({probe.stdout.strip()}, sha256 {sha})"
        except DeviceFault as fault:
            hint = (
                "install python3, numpy and ai-edge-litert on the board (pip install ai-edge-litert) and set "
                "backend.python"
                if cfg.runner == "litert"
                else ""
            )
            raise BackendError(f"ssh {transport.address}: {fault}", hint=hint) from None
        facts.update(threads=str(cfg.threads), runner=cfg.runner, cpu_mask=cfg.cpu_mask or "none")
        self.device_info = DeviceInfo(
            backend=self.name,
            device=f"ssh:{transport.address}",
            description=describe(facts, transport.address),
            runtime=runtime,
            runtime_versions=versions,
            facts=facts,
        )
        return self.device_info

    def open_session(self, profiles: dict[str, tuple[OpTime, ...]]) -> Any:
        cfg = self.config
        if cfg.runner == "litert":
            return RunnerSession(self)
        invocation = benchmark_model_invocation(cfg.benchmark_model, cfg.threads, cfg.cpu_mask, False, cfg.extra_args)
        return InvocationSession(
            self.require_transport(),
            invocation,
            cfg.remote_dir,
            self.retry_policy,
            cfg.command_timeout_s,
            profiles,
            cfg.op_profiling,
            cfg.cooldown_s,
        )

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
measurements. A runner or ``benchmark_model`` that hangs is killed on the board
(``remote.KILL_JOB_SCRIPT``) before the retry, so nothing is timed beside it.

The runner is pushed to the connection's private run folder and started by a
bootstrap that checks the sha256 of the very bytes it then runs
(:data:`RUNNER_BOOT`): a runner swapped on the board is refused, never run.
"""

from __future__ import annotations

import contextlib
import hashlib
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

#: what the runner's stderr starts with when the bootstrap refused it
REFUSED = "nnmeter: refused to run"

#: ``python -c`` code that runs the runner at ``sys.argv[1]`` only if the sha256 of the bytes it read (and then
#: runs: no second read another user could swap the file before) is the one nnmeter pushed (``%(sha256)s``)
RUNNER_BOOT = """import hashlib, sys
path = sys.argv[1]
with open(path, "rb") as f:
    source = f.read()
if hashlib.sha256(source).hexdigest() != "%(sha256)s":
    sys.stderr.write("%(refused)s " + path + ": its sha256 is not that of the runner nnmeter pushed\\n")
    sys.exit(3)
sys.argv = sys.argv[1:]
exec(compile(source, path, "exec"), {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
"""


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
    threads: int = setting(1, "inference threads", minimum=1, maximum=1024)
    cpu_mask: str = setting("", "taskset hex mask of the cores to run on, e.g. '8' for core 3; empty: no pinning")
    extra_args: list[str] = setting([], "more benchmark_model flags (runner: benchmark_model)")


class RemoteRunner:
    """litert_runner.py in a process on the board, behind an SSH exec channel; JSON lines each way.

    It runs as a job (``remote.job_command``): when it does not answer in time it is killed on the board,
    and when the connection drops it is killed once the board is reached again."""

    def __init__(self, transport: SSHTransport, command: str, timeout_s: float) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        self.job, self.channel = transport.start(command, timeout_s)
        self._buffer = b""
        self._stderr = b""
        self._next_id = 1
        self._busy = False  # a request was sent and its reply not read (an exception, Ctrl-C, came between)

    def request(self, cmd: str, timeout_s: float | None = None, **fields: Any) -> dict:
        """The runner's reply; DeviceFault ERROR for ok: false, TIMEOUT, CRASH or DISCONNECT otherwise."""
        rid = self._next_id
        self._next_id += 1
        self._busy = True
        try:
            self.channel.sendall((json.dumps({"id": rid, "cmd": cmd, **fields}) + "\n").encode())
        except Exception:
            raise self._gone(cmd) from None
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            line = self._read_line(deadline)
            if line is None:
                self.kill()
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
            self._busy = False
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
        self._busy = False  # it died, or its connection did (then it is killed when the board answers again)
        transport = self.transport.client.get_transport() if self.transport.client else None
        if transport is None or not transport.is_active():
            self.transport.broken = True
            self.transport.pending_kills.add(self.job)  # a runner hung in a model outlives the connection
            return DeviceFault(FaultKind.DISCONNECT, f"ssh {self.transport.address}: connection lost during '{cmd}'")
        code = self.channel.recv_exit_status() if self.channel.exit_status_ready() else -1
        with contextlib.suppress(Exception):  # what it wrote last, before it went
            while self.channel.recv_stderr_ready():
                self._stderr = (self._stderr + self.channel.recv_stderr(1 << 16))[-4000:]
        text = self._stderr.decode(errors="replace")
        if REFUSED in text:
            return DeviceFault(FaultKind.ERROR, text[text.index(REFUSED) :].splitlines()[0][:500])
        tail = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("INFO:")][-3:]
        return DeviceFault(
            FaultKind.CRASH,
            f"the runner process died (exit status {code}) during '{cmd}'"
            + (f"; stderr: {' | '.join(tail)[:500]}" if tail else ""),
        )

    def kill(self) -> None:
        """End the runner whatever it is doing: close its channel and kill its job on the board."""
        self._busy = False
        with contextlib.suppress(Exception):
            self.channel.close()
        self.transport.kill_job(self.job)

    def close(self) -> None:
        """Ask the runner to quit. One still busy with a request (left by an exception) may never read that:
        it is killed when the backend closes."""
        if self._busy:
            self.transport.pending_kills.add(self.job)
        # the connection may already be gone: paramiko then raises (EOFError, even from close)
        with contextlib.suppress(Exception):
            if not self.channel.closed:
                self.channel.sendall(b'{"id": 0, "cmd": "quit"}\n')
        with contextlib.suppress(Exception):
            self.channel.close()


class RunnerSession:
    """A DeviceSession over a :class:`RemoteRunner`, restarted (and its models loaded again) after a fault.

    The runner and the models are pushed to the backend's run folder and removed at close."""

    def __init__(self, backend: TFLiteSSHBackend) -> None:
        self.backend = backend
        self.transport: SSHTransport = backend.require_transport()
        self.config: TFLiteSSHConfig = backend.config
        self.policy: RetryPolicy = backend.retry_policy
        self.folder = backend.run_dir
        self.script = str(PurePosixPath(self.folder) / RUNNER_SCRIPT.name)
        self.runner: RemoteRunner | None = None
        self.pushed: set[str] = set()  # what this session put in the run folder
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

    def _push(self, local: Path, remote: str) -> None:
        self.transport.push_checked(local, remote, self.folder, self.config.command_timeout_s)
        self.pushed.add(remote)

    def _runner(self) -> RemoteRunner:
        if self.runner is None:
            cfg = self.config
            self.transport.check(shell_join(["mkdir", "-p", self.folder]), cfg.command_timeout_s, "mkdir")
            sha256 = hashlib.sha256(RUNNER_SCRIPT.read_bytes()).hexdigest()
            self._push(RUNNER_SCRIPT, self.script)
            boot = RUNNER_BOOT % {"sha256": sha256, "refused": REFUSED}
            argv = (["taskset", cfg.cpu_mask] if cfg.cpu_mask else []) + [cfg.python, "-c", boot, self.script]
            runner = RemoteRunner(self.transport, "exec " + shell_join(argv), cfg.command_timeout_s)
            try:
                runner.request("info", timeout_s=max(STARTUP_TIMEOUT_S, cfg.command_timeout_s))
            except BaseException:
                runner.close()
                raise
            self.runner = runner
        return self.runner

    def _handle(self, model_path: str) -> int:
        """The model's handle in the current runner, loading (and warming) it there if needed."""
        if model_path not in self.handles:
            remote = self.remote_paths.get(model_path)
            if remote is None:
                remote = str(PurePosixPath(self.folder) / Path(model_path).name)
                self._runner()  # connected and the run folder made
                self._push(Path(model_path), remote)
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
        """Stop the runner and remove the runner and models this session pushed (best effort: on a lost connection
        they stay in the run folder, which the backend removes when it closes)."""
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        if self.pushed and not self.transport.broken:
            try:
                self.transport.run(shell_join(["rm", "-f", "--", *sorted(self.pushed)]), self.config.command_timeout_s)
                self.pushed.clear()
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
                self.open_run_dir()
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
                self.open_run_dir()
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
        return self.invocation_session(invocation, profiles, cfg.op_profiling)

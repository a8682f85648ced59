"""What the local backends share: a pinned runner process, its session, and the backend around them.

The measuring process is a runner script (``litert_runner.py``, ``openvino_runner.py``)
started as a subprocess, pinned to the measuring core(s), and driven over JSON
lines (see the protocol in ``litert_runner.py``). It never imports TensorFlow;
conversions run in a :class:`~nnmeter.backends.conversion.ConversionPool` on every
core, in turns with the measurements.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Sequence

from nnmeter.backends import converters
from nnmeter.backends.base import (
    Backend,
    ConversionJob,
    ConversionResult,
    DeviceInfo,
    MeasureResult,
    MeasureStatus,
    ModelFile,
    ProgressCallback,
    measure_in_batches,
)
from nnmeter.backends.conversion import DEFAULT_TIMEOUT_S, ConversionPool, conversion_cores
from nnmeter.backends.protocol import MeasureError, MeasurementProtocol
from nnmeter.errors import BackendError
from nnmeter.schema import setting

STARTUP_TIMEOUT_S = 60.0  # importing numpy and the runtime on a loaded host
QUIT_GRACE_S = 5.0


class RunnerProcess:
    """A runner script in a subprocess pinned to ``cores``; :meth:`request` sends one command, returns its reply.

    A reply with ``ok: false`` raises MeasureError(status="error"). A runner that
    dies raises MeasureError(status="crash", fatal_for_session=True); one that
    does not answer within the timeout is killed and raises status="timeout".
    """

    def __init__(self, script: Path, cores: Sequence[int], command_timeout_s: float) -> None:
        self.script = Path(script)
        self.command_timeout_s = command_timeout_s
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, str(self.script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        if self.process.stdin is None or self.process.stdout is None:  # both are PIPEs: never None
            raise AssertionError("the runner process has no stdin or stdout pipe")
        self._stdin: IO[bytes] = self.process.stdin
        self._stdout: IO[bytes] = self.process.stdout
        self._selector = selectors.DefaultSelector()  # before pinning: kill() releases it when pinning fails
        self._selector.register(self._stdout, selectors.EVENT_READ)
        if cores:  # before the runner imports anything: every thread it starts inherits the mask
            try:
                os.sched_setaffinity(self.process.pid, cores)
            except OSError as err:
                self.kill()
                raise BackendError(
                    f"cannot pin the runner to cores {list(cores)}: {err}",
                    hint="set backend.measure_cores to cores this process may use",
                ) from err
        self._buffer = b""
        self._next_id = 1

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, cmd: str, timeout_s: float | None = None, **fields: Any) -> dict:
        rid = self._next_id
        self._next_id += 1
        what = f"{cmd} {Path(fields['path']).name}" if "path" in fields else cmd
        try:
            self._stdin.write((json.dumps({"id": rid, "cmd": cmd, **fields}) + "\n").encode())
            self._stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died(what) from None
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            line = self._read_line(deadline)
            if line is None:
                self.kill()
                raise MeasureError(
                    f"the runner did not answer '{what}' within {timeout:g} s; killed it",
                    status=MeasureStatus.TIMEOUT.value,
                    fatal_for_session=True,
                )
            if line == b"":
                raise self._died(what)
            reply = json.loads(line)
            if reply.get("id") != rid:
                continue  # a reply to a garbled line or to a request that timed out earlier
            if not reply.get("ok"):
                raise MeasureError(reply.get("error", "the runner gave no reason"))
            return reply

    def close(self) -> None:
        """Ask the runner to quit; kill it if it does not."""
        if self.process.poll() is None:
            try:
                self.request("quit", timeout_s=QUIT_GRACE_S)
                self.process.wait(QUIT_GRACE_S)
            except (MeasureError, subprocess.TimeoutExpired):
                self.kill()
        self._release()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._release()

    def _release(self) -> None:
        for stream in (self._stdin, self._stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._selector.close()
        self._stderr.close()

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line; b"" at end of file; None when the deadline passes first."""
        fd = self._stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _died(self, what: str) -> MeasureError:
        code = self.process.wait()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        self._stderr.seek(0)
        tail = [
            ln
            for ln in self._stderr.read().decode(errors="replace").splitlines()
            if ln.strip() and not ln.startswith("INFO:")
        ][-3:]
        self._release()
        detail = f"; stderr: {' | '.join(tail)[:500]}" if tail else ""
        return MeasureError(
            f"the runner process died ({how}) during '{what}'{detail}",
            status=MeasureStatus.CRASH.value,
            fatal_for_session=True,
        )


class RunnerSession:
    """A :class:`~nnmeter.backends.protocol.DeviceSession` over a :class:`RunnerProcess`."""

    def __init__(self, process: RunnerProcess, threads: int, load_options: dict[str, Any], clock: str = "wall") -> None:
        self.process = process
        self.threads = threads
        self.load_options = load_options
        self.clock = clock  # the protocol's: "auto" times on the thread clock the models the runner offers it for
        self._thread_clock: dict[object, bool] = {}  # handle -> whether the runner offers the thread clock for it

    def load(self, model_path: str) -> int:
        reply = self.process.request(
            "load", path=str(Path(model_path).resolve()), threads=self.threads, **self.load_options
        )
        self._thread_clock[reply["handle"]] = bool(reply.get("thread_clock"))
        return reply["handle"]

    def warmup(self, handle: object, runs: int) -> None:
        self.process.request("warmup", handle=handle, runs=runs)

    def run(self, handle: object, runs: int, min_time_ms: float, settle_runs: int = 0) -> list[float]:
        thread = self.clock == "auto" and self._thread_clock.get(handle, False)
        clock_field: dict[str, Any] = {"clock": "thread"} if thread else {}
        return self.process.request(
            "run", handle=handle, runs=runs, min_time_ms=min_time_ms, settle_runs=settle_runs, **clock_field
        )["times_ms"]

    def close(self) -> None:
        self.process.close()


@dataclass(frozen=True)
class LocalConfig:
    """The ``backend:`` keys of the local backends."""

    threads: int = setting(1, "threads per inference", minimum=1, maximum=1024)
    measure_cores: str | list[int] = setting(
        "auto", "cores the measuring process is pinned to: 'auto' (the last `threads` cores) or a list, e.g. [3]"
    )
    convert_workers: int | str = setting(
        "auto",
        "conversion worker processes: 'auto' (one per core; conversion and measurement take turns, so "
        "the measuring core converts too) or a number",
        minimum=1,
        maximum=1024,
    )
    command_timeout_s: float = setting(
        120.0,
        "a runner command (load, warm-up, one round) that takes longer "
        "is a 'timeout' result and the runner is restarted",
        minimum=0.001,
        maximum=604_800,
    )
    convert_timeout_s: float = setting(
        DEFAULT_TIMEOUT_S,
        "a model conversion (building and converting one model, TensorFlow's import included) that takes "
        "longer fails with a timeout; its worker process is replaced and the other conversions go on",
        minimum=1.0,
        maximum=604_800,
    )


class LocalBackend(Backend):
    """A backend measuring on this machine with a runner script; subclasses name the script and format."""

    Config: ClassVar[type[Any]] = LocalConfig
    runner_script: ClassVar[Path]
    #: the pip package (and import name) of the runtime the runner script needs
    runtime_package: ClassVar[tuple[str, str]]
    #: formats measure() takes as they are
    measured_formats: ClassVar[tuple[str, ...]]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        package, module = cls.runtime_package
        if importlib.util.find_spec(module) is None:
            return f"the {package} package is not installed (pip install {package})"
        return None

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.measure_cores = self.pick_measure_cores(config)
        self.convert_cores = conversion_cores()
        self._pool: ConversionPool | None = None

    @staticmethod
    def pick_measure_cores(config: Any) -> list[int]:
        available = sorted(os.sched_getaffinity(0))
        if config.measure_cores == "auto":
            return available[-config.threads :]
        return sorted(set(config.measure_cores))

    @classmethod
    def config_problems(cls, config: Any) -> list[tuple[str, str]]:
        problems = []
        available = sorted(os.sched_getaffinity(0))
        if isinstance(config.measure_cores, str):
            if config.measure_cores != "auto":
                problems.append(
                    (
                        "measure_cores",
                        f"{config.measure_cores!r} is not valid; valid: 'auto' or "
                        f"a list of core numbers among {available}",
                    )
                )
        elif not config.measure_cores:
            problems.append(("measure_cores", "an empty list; valid: 'auto' or a list of core numbers"))
        elif set(config.measure_cores) - set(available):
            problems.append(
                (
                    "measure_cores",
                    f"{config.measure_cores} are not all cores this process may use; available: {available}",
                )
            )
        if isinstance(config.convert_workers, str) and config.convert_workers != "auto":
            problems.append(("convert_workers", f"{config.convert_workers!r} is not valid; valid: 'auto' or a number"))
        elif isinstance(config.convert_workers, int) and config.convert_workers < 1:
            problems.append(("convert_workers", f"{config.convert_workers} is below the minimum 1"))
        return problems

    # --- what subclasses provide ---

    def load_options(self) -> dict[str, Any]:
        """Engine-specific fields of the runner's load command."""
        return {}

    def runtime_summary(self, info: dict) -> str:
        """One line naming the runtime, from the runner's info reply."""
        return f"{info['runtime']} {info['versions'].get(info['runtime'], '')}".strip()

    # --- the Backend interface ---

    def connect(self) -> DeviceInfo:
        reason = self.unavailable_reason()
        if reason:
            raise BackendError(f"backend {self.name!r} cannot run here: {reason}")
        process = self.open_runner()
        try:
            info = process.request("info", timeout_s=STARTUP_TIMEOUT_S, probe=True)
        except MeasureError as err:
            raise BackendError(f"backend {self.name!r}: the runner does not work: {err}") from err
        finally:
            process.close()
        facts = {
            "cores": str(os.cpu_count()),
            "measure_cores": ",".join(map(str, self.measure_cores)),
            "convert_cores": ",".join(map(str, self.convert_cores)),
            "threads": str(self.config.threads),
            "os": info["os"],
            "machine": info["machine"],
            **_cpu_frequency_facts(self.measure_cores),
            **{k: {True: "yes", False: "no"}.get(v, str(v)) for k, v in info.items() if k in ("xnnpack", "devices")},
        }
        if info.get("private_cache_bytes"):  # the measuring core's (the model correction's refetch term)
            facts["private_cache_kb"] = str(int(info["private_cache_bytes"]) // 1024)
        versions = {**info["versions"], "converter": converters.converter_version(self.model_format)}
        self.device_info = DeviceInfo(
            backend=self.name,
            device=f"local:{socket.gethostname()}",
            description=f"{info['cpu']} ({os.cpu_count()} cores)",
            runtime=self.runtime_summary(info),
            runtime_versions=versions,
            facts=facts,
        )
        return self.device_info

    def convert(
        self, jobs: Sequence[ConversionJob], workers: int | None = None, progress: ProgressCallback | None = None
    ) -> list[ConversionResult]:
        """Convert in the pool; ``workers`` None means the config's ``convert_workers``."""
        if workers is None:
            configured = self.config.convert_workers
            workers = len(self.convert_cores) if configured == "auto" else int(configured)
        if self._pool is None or self._pool.workers != workers:
            self.close()
            self._pool = ConversionPool(
                self.model_format, workers, self.convert_cores, timeout_s=self.config.convert_timeout_s
            )
        return self._pool.run(jobs, progress)

    def measure(
        self, models: Sequence[ModelFile], protocol: MeasurementProtocol, progress: ProgressCallback | None = None
    ) -> list[MeasureResult]:
        refused = {i: self._refusal(m) for i, m in enumerate(models)}
        refused = {i: r for i, r in refused.items() if r}
        measurable = [m for i, m in enumerate(models) if i not in refused]

        def on_progress(done: int, total: int) -> None:
            if progress:
                progress(done + len(refused), len(models))

        measured = iter(
            measure_in_batches(lambda: self.open_session(protocol.clock), measurable, protocol, on_progress)
        )
        return [
            MeasureResult(m.id, MeasureStatus.ERROR, error=refused[i]) if i in refused else next(measured)
            for i, m in enumerate(models)
        ]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # --- helpers ---

    def open_runner(self) -> RunnerProcess:
        return RunnerProcess(self.runner_script, self.measure_cores, self.config.command_timeout_s)

    def open_session(self, clock: str = "wall") -> RunnerSession:
        """A new runner process, checked to answer, as a session for :func:`run_round_robin` timing on
        ``clock`` (the protocol's setting)."""
        process = self.open_runner()
        try:
            process.request("info", timeout_s=max(STARTUP_TIMEOUT_S, self.config.command_timeout_s))
        except MeasureError:
            process.kill()
            raise
        return RunnerSession(process, self.config.threads, self.load_options(), clock)

    def _refusal(self, model: ModelFile) -> str:
        if model.format not in self.measured_formats:
            return (
                f"{model.path}: {self.name} measures {', '.join(self.measured_formats)} models, not "
                f"{model.format}; convert it first"
            )
        if not Path(model.path).exists():
            return f"{model.path}: no such model file"
        return ""


def _cpu_frequency_facts(cores: Sequence[int]) -> dict[str, str]:
    """Governor and frequencies of the first measuring core, where the kernel exposes them."""
    base = Path(f"/sys/devices/system/cpu/cpu{cores[0] if cores else 0}/cpufreq")
    facts = {}
    for key, name in (
        ("governor", "scaling_governor"),
        ("cur_khz", "scaling_cur_freq"),
        ("max_khz", "cpuinfo_max_freq"),
    ):
        try:
            facts[key] = (base / name).read_text().strip()
        except OSError:
            continue
    if not facts:
        facts["cpufreq"] = "not exposed (virtual machine or container)"
    facts["kernel"] = platform.release()
    return facts

"""What the remote backends (tflite-adb, tflite-ssh, openvino-ssh) share.

* :class:`Transport`: run a command, push a file, reconnect; implemented over
  adbutils (``tflite_adb``) and paramiko (:class:`SSHTransport`, here).
* Device faults (:class:`DeviceFault`) and their classification: a lost device,
  a hung command, a full disk, a crashed tool are retried with bounded
  exponential back-off (:func:`with_retries`) and then become a
  :class:`~nnmeter.backends.protocol.MeasureError` with the reason, i.e. a failed
  measurement, never the end of a campaign.
* :class:`InvocationSession`: a measurement session for tools that run one
  process per round (``benchmark_model``, ``benchmark_app``): models are pushed at
  load, the warm-up invocation also records the op profile, each round is one
  invocation, and the pushed files are removed at close.
* :class:`RemoteBackend`: convert on the host, measure in batches, keep op profiles.
* :data:`DEVICE_FACTS_SCRIPT`: one shell round trip for model, CPU, cores,
  governor, frequencies, temperature, OS, and each core's private cache.

Every remote command is built from argv lists with :func:`shlex.join`, so that
a path with spaces or ``;`` is one argument and never a second command.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import shlex
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Generic, Sequence, TypeVar

from nnmeter.backends.base import (
    Backend,
    ConversionJob,
    ConversionResult,
    MeasureResult,
    MeasureStatus,
    ModelFile,
    OpTime,
    ProgressCallback,
    measure_in_batches,
)
from nnmeter.backends.conversion import ConversionPool, conversion_cores
from nnmeter.backends.protocol import MeasureError, MeasurementProtocol
from nnmeter.errors import BackendError, NnmeterError
from nnmeter.schema import setting

if TYPE_CHECKING:
    import paramiko

T = TypeVar("T")
TransportT = TypeVar("TransportT", bound="Transport")


# --- faults and retries -----------------------------------------------------------


class FaultKind(str, enum.Enum):
    DISCONNECT = "disconnect"  # the device or the connection went away
    TIMEOUT = "timeout"  # a command did not finish in time
    DISK_FULL = "disk_full"  # a push or write failed for lack of space
    CRASH = "crash"  # the tool died by a signal
    ERROR = "error"  # the tool refused the model (deterministic: not retried)

    @property
    def status(self) -> str:
        """The MeasureStatus value a fault of this kind is recorded with."""
        return {"disconnect": "unreachable", "timeout": "timeout", "crash": "crash"}.get(self.value, "error")

    @property
    def retried(self) -> bool:
        return self is not FaultKind.ERROR


class DeviceFault(Exception):
    """A failure of one remote operation, with its kind."""

    def __init__(self, kind: FaultKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class CommandResult:
    exit_code: int  # -1: killed by a signal (ssh's exit-signal) or unknown
    stdout: str
    stderr: str = ""

    @property
    def output(self) -> str:
        return self.stdout + ("\n" + self.stderr if self.stderr else "")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff_s: float = 2.0
    max_backoff_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (1 = the first retry): doubling from ``backoff_s``."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


def with_retries(action: Callable[[], T], transport: Transport, policy: RetryPolicy, what: str) -> T:
    """``action()``, retried on retriable faults with back-off; then a MeasureError saying why.

    A device already found lost in this batch fails at once (no more waiting per model).
    A lost device ends the session (``fatal_for_session``) and marks the transport lost.
    """
    if transport.lost:
        raise MeasureError(f"{what}: device unreachable ({transport.lost})", "unreachable", fatal_for_session=True)
    fault: DeviceFault | None = None
    attempt = 0
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.delay(attempt))
        try:
            if transport.broken:
                transport.reconnect()
            return action()
        except DeviceFault as err:
            fault = err
            if err.kind is FaultKind.DISCONNECT:
                transport.broken = True
            if not err.kind.retried:
                break
    assert fault is not None
    tries = f" (after {attempt + 1} attempts)" if attempt else ""
    reason = str(fault)
    if fault.kind is FaultKind.DISCONNECT:
        transport.lost = reason
        reason = f"device unreachable: {reason}"
    raise MeasureError(
        f"{what}: {reason}{tries}", fault.kind.status, fatal_for_session=fault.kind is FaultKind.DISCONNECT
    )


def classify_exit(result: CommandResult, tool: str) -> DeviceFault | None:
    """The fault a finished command shows, or None when it exited 0."""
    if result.exit_code == 0:
        return None
    tail = " | ".join(ln.strip() for ln in result.output.strip().splitlines()[-4:] if ln.strip())[:600]
    if "No space left on device" in result.output:
        return DeviceFault(FaultKind.DISK_FULL, f"{tool}: the device's disk is full: {tail}")
    if result.exit_code < 0 or result.exit_code >= 128:
        how = (
            "by a signal"
            if result.exit_code < 0
            else f"with exit code {result.exit_code} (signal {result.exit_code - 128})"
        )
        return DeviceFault(FaultKind.CRASH, f"{tool} crashed {how}: {tail or 'no output'}")
    return DeviceFault(FaultKind.ERROR, f"{tool} failed with exit code {result.exit_code}: {tail or 'no output'}")


# --- transports -------------------------------------------------------------------


def shell_join(*argvs: Sequence[str], op: str = "&&") -> str:
    """A POSIX shell command of argv lists joined by ``op``, every word quoted."""
    return f" {op} ".join(shlex.join([str(a) for a in argv]) for argv in argvs)


class Transport(ABC):
    """A connection to a device: commands and file pushes, raising :class:`DeviceFault`."""

    #: set after a disconnect; the next operation reconnects first
    broken: bool = False
    #: why the device was given up on in this batch (reset by :meth:`RemoteBackend.measure` per batch)
    lost: str | None = None

    @abstractmethod
    def run(self, command: str, timeout_s: float) -> CommandResult:
        """Run a shell command; DeviceFault(DISCONNECT/TIMEOUT) when it cannot finish."""

    @abstractmethod
    def push(self, local: Path, remote: str) -> None:
        """Copy a file to the device; DeviceFault when it cannot."""

    @abstractmethod
    def reconnect(self) -> None:
        """Reach the device again after a disconnect; DeviceFault(DISCONNECT) when it cannot."""

    def close(self) -> None:
        """Release the connection."""

    def check(self, command: str, timeout_s: float, what: str) -> str:
        """Run ``command``; its stdout, or DeviceFault when it fails."""
        result = self.run(command, timeout_s)
        fault = classify_exit(result, what)
        if fault:
            raise fault
        return result.stdout

    def push_checked(self, local: Path, remote: str, remote_dir: str, timeout_s: float) -> None:
        """Push, naming the free space of ``remote_dir`` when the push fails (a full disk is the usual cause)."""
        try:
            self.push(local, remote)
        except DeviceFault as fault:
            if fault.kind is not FaultKind.ERROR:
                raise
            try:
                df = self.run(shell_join(["df", "-k", remote_dir]), timeout_s).stdout.strip().splitlines()[-1:]
            except DeviceFault:
                df = []
            free = f"; df: {' '.join(df[0].split())}" if df else ""
            raise DeviceFault(
                FaultKind.DISK_FULL,
                f"push of {local.name} to {remote} failed ({fault}); is the device's disk full?{free}",
            ) from None


# --- device facts -----------------------------------------------------------------

DEVICE_FACTS_SCRIPT = r"""
p() { printf '%s=%s\n' "$1" "$2"; }
if command -v getprop >/dev/null 2>&1; then
  p model "$(getprop ro.product.manufacturer) $(getprop ro.product.model)"
  p soc "$(getprop ro.soc.manufacturer) $(getprop ro.soc.model) $(getprop ro.board.platform)"
  p os "Android $(getprop ro.build.version.release) (SDK $(getprop ro.build.version.sdk))"
  p abi "$(getprop ro.product.cpu.abi)"
else
  p model "$(tr -d '\0' </proc/device-tree/model 2>/dev/null || cat /sys/class/dmi/id/product_name 2>/dev/null)"
  p os "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
fi
p cpu "$(grep -m1 -E '^(model name|Hardware|Model|cpu model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2-)"
p cores "$(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
p kernel "$(uname -sr 2>/dev/null)"
p machine "$(uname -m 2>/dev/null)"
p governor "$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort -u | tr '\n' ' ')"
p max_khz "$(cat /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq 2>/dev/null | tr '\n' ' ')"
p cur_khz "$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq 2>/dev/null | tr '\n' ' ')"
p temp_mc "$(cat /sys/class/thermal/thermal_zone*/temp 2>/dev/null | sort -n | tail -n 1)"
caches=""
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  n=${c##*cpu}; best=0
  for d in "$c"/cache/index*; do
    [ "$(cat "$d/type" 2>/dev/null)" = Instruction ] && continue
    [ "$(cat "$d/shared_cpu_list" 2>/dev/null)" = "$n" ] || continue
    s=$(cat "$d/size" 2>/dev/null); s=${s%K}
    case $s in ''|*[!0-9]*) continue;; esac
    [ "$s" -gt "$best" ] && best=$s
  done
  [ "$best" -gt 0 ] && caches="$caches $n:$best"
done
p private_cache_kb_by_cpu "$caches"
"""


def parse_facts(output: str, cpu_mask: str = "") -> dict[str, str]:
    """``key=value`` lines of :data:`DEVICE_FACTS_SCRIPT` without the empty ones; temperature in °C; the
    largest cache private to a core (``private_cache_kb``) of the first core of ``cpu_mask`` (no mask: of the
    core with the largest, where a phone's benchmarks run)."""
    facts = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        value = " ".join(value.split())
        if sep and value:
            facts[key.strip()] = value
    if facts.get("temp_mc", "").lstrip("-").isdigit():
        facts["temperature_c"] = f"{int(facts.pop('temp_mc')) / 1000:.1f}"
    facts.pop("temp_mc", None)
    by_cpu = {
        int(cpu): kb
        for cpu, _, kb in (pair.partition(":") for pair in facts.pop("private_cache_kb_by_cpu", "").split())
        if cpu.isdigit() and kb.isdigit()
    }
    mask = int(cpu_mask, 16) if re.fullmatch(r"(0x)?[0-9a-fA-F]+", cpu_mask or "") else 0
    pinned = [by_cpu[cpu] for cpu in sorted(by_cpu) if (mask >> cpu) & 1]
    if pinned or by_cpu:
        facts["private_cache_kb"] = pinned[0] if pinned else max(by_cpu.values(), key=int)
    return facts


def describe(facts: dict[str, str], fallback: str) -> str:
    """A one-line description of a device from its facts."""
    parts = [facts.get("model", ""), facts.get("soc", "") or facts.get("cpu", "")]
    text = ", ".join(p for p in parts if p.strip())
    cores = f" ({facts['cores']} cores)" if facts.get("cores") else ""
    return (text or fallback) + cores


# --- a session of one process per round -------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """How one tool is run and read: the parts of :class:`InvocationSession` that differ per tool."""

    tool: str
    command: Callable[[str, int, int, float, bool], str]  # (remote model, warmup, runs, min_s, profile) -> shell
    parse: Callable[[str], tuple[float, tuple[OpTime, ...]]]  # stdout -> (ms per invocation, op profile)
    companions: Callable[[Path], list[Path]] = lambda path: []  # files that go with a model (IR .bin)


class InvocationSession:
    """A :class:`~nnmeter.backends.protocol.DeviceSession` where each round is one tool process.

    ``load`` pushes the model (and its companions). Each process starts cold, so
    every round's invocation does the protocol's warm-up runs before its timed
    runs; ``warmup`` records that count and, with profiling on, runs the tool once
    with op profiling to keep the profile (the timed rounds run without the
    profiler's overhead). ``run`` returns the one per-invocation time the tool
    reports (its average), the ``DeviceSession`` convention for aggregate-only tools.
    """

    def __init__(
        self,
        transport: Transport,
        invocation: Invocation,
        remote_dir: str,
        policy: RetryPolicy,
        timeout_s: float,
        profiles: dict[str, tuple[OpTime, ...]],
        profile: bool,
        cooldown_s: float = 0.0,
    ) -> None:
        self.transport = transport
        self.invocation = invocation
        self.remote_dir = remote_dir
        self.policy = policy
        self.timeout_s = timeout_s
        self.profiles = profiles
        self.profile = profile
        self.cooldown_s = cooldown_s
        self.pushed: list[str] = []
        self.warmup_runs = 1
        self._dir_ready = False

    def _call(self, what: str, action: Callable[[], T]) -> T:
        return with_retries(action, self.transport, self.policy, what)

    def load(self, model_path: str) -> tuple[str, str]:
        local = Path(model_path)
        files = [local, *self.invocation.companions(local)]
        remote = [str(PurePosixPath(self.remote_dir) / f.name) for f in files]

        def push() -> None:
            if not self._dir_ready:
                self.transport.check(shell_join(["mkdir", "-p", self.remote_dir]), self.timeout_s, "mkdir")
                self._dir_ready = True
            for f, r in zip(files, remote):
                self.transport.push_checked(f, r, self.remote_dir, self.timeout_s)

        self._call(f"push {local.name}", push)
        self.pushed += remote
        return model_path, remote[0]

    def warmup(self, handle: tuple[str, str], runs: int) -> None:
        self.warmup_runs = runs
        if self.profile:
            _, profile = self._invoke(handle, runs, max(runs, 1), True, "profiling run")
            self.profiles[handle[0]] = profile

    def run(self, handle: tuple[str, str], runs: int, min_time_ms: float, settle_runs: int = 0) -> list[float]:
        # every call of the tool loads the model and warms it up (``warmup_runs``): that is its settling
        ms, _ = self._invoke(handle, self.warmup_runs, runs, False, "round", min_time_ms / 1000.0)
        return [ms]

    def _invoke(
        self, handle: tuple[str, str], warmup: int, runs: int, profile: bool, what: str, min_s: float = 0.0
    ) -> tuple[float, tuple[OpTime, ...]]:
        command = self.invocation.command(handle[1], warmup, runs, min_s, profile)
        tool = self.invocation.tool

        def once() -> tuple[float, tuple[OpTime, ...]]:
            if self.cooldown_s:
                time.sleep(self.cooldown_s)
            result = self.transport.run(command, self.timeout_s)
            fault = classify_exit(result, tool)
            if fault:
                raise fault
            try:
                return self.invocation.parse(result.stdout)
            except ValueError as err:  # output the parser does not understand: loud, not retried
                raise DeviceFault(FaultKind.ERROR, str(err)) from None

        return self._call(f"{tool} {what} of {Path(handle[0]).name}", once)

    def close(self) -> None:
        """Remove the pushed files (best effort: a lost device keeps them until the next run's cleanup)."""
        if self.pushed and not self.transport.broken:
            try:
                self.transport.run(shell_join(["rm", "-f", "--", *self.pushed]), self.timeout_s)
            except DeviceFault:
                pass
        self.pushed = []


def benchmark_model_invocation(
    binary: str, threads: int, cpu_mask: str = "", use_gpu: bool = False, extra_args: Sequence[str] = ()
) -> Invocation:
    """TFLite ``benchmark_model``, optionally pinned with ``taskset``; parsed by :func:`parse_benchmark_model`."""
    from nnmeter.backends.parsers import parse_benchmark_model

    def command(model: str, warmup: int, runs: int, min_s: float, profile: bool) -> str:
        argv = (["taskset", cpu_mask] if cpu_mask else []) + [
            binary,
            f"--graph={model}",
            f"--num_threads={threads}",
            f"--warmup_runs={warmup}",
            "--warmup_min_secs=0",
            f"--num_runs={runs}",
            f"--min_secs={min_s:g}",
            f"--enable_op_profiling={'true' if profile else 'false'}",
        ]
        return shell_join(argv + (["--use_gpu=true"] if use_gpu else []) + list(extra_args))

    def parse(stdout: str) -> tuple[float, tuple[OpTime, ...]]:
        report = parse_benchmark_model(stdout)
        return report.avg_ms, report.op_profile

    return Invocation("benchmark_model", command, parse)


# --- the backend around them -------------------------------------------------------


@dataclass(frozen=True)
class RemoteConfig:
    """The ``backend:`` keys every remote backend has."""

    remote_dir: str = setting("/tmp/nnmeter", "folder on the device the models are pushed to (created)")
    command_timeout_s: float = setting(
        300.0,
        "a device command (push, one benchmark run) that takes longer is a hang: retried, then a 'timeout' result",
        minimum=0.1,
    )
    retries: int = setting(3, "attempts of a device operation before its model is recorded as failed", minimum=1)
    backoff_s: float = setting(2.0, "wait before the first retry; doubles each retry (at most 30 s)", minimum=0)
    cooldown_s: float = setting(0.0, "pause before each benchmark run on the device (lets it cool)", minimum=0)
    op_profiling: bool = setting(True, "record the tool's op-level profile (taken in the warm-up run)")
    convert_workers: int = setting(1, "host processes converting models in parallel", minimum=1)


class RemoteBackend(Backend, Generic[TransportT]):
    """Convert on the host, measure on a device reached through a :class:`Transport` (of type ``TransportT``)."""

    transport: TransportT | None = None

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._pool: ConversionPool | None = None

    @classmethod
    def config_problems(cls, config: Any) -> list[tuple[str, str]]:
        problems = []
        mask = getattr(config, "cpu_mask", "")
        if mask and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", mask):
            problems.append(("cpu_mask", f"{mask!r} is not a hex CPU mask; valid: e.g. '70' (cores 4-6), '1' (core 0)"))
        if isinstance(config, SSHConfig) and not config.host:
            problems.append(("host", "is required: the board's host name or address"))
        return problems

    def require_transport(self) -> TransportT:
        """The transport :meth:`connect` opened; BackendError before it."""
        if self.transport is None:
            raise BackendError(f"backend {self.name!r}: measure() before connect()")
        return self.transport

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.config.retries, backoff_s=self.config.backoff_s)

    @abstractmethod
    def open_session(self, profiles: dict[str, tuple[OpTime, ...]]) -> Any:
        """A DeviceSession on the connected device; op profiles go into ``profiles`` by model path."""

    def convert(
        self, jobs: Sequence[ConversionJob], workers: int | None = None, progress: ProgressCallback | None = None
    ) -> list[ConversionResult]:
        """On the host, in a pool of ``workers`` (default: the config's ``convert_workers``) processes."""
        workers = workers or self.config.convert_workers
        if self._pool is None or self._pool.workers != workers:
            self._close_pool()
            self._pool = ConversionPool(self.model_format, workers, conversion_cores())
        return self._pool.run(jobs, progress)

    def measure(
        self, models: Sequence[ModelFile], protocol: MeasurementProtocol, progress: ProgressCallback | None = None
    ) -> list[MeasureResult]:
        if self.transport is None:
            raise BackendError(f"backend {self.name!r}: measure() before connect()")
        refused = {m.id: reason for m in models if (reason := self._refusal(m))}
        measurable = [m for m in models if m.id not in refused]
        profiles: dict[str, tuple[OpTime, ...]] = {}
        measured: dict[str, MeasureResult] = {}
        for start in range(0, len(measurable), protocol.batch_size):
            if start and protocol.cooldown_s:
                time.sleep(protocol.cooldown_s)
            self.transport.lost = None  # a device lost in an earlier batch gets another chance
            batch = measurable[start : start + protocol.batch_size]
            for m, r in zip(batch, measure_in_batches(lambda: self.open_session(profiles), batch, protocol)):
                measured[m.id] = (
                    dataclasses.replace(r, op_profile=profiles.get(str(m.path), ())) if r.status.has_latency else r
                )
            if progress:
                progress(len(measured) + len(refused), len(models))
        return [
            MeasureResult(m.id, MeasureStatus.ERROR, error=refused[m.id]) if m.id in refused else measured[m.id]
            for m in models
        ]

    def _refusal(self, model: ModelFile) -> str:
        if model.format != self.model_format:
            return (
                f"{model.path}: {self.name} measures {self.model_format} models, not {model.format}; convert it first"
            )
        if not Path(model.path).exists():
            return f"{model.path}: no such model file"
        return ""

    def close(self) -> None:
        self._close_pool()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


# --- SSH ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SSHConfig(RemoteConfig):
    """The ``backend:`` keys of the SSH backends."""

    host: str = setting("", "host name or address of the board")
    port: int = setting(22, "SSH port", minimum=1, maximum=65535)
    user: str = setting("", "user to log in as (empty: the local user name)")
    key_file: str = setting("", "private key file (empty: the SSH agent and ~/.ssh keys)")
    known_hosts: str = setting("~/.ssh/known_hosts", "known_hosts file the host key is checked against")
    host_key_policy: str = setting(
        "verify",
        "verify: the host key must be in known_hosts; accept-new: add an "
        "unknown host's key to known_hosts (a changed key is still refused)",
        choices=("verify", "accept-new"),
    )
    connect_timeout_s: float = setting(15.0, "seconds to wait for the SSH connection", minimum=0.1)


class SSHTransport(Transport):
    """Commands over an SSH exec channel and pushes over SFTP (paramiko)."""

    def __init__(self, config: SSHConfig) -> None:
        self.config = config
        self.client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.user = config.user or _local_user()

    @property
    def address(self) -> str:
        return f"{self.user}@{self.config.host}" + (f":{self.config.port}" if self.config.port != 22 else "")

    def open(self) -> None:
        """Connect; BackendError with what to do when the host key, the key or the host is wrong."""
        import paramiko

        cfg = self.config
        if not cfg.host:
            raise NnmeterError("backend.host is empty", hint="set backend.host to the board's name or address")
        known_hosts = Path(os.path.expanduser(cfg.known_hosts))
        client = paramiko.SSHClient()
        if known_hosts.exists():
            client.load_host_keys(str(known_hosts))
        if cfg.host_key_policy == "accept-new":
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        key_file = os.path.expanduser(cfg.key_file) if cfg.key_file else None
        if key_file and not Path(key_file).is_file():
            raise NnmeterError(
                f"backend.key_file: {key_file} does not exist",
                hint="point backend.key_file at the private key, or leave it empty to use the agent",
            )
        try:
            client.connect(
                cfg.host,
                port=cfg.port,
                username=self.user,
                key_filename=key_file,
                allow_agent=True,
                look_for_keys=key_file is None,
                timeout=cfg.connect_timeout_s,
                banner_timeout=cfg.connect_timeout_s,
                auth_timeout=cfg.connect_timeout_s,
            )
        except paramiko.BadHostKeyException as err:
            client.close()
            raise BackendError(
                f"ssh {self.address}: the host key changed ({err})",
                hint=f"if the board was reinstalled, remove its old key from {known_hosts} "
                f"(ssh-keygen -R {cfg.host}); otherwise someone may be in the middle",
            ) from None
        except paramiko.AuthenticationException as err:
            client.close()
            raise BackendError(
                f"ssh {self.address}: authentication failed ({err})",
                hint="check backend.user and backend.key_file, or load the key into ssh-agent",
            ) from None
        except paramiko.SSHException as err:
            client.close()
            if "known_hosts" in str(err):
                raise BackendError(
                    f"ssh {self.address}: the host key is not in {known_hosts}",
                    hint=f"run `ssh -p {cfg.port} {self.user}@{cfg.host}` once and check the "
                    f"fingerprint, or set backend.host_key_policy: accept-new",
                ) from None
            raise DeviceFault(FaultKind.DISCONNECT, f"ssh {self.address}: {err}") from None
        except (OSError, EOFError) as err:
            client.close()
            raise DeviceFault(FaultKind.DISCONNECT, f"ssh {self.address}: cannot connect ({err})") from None
        if cfg.host_key_policy == "accept-new":
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            client.save_host_keys(str(known_hosts))
        self.client = client
        self.broken = False

    def run(self, command: str, timeout_s: float) -> CommandResult:
        client = self.require_client()
        try:
            channel = client.get_transport().open_session(timeout=timeout_s)
            channel.settimeout(timeout_s)
            channel.exec_command(command)
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout_s
            while not (channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready()):
                if time.monotonic() > deadline:
                    channel.close()
                    raise DeviceFault(
                        FaultKind.TIMEOUT, f"ssh {self.address}: no end of `{command[:120]}` within {timeout_s:g} s"
                    )
                got = False
                if channel.recv_ready():
                    out += channel.recv(1 << 16)
                    got = True
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(1 << 16)
                    got = True
                if not got:
                    if channel.closed and not channel.exit_status_ready():
                        raise DeviceFault(FaultKind.DISCONNECT, f"ssh {self.address}: the channel closed")
                    time.sleep(0.005)
            code = channel.recv_exit_status()
            channel.close()
        except TimeoutError:
            raise DeviceFault(
                FaultKind.TIMEOUT, f"ssh {self.address}: `{command[:120]}` timed out after {timeout_s:g} s"
            ) from None
        except DeviceFault:
            raise
        except Exception as exc:  # paramiko raises SSHException, EOFError, OSError... for a dead connection
            self.broken = True
            raise DeviceFault(
                FaultKind.DISCONNECT, f"ssh {self.address}: connection lost ({exc or type(exc).__name__})"
            ) from None
        return CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def push(self, local: Path, remote: str) -> None:
        client = self.require_client()
        try:
            sftp = self._sftp
            if sftp is None:
                sftp = self._sftp = client.open_sftp()
            sftp.put(str(local), remote)
        except OSError as exc:
            if not client.get_transport() or not client.get_transport().is_active():
                self.broken = True
                raise DeviceFault(FaultKind.DISCONNECT, f"ssh {self.address}: connection lost during push") from None
            raise DeviceFault(FaultKind.ERROR, f"sftp put {remote}: {exc or type(exc).__name__}") from None
        except Exception as exc:
            self.broken = True
            raise DeviceFault(
                FaultKind.DISCONNECT, f"ssh {self.address}: push failed ({exc or type(exc).__name__})"
            ) from None

    def reconnect(self) -> None:
        self.close()
        try:
            self.open()
        except BackendError as err:
            raise DeviceFault(FaultKind.DISCONNECT, err.message) from None

    def close(self) -> None:
        for thing in (self._sftp, self.client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing a dead connection may raise anything paramiko has
                    pass
        self._sftp = None
        self.client = None

    def require_client(self) -> paramiko.SSHClient:
        if self.client is None or self.client.get_transport() is None or not self.client.get_transport().is_active():
            self.broken = True
            raise DeviceFault(FaultKind.DISCONNECT, f"ssh {self.address}: not connected")
        return self.client


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def connect_ssh(config: SSHConfig) -> SSHTransport:
    """An open SSHTransport; BackendError (what to do) when the host cannot be reached."""
    transport = SSHTransport(config)
    try:
        transport.open()
    except DeviceFault as fault:
        raise BackendError(
            str(fault), hint=f"check that {config.host} is up and sshd listens on port {config.port}"
        ) from None
    return transport

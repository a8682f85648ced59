"""What the remote backends (tflite-adb, tflite-ssh, openvino-ssh) share.

* :class:`Transport`: run a command, push a file, reconnect; implemented over
  adbutils (``tflite_adb``) and paramiko (:class:`SSHTransport`, here). Every
  operation has a deadline: a command ``command_timeout_s``, a push that and more
  for a large file (:meth:`Transport.transfer_timeout`). A command runs as a *job*:
  it and everything it starts carry ``NNMETER_JOB=<id>`` in their environment, and a
  command that times out (or whose connection drops) is killed on the device by that
  id (:data:`KILL_JOB_SCRIPT`), so a hung tool is never left running beside the next
  measurement. Neither sshd (no signal when an exec channel closes) nor adbd (SIGHUP
  to the shell only) does that.
* Device faults (:class:`DeviceFault`) and their classification: a lost device,
  a hung command, a full disk, a crashed tool are retried with bounded
  exponential back-off (:func:`with_retries`) and then become a
  :class:`~nnmeter.backends.protocol.MeasureError` with the reason, i.e. a failed
  measurement, never the end of a campaign.
* The private remote folder (:func:`open_run_dir`): ``remote_dir`` is created with
  mode 700 and refused when another user owns it or may write to it; each connection
  works in a ``run-<id>`` folder inside it, removed when the backend closes.
* :class:`InvocationSession`: a measurement session for tools that run one
  process per round (``benchmark_model``, ``benchmark_app``): models are pushed at
  load, the warm-up invocation also records the op profile, each round is one
  invocation, and the pushed files are removed at close.
* :class:`RemoteBackend`: convert on the host, measure in batches, keep op profiles.
* :data:`DEVICE_FACTS_SCRIPT`: one shell round trip for model, CPU, cores,
  governor, frequencies, temperature, OS, and each core's private cache.
* Host keys (:func:`read_known_hosts`, :func:`append_known_host`): ``known_hosts`` is
  read as OpenSSH writes it and, with ``accept-new``, only ever appended to.

Every remote command is built from argv lists with :func:`shlex.join`, so that
a path with spaces or ``;`` is one argument and never a second command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import os
import re
import secrets
import shlex
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Sequence, TypeVar

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


# --- deadlines --------------------------------------------------------------------

#: the longest deadline of one operation (a week: the largest command_timeout_s campaign.yaml takes); a larger
#: timeout given from Python (+inf too) is cut to it, so that a socket, a timer and a clock all take it
MAX_TIMEOUT_S = 7 * 24 * 3600.0

#: the backend keys that are seconds, and whether each is a timeout (positive, +inf means MAX_TIMEOUT_S) or a
#: pause (0 or more, finite)
SECONDS_KEYS = {"command_timeout_s": True, "connect_timeout_s": True, "backoff_s": False, "cooldown_s": False}


def bounded_timeout(seconds: float, what: str = "timeout_s") -> float:
    """``seconds`` as a deadline: more than :data:`MAX_TIMEOUT_S` (+inf too) is that; NaN, 0 or less is a
    ValueError naming ``what`` (a NaN deadline never comes: ``now > now + nan`` is always false)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {seconds!r}")
    return min(float(seconds), MAX_TIMEOUT_S)


def check_seconds(config: Any) -> None:
    """BackendError naming the key when a timeout or pause of ``config`` is not a usable number of seconds
    (NaN; a pause of +inf); the YAML schema refuses these too, this is for a config built in Python."""
    for key, is_timeout in SECONDS_KEYS.items():
        value = getattr(config, key, None)
        if value is None:
            continue
        usable = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        usable = usable and (value > 0 if is_timeout else 0 <= value < math.inf)
        if not usable:
            what = "a positive number of seconds (+inf: a week)" if is_timeout else "a finite number >= 0"
            raise BackendError(f"backend.{key} is {value!r}: it must be {what}", hint=f"set backend.{key}")


# --- transports -------------------------------------------------------------------


def shell_join(*argvs: Sequence[str], op: str = "&&") -> str:
    """A POSIX shell command of argv lists joined by ``op``, every word quoted."""
    return f" {op} ".join(shlex.join([str(a) for a in argv]) for argv in argvs)


#: the environment variable that marks the processes of one remote command (a job) and all they start
JOB_VARIABLE = "NNMETER_JOB"

#: kill every process whose environment holds ``NNMETER_JOB=$1`` (tried a few times: a process may fork while it
#: is being killed); prints the ids of any left (a process in uninterruptible sleep). Linux and Android: /proc.
KILL_JOB_SCRIPT = r"""
t="NNMETER_JOB=$1"
for attempt in 1 2 3 4 5; do
  pids=""
  for f in $(grep -l -F -e "$t" /proc/[0-9]*/environ 2>/dev/null); do
    p=${f#/proc/}; p=${p%/environ}
    [ "$p" = "$$" ] || pids="$pids $p"
  done
  [ -z "$pids" ] && exit 0
  kill -9 $pids 2>/dev/null
  sleep 0.2 2>/dev/null || sleep 1
done
echo "left:$pids"
"""


def new_job() -> str:
    """A fresh job id (64 random bits, hex)."""
    return secrets.token_hex(8)


def job_command(job: str, command: str) -> str:
    """``command`` with ``NNMETER_JOB=job`` in its environment and in that of everything it starts."""
    return f"export {JOB_VARIABLE}={job}\n{command}"


def shown(command: str, width: int = 120) -> str:
    """The start of ``command`` as an error message quotes it (without the job line)."""
    if command.startswith(f"export {JOB_VARIABLE}="):
        command = command.partition("\n")[2]
    return command.strip()[:width]


class Transport(ABC):
    """A connection to a device: commands and file pushes with deadlines, raising :class:`DeviceFault`."""

    #: set after a disconnect; the next operation reconnects first
    broken: bool = False
    #: why the device was given up on in this batch (reset by :meth:`RemoteBackend.measure` per batch)
    lost: str | None = None
    #: a push slower than this (bytes/s) is a hung link: see :meth:`transfer_timeout`
    min_transfer_bytes_per_s: float = 256 * 1024
    #: the deadline of killing a job
    kill_timeout_s: float = 30.0

    def __init__(self) -> None:
        #: jobs that may still run on the device (their command timed out or its connection dropped) and could not
        #: be killed yet: killed as soon as the device is reached again (:meth:`kill_pending`)
        self.pending_kills: set[str] = set()

    @property
    @abstractmethod
    def label(self) -> str:
        """How messages name the device, e.g. ``ssh pi@pi.local``."""

    @abstractmethod
    def execute(self, command: str, timeout_s: float) -> CommandResult:
        """Run ``command`` as it is; DeviceFault(DISCONNECT/TIMEOUT) when it cannot finish within ``timeout_s``.
        :meth:`run` is what callers use: it makes the command a job and kills it when it times out."""

    @abstractmethod
    def push(self, local: Path, remote: str, timeout_s: float) -> None:
        """Copy a file to the device within ``timeout_s``; DeviceFault when it cannot (TIMEOUT past the deadline)."""

    @abstractmethod
    def reconnect(self) -> None:
        """Reach the device again after a disconnect; DeviceFault(DISCONNECT) when it cannot."""

    def close(self) -> None:
        """Release the connection."""

    def run(self, command: str, timeout_s: float) -> CommandResult:
        """Run a shell command as a job; DeviceFault(DISCONNECT/TIMEOUT) when it cannot finish in ``timeout_s``.

        A command that timed out is killed on the device at once; one whose connection dropped is killed when
        the device is reached again."""
        timeout_s = bounded_timeout(timeout_s)
        job = new_job()
        try:
            return self.execute(job_command(job, command), timeout_s)
        except DeviceFault as fault:
            self.end_job(job, fault)
            raise
        except BaseException:  # Ctrl-C in the middle: the command may run on; the backend's close() kills it
            self.pending_kills.add(job)
            raise

    def end_job(self, job: str, fault: DeviceFault) -> None:
        """After ``fault`` ended the wait for ``job``: kill it (a timeout), or do so on reconnect (a lost link)."""
        if fault.kind is FaultKind.TIMEOUT:
            self.kill_job(job)
        elif fault.kind is FaultKind.DISCONNECT:
            self.pending_kills.add(job)

    def kill_job(self, job: str) -> None:
        """Kill the processes of ``job`` on the device; when the device cannot be reached, remember to."""
        if self.broken:
            self.pending_kills.add(job)
            return
        try:
            self.execute(shell_join(["sh", "-c", KILL_JOB_SCRIPT, "nnmeter-kill", job]), self.kill_timeout_s)
        except DeviceFault:
            self.pending_kills.add(job)
        else:
            self.pending_kills.discard(job)

    def kill_pending(self) -> None:
        """Kill the jobs an earlier timeout or lost connection left (called once the device is reached again)."""
        for job in sorted(self.pending_kills):
            self.kill_job(job)

    def check(self, command: str, timeout_s: float, what: str) -> str:
        """Run ``command``; its stdout, or DeviceFault when it fails."""
        result = self.run(command, timeout_s)
        fault = classify_exit(result, what)
        if fault:
            raise fault
        return result.stdout

    def transfer_timeout(self, size: int, floor_s: float) -> float:
        """The deadline of pushing ``size`` bytes: ``floor_s`` (``command_timeout_s``), or the time the file
        takes at :attr:`min_transfer_bytes_per_s` when that is longer."""
        return bounded_timeout(max(bounded_timeout(floor_s), size / self.min_transfer_bytes_per_s))

    def push_checked(self, local: Path, remote: str, remote_dir: str, timeout_s: float) -> None:
        """Push within :meth:`transfer_timeout` (``timeout_s`` is its floor), naming the free space of
        ``remote_dir`` when the device refuses the file (a full disk is the usual cause)."""
        try:
            size = local.stat().st_size
        except OSError:
            size = 0  # the push itself says what is wrong with the file
        try:
            self.push(local, remote, self.transfer_timeout(size, timeout_s))
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


# --- the private remote folder ------------------------------------------------------

#: a run folder (``remote_dir/run-<id>``) untouched for this long is left from a run that could not remove it (its
#: device was gone when it closed): the next connection removes it. A week: a live run pushes into its folder at
#: every batch, and none of its commands waits longer than a week (the largest command_timeout_s)
STALE_RUN_MINUTES = 7 * 24 * 60

#: args: remote_dir (``~`` or ``~/...``: the login's home), the run folder's name, STALE_RUN_MINUTES. Makes
#: remote_dir (mode 700), checks that this login owns it and no one else may write to it, removes stale run folders,
#: makes the run folder; the last line is ``ok <physical path of remote_dir>`` or what is wrong with it.
PRIVATE_DIR_SCRIPT = r"""
set -f
d=$1 run=$2 stale=$3
case $d in "~") d=$HOME ;; "~/"*) d=$HOME/${d#"~/"} ;; esac
umask 077
mkdir -p -- "$d" 2>/dev/null
cd -P -- "$d" 2>/dev/null || { echo "missing $d"; exit 0; }
here=$(pwd -P)
me=$(id -u)
set -- $(ls -ldn .)
[ "$3" = "$me" ] || { echo "owner $3 $me $1 $here"; exit 0; }
case $1 in ?????w*|????????w*) echo "mode $3 $me $1 $here"; exit 0 ;; esac
find . -mindepth 1 -maxdepth 1 -type d -name 'run-*' -mmin +"$stale" -exec rm -rf -- {} + 2>/dev/null
mkdir -- "$run" 2>/dev/null || { echo "run $here/$run"; exit 0; }
echo "ok $here"
"""

RUN_PREFIX = "run-"


def open_run_dir(transport: Transport, remote_dir: str, timeout_s: float) -> str:
    """Make the private folder ``remote_dir`` and a new run folder in it; the run folder's absolute path.

    BackendError (naming the folder and what to do) when another user owns ``remote_dir`` or may write to it:
    they could swap a pushed runner or model before it runs."""
    run = RUN_PREFIX + secrets.token_hex(6)
    script = shell_join(["sh", "-c", PRIVATE_DIR_SCRIPT, "nnmeter", remote_dir, run, str(STALE_RUN_MINUTES)])
    try:
        out = transport.check(script, timeout_s, "remote_dir")
    except DeviceFault as fault:
        raise BackendError(f"{transport.label}: cannot make backend.remote_dir {remote_dir}: {fault}") from None
    verdict, _, rest = (out.strip().splitlines() or [""])[-1].partition(" ")
    if verdict == "ok" and rest.startswith("/"):
        return str(PurePosixPath(rest) / run)
    fix = "set backend.remote_dir to a folder that is yours alone (nnmeter creates it with mode 700)"
    if verdict in ("owner", "mode") and len(rest.split(" ", 3)) == 4:
        owner, me, mode, path = rest.split(" ", 3)
        if verdict == "owner":
            raise BackendError(
                f"{transport.label}: the remote folder {path} belongs to user id {owner}, not to this login "
                f"(user id {me}): its owner could swap the files nnmeter runs there",
                hint=f"{fix}, or remove {path} if it is yours by mistake",
            )
        raise BackendError(
            f"{transport.label}: the remote folder {path} is writable by other users ({mode}): they could swap "
            "the files nnmeter runs there",
            hint=f"chmod 700 {shlex.quote(path)} on the device, or {fix}",
        )
    raise BackendError(
        f"{transport.label}: cannot make backend.remote_dir {remote_dir} ({out.strip()[-300:] or 'no output'})",
        hint=fix,
    )


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
        """Remove the pushed files (best effort: on a lost connection they stay in the backend's run folder,
        which :meth:`RemoteBackend.close` removes)."""
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

    remote_dir: str = setting(
        "~/.cache/nnmeter",
        "private folder on the device for what nnmeter pushes (~/: the login's home); created with mode 700, "
        "refused when another user owns it or may write to it; each run works in a run-<id> folder in it, "
        "removed at the end",
    )
    command_timeout_s: float = setting(
        300.0,
        "a device command (one benchmark run, a push of a small file) that takes longer is a hang: killed on "
        "the device, retried, then a 'timeout' result; a large push may take size / 256 KiB/s",
        minimum=0.1,
        maximum=604_800,
    )
    retries: int = setting(
        3, "attempts of a device operation before its model is recorded as failed", minimum=1, maximum=100
    )
    backoff_s: float = setting(
        2.0, "wait before the first retry; doubles each retry (at most 30 s)", minimum=0, maximum=3600
    )
    cooldown_s: float = setting(
        0.0, "pause before each benchmark run on the device (lets it cool)", minimum=0, maximum=86_400
    )
    op_profiling: bool = setting(True, "record the tool's op-level profile (taken in the warm-up run)")
    convert_workers: int = setting(1, "host processes converting models in parallel", minimum=1, maximum=1024)


class RemoteBackend(Backend, Generic[TransportT]):
    """Convert on the host, measure on a device reached through a :class:`Transport` (of type ``TransportT``)."""

    transport: TransportT | None = None

    def __init__(self, config: Any) -> None:
        check_seconds(config)
        super().__init__(config)
        self._pool: ConversionPool | None = None
        #: this connection's folder on the device (in ``remote_dir``; see :func:`open_run_dir`); removed at close
        self.run_dir = ""

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

    def open_run_dir(self) -> str:
        """Make ``remote_dir`` (private) and this connection's run folder in it, where everything is pushed."""
        self.run_dir = open_run_dir(self.require_transport(), self.config.remote_dir, self.config.command_timeout_s)
        return self.run_dir

    def invocation_session(
        self, invocation: Invocation, profiles: dict[str, tuple[OpTime, ...]], profile: bool
    ) -> InvocationSession:
        """An :class:`InvocationSession` of ``invocation`` in the run folder, with this backend's settings."""
        cfg = self.config
        return InvocationSession(
            self.require_transport(),
            invocation,
            self.run_dir,
            self.retry_policy,
            cfg.command_timeout_s,
            profiles,
            profile,
            cfg.cooldown_s,
        )

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
        """Remove the run folder from the device (with what was pushed to it) and close the connection.

        A connection lost earlier is opened again once for it; a device still gone keeps the folder, and the
        next connection to it removes run folders untouched for a week (:data:`STALE_RUN_MINUTES`)."""
        self._close_pool()
        transport, self.transport = self.transport, None
        if transport is None:
            return
        try:
            self._clean_device(transport)
        finally:
            transport.close()

    def _clean_device(self, transport: Transport) -> None:
        if not self.run_dir and not transport.pending_kills:
            return
        timeout_s = min(self.config.command_timeout_s, 60.0)
        try:
            if transport.broken:
                transport.reconnect()  # which kills the jobs a lost connection left running
            transport.kill_pending()
            folder = PurePosixPath(self.run_dir)
            if folder.is_absolute() and folder.name.startswith(RUN_PREFIX):
                transport.run(shell_join(["rm", "-rf", "--", str(folder)]), timeout_s)
                self.run_dir = ""
        except DeviceFault:
            pass  # the device is gone: see close()

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
    connect_timeout_s: float = setting(15.0, "seconds to wait for the SSH connection", minimum=0.1, maximum=3600)


#: seconds between SSH keepalive messages (and the idle time before TCP keepalive probes)
KEEPALIVE_S = 15
#: how much longer than its deadline a blocking paramiko call may wait before the connection is closed under it
STALL_GRACE_S = 5.0


class SSHTransport(Transport):
    """Commands over an SSH exec channel and pushes over SFTP (paramiko).

    paramiko waits without a bound in places (``exec_command`` for the server's reply, SFTP for an
    acknowledgement): each operation runs under a watchdog that closes the connection when its deadline has
    passed, so that a board that stops answering is a fault, never a hang."""

    def __init__(self, config: SSHConfig) -> None:
        super().__init__()
        check_seconds(config)
        self.config = config
        self.client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.user = config.user or _local_user()
        self.connect_timeout_s = bounded_timeout(config.connect_timeout_s, "backend.connect_timeout_s")

    @property
    def address(self) -> str:
        return f"{self.user}@{self.config.host}" + (f":{self.config.port}" if self.config.port != 22 else "")

    @property
    def label(self) -> str:
        return f"ssh {self.address}"

    def open(self) -> None:
        """Connect; BackendError with what to do when the host key, the key or the host is wrong."""
        import paramiko

        cfg = self.config
        if not cfg.host:
            raise NnmeterError("backend.host is empty", hint="set backend.host to the board's name or address")
        known_hosts = Path(os.path.expanduser(cfg.known_hosts))
        entries, revoked = read_known_hosts(known_hosts)
        client = paramiko.SSHClient()
        host_keys = client.get_host_keys()
        for names, key in entries:
            for name in names:
                host_keys.add(name, key.get_name(), key)
        client.set_missing_host_key_policy(_host_key_policy(known_hosts, cfg.host_key_policy == "accept-new", revoked))
        key_file = os.path.expanduser(cfg.key_file) if cfg.key_file else None
        if key_file and not Path(key_file).is_file():
            raise NnmeterError(
                f"backend.key_file: {key_file} does not exist",
                hint="point backend.key_file at the private key, or leave it empty to use the agent",
            )
        timeout = self.connect_timeout_s
        try:
            client.connect(
                cfg.host,
                port=cfg.port,
                username=self.user,
                key_filename=key_file,
                allow_agent=True,
                look_for_keys=key_file is None,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
            _refuse_revoked(client.get_transport().get_remote_server_key(), revoked, known_hosts, self.address)
        except BackendError:
            client.close()
            raise
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
        _keep_alive(client.get_transport())
        self.client = client
        self.broken = False
        self.kill_pending()

    @contextlib.contextmanager
    def _watchdog(self, seconds: float) -> Iterator[threading.Event]:
        """Close the connection if the block still runs after ``seconds``: a paramiko call waiting for a server
        that stopped answering then fails instead of waiting forever. The event tells whether that happened."""
        fired = threading.Event()
        client = self.client

        def fire() -> None:
            fired.set()
            self.broken = True
            with contextlib.suppress(Exception):  # closing a dead connection may raise anything paramiko has
                if client is not None:
                    client.close()

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()
        try:
            yield fired
        finally:
            timer.cancel()

    def execute(self, command: str, timeout_s: float) -> CommandResult:
        timeout_s = bounded_timeout(timeout_s)
        client = self.require_client()
        deadline = time.monotonic() + timeout_s
        with self._watchdog(timeout_s + STALL_GRACE_S) as stalled:
            try:
                channel = client.get_transport().open_session(timeout=timeout_s)
                try:
                    channel.exec_command(command)
                    out, err = bytearray(), bytearray()
                    while not (
                        channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready()
                    ):
                        if time.monotonic() > deadline:
                            raise DeviceFault(
                                FaultKind.TIMEOUT,
                                f"ssh {self.address}: no end of `{shown(command)}` within {timeout_s:g} s",
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
                    ssh = client.get_transport()
                    if code == -1 and (ssh is None or not ssh.is_active()):
                        # paramiko closes the channels of a dropped connection with status -1, as for a signal
                        self.broken = True
                        raise DeviceFault(
                            FaultKind.DISCONNECT, f"ssh {self.address}: connection lost during `{shown(command)}`"
                        )
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
            except DeviceFault:
                raise
            except Exception as exc:  # paramiko raises SSHException, EOFError, OSError... for a dead connection
                self.broken = True
                if stalled.is_set():
                    raise DeviceFault(
                        FaultKind.TIMEOUT,
                        f"ssh {self.address}: no answer to `{shown(command)}` within {timeout_s:g} s; "
                        "the connection is closed",
                    ) from None
                raise DeviceFault(
                    FaultKind.DISCONNECT, f"ssh {self.address}: connection lost ({exc or type(exc).__name__})"
                ) from None
        return CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def start(self, command: str, timeout_s: float) -> tuple[str, Any]:
        """Start ``command`` as a job on an exec channel that stays open (a runner's): its job id and the channel."""
        timeout_s = bounded_timeout(timeout_s)
        client = self.require_client()
        job = new_job()
        with self._watchdog(timeout_s + STALL_GRACE_S):
            try:
                channel = client.get_transport().open_session(timeout=timeout_s)
                channel.exec_command(job_command(job, command))
            except Exception as exc:  # paramiko raises several kinds for a dead connection
                self.broken = True
                self.pending_kills.add(job)  # it may have started
                raise DeviceFault(
                    FaultKind.DISCONNECT,
                    f"ssh {self.address}: cannot start `{shown(command)}` ({exc or type(exc).__name__})",
                ) from None
        return job, channel

    def push(self, local: Path, remote: str, timeout_s: float) -> None:
        timeout_s = bounded_timeout(timeout_s)
        client = self.require_client()
        error: Exception
        with self._watchdog(timeout_s) as stalled:
            try:
                sftp = self._sftp
                if sftp is None:
                    sftp = self._sftp = client.open_sftp()
                sftp.get_channel().settimeout(timeout_s)
                sftp.put(str(local), remote)
                return
            except Exception as exc:
                error = exc
        if stalled.is_set() or isinstance(error, TimeoutError):
            self.broken = True
            self.close()
            raise DeviceFault(
                FaultKind.TIMEOUT,
                f"ssh {self.address}: push of {local.name} ({_size(local)}) to {remote} did not finish within "
                f"{timeout_s:g} s; the connection is closed",
            )
        active = client.get_transport() is not None and client.get_transport().is_active()
        if isinstance(error, OSError) and active:  # the server refused: permission, no space...
            raise DeviceFault(FaultKind.ERROR, f"sftp put {remote}: {error or type(error).__name__}")
        self.broken = True
        raise DeviceFault(
            FaultKind.DISCONNECT, f"ssh {self.address}: connection lost during push ({error or type(error).__name__})"
        )

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


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size} bytes"
    except OSError:
        return "? bytes"


def _keep_alive(transport: Any) -> None:
    """SSH keepalive messages every :data:`KEEPALIVE_S` s (they keep NAT state, and a dead link shows as a send
    error) and TCP keepalive probes on the socket."""
    transport.set_keepalive(KEEPALIVE_S)
    sock = getattr(transport, "sock", None)
    if not isinstance(sock, socket.socket):  # a proxy command's pipe, or a test's stand-in
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", KEEPALIVE_S), ("TCP_KEEPINTVL", KEEPALIVE_S), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


# --- known_hosts --------------------------------------------------------------------


def read_known_hosts(path: Path) -> tuple[list[tuple[list[str], Any]], list[Any]]:
    """The (host names, key) of each line of an OpenSSH ``known_hosts`` that paramiko can check, and the keys
    of its ``@revoked`` lines.

    Comments, blank lines, ``@cert-authority`` lines (paramiko cannot check host certificates) and key types
    paramiko does not know (``sk-ssh-ed25519@openssh.com``...) are skipped, as they are not nnmeter's to judge;
    a line that cannot be read is a BackendError naming the file and the line."""
    from paramiko.hostkeys import HostKeyEntry

    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return [], []
    except OSError as err:
        raise BackendError(f"cannot read {path}: {err.strerror or err}", hint="check backend.known_hosts") from None
    entries: list[tuple[list[str], Any]] = []
    revoked: list[Any] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = " ".join(raw.split())
        if not line or line.startswith("#"):
            continue
        marker = ""
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            if marker == "@cert-authority":
                continue
            if marker != "@revoked":
                raise BackendError(
                    f"{path}:{lineno}: unknown marker {marker!r} (OpenSSH knows @cert-authority and @revoked)",
                    hint=f"correct or delete line {lineno} of {path}",
                )
        try:
            entry = HostKeyEntry.from_line(line, lineno)
        except Exception as err:  # InvalidHostKey (bad base64), SSHException or ValueError from a key's parser
            reason = getattr(err, "exc", None) or err
            raise BackendError(
                f"{path}:{lineno}: this known_hosts line cannot be read ({type(reason).__name__}: {reason})",
                hint=f"correct or delete line {lineno} of {path} (`ssh-keygen -R HOST -f {path}` removes a host's "
                "lines)",
            ) from None
        if entry is None:  # a key type paramiko does not know, or too few fields
            continue
        if marker == "@revoked":
            revoked.append(entry.key)
        else:
            entries.append((list(entry.hostnames), entry.key))
    return entries, revoked


def append_known_host(path: Path, hostname: str, key: Any) -> None:
    """Add one line for ``hostname``'s ``key`` at the end of ``path``: one write to a file opened for appending,
    so that every other line stays as it is, byte for byte, whatever else writes to it."""
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n".encode()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line  # end the last line; it stays as it was
            written = os.write(fd, line)
            while written < len(line):
                written += os.write(fd, line[written:])
        finally:
            os.close(fd)
    except OSError as err:
        raise BackendError(
            f"cannot add the host key of {hostname} to {path}: {err.strerror or err}",
            hint="check backend.known_hosts, or add the key yourself: ssh into the board once",
        ) from None


def _refuse_revoked(key: Any, revoked: Sequence[Any], known_hosts: Path, address: str) -> None:
    if any(key.asbytes() == other.asbytes() for other in revoked):
        raise BackendError(
            f"ssh {address}: the board's host key is marked @revoked in {known_hosts}",
            hint="the key was withdrawn: check the board; remove the @revoked line only if it is wrong",
        )


def _host_key_policy(known_hosts: Path, accept_new: bool, revoked: Sequence[Any]) -> Any:
    """paramiko's policy for a host key ``known_hosts`` does not have: refused, or (``accept_new``) appended."""
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            _refuse_revoked(key, revoked, known_hosts, hostname)
            if not accept_new:
                raise paramiko.SSHException(f"Server {hostname!r} not found in known_hosts")
            append_known_host(known_hosts, hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Policy()


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

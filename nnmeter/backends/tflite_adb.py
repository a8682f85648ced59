"""``tflite-adb``: TFLite models on an Android phone's CPU or GPU, timed by ``benchmark_model`` over ADB.

Models are converted on the host, pushed to ``remote_dir`` when a batch starts,
run with ``benchmark_model`` (pinned with ``taskset`` to ``cpu_mask``), and removed
when the batch ends. The phone is reached through an adb server with adbutils;
when that server restarts (or the phone drops off Wi-Fi adb), the next operation
attaches the device again (``adb connect`` for ``host:port`` serials).
"""

from __future__ import annotations

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
    describe,
    parse_facts,
    shell_join,
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
    remote_dir: str = setting("/data/local/tmp/nnmeter", "folder on the device the models are pushed to")
    delegate: str = setting("cpu", "cpu, or gpu (benchmark_model --use_gpu=true: Adreno/Mali)", choices=("cpu", "gpu"))
    threads: int = setting(1, "--num_threads", minimum=1)
    cpu_mask: str = setting(
        "",
        "taskset hex mask of the cores to run on, e.g. '70' for cores 4-6 "
        "(the big cores of many phones); empty: no pinning",
    )
    extra_args: list[str] = setting([], "more benchmark_model flags, e.g. ['--use_xnnpack=false']")


class ADBTransport(Transport):
    """A device behind an adb server, through adbutils."""

    def __init__(self, config: TFLiteADBConfig) -> None:
        import adbutils

        self.config = config
        self.client = adbutils.AdbClient(host=config.adb_host, port=config.adb_port)
        self.serial = config.serial
        self.device: Any = None

    def open(self) -> None:
        """Find the device; BackendError listing the attached ones when it is not there."""
        self.device = self._find()
        self.broken = False

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

    def run(self, command: str, timeout_s: float) -> CommandResult:
        from adbutils.errors import AdbError, AdbTimeout

        if self.device is None:
            raise DeviceFault(FaultKind.DISCONNECT, f"adb {self.serial}: not connected")
        try:
            result = self.device.shell2(command, timeout=timeout_s, v2=True)
        except AdbTimeout:
            raise DeviceFault(
                FaultKind.TIMEOUT, f"adb {self.serial}: `{command[:120]}` did not finish within {timeout_s:g} s"
            ) from None
        except (AdbError, OSError, EOFError) as err:
            raise DeviceFault(
                FaultKind.DISCONNECT, f"adb {self.serial}: device lost ({err or type(err).__name__})"
            ) from None
        return CommandResult(result.returncode, result.stdout, result.stderr)

    def push(self, local: Path, remote: str) -> None:
        from adbutils.errors import AdbError

        if self.device is None:
            raise DeviceFault(FaultKind.DISCONNECT, f"adb {self.serial}: not connected")
        try:
            self.device.sync.push(str(local), remote, mode=0o644)
        except AdbError as err:
            if str(err) == "FAIL":  # the device refused the file (its reason is not passed on by adbutils)
                raise DeviceFault(FaultKind.ERROR, f"the device refused {remote}") from None
            raise DeviceFault(FaultKind.DISCONNECT, f"adb {self.serial}: device lost during push ({err})") from None
        except (OSError, EOFError) as err:
            raise DeviceFault(FaultKind.DISCONNECT, f"adb {self.serial}: device lost during push ({err})") from None

    def reconnect(self) -> None:
        try:
            self.open()
        except BackendError as err:
            raise DeviceFault(FaultKind.DISCONNECT, err.message) from None


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
            transport.check(shell_join(["mkdir", "-p", cfg.remote_dir]), cfg.command_timeout_s, "mkdir")
        except DeviceFault as fault:
            raise BackendError(f"adb {transport.serial}: {fault}") from None
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

"""``openvino-ssh``: OpenVINO IR models timed by ``benchmark_app`` on a host reached over SSH.

For the Intel NCS2 (``device: MYRIAD``) that host needs the legacy runtime
(OpenVINO <= 2022.3, the last with the MYRIAD plugin) and FP16-friendly IR;
current releases serve CPU, GPU and NPU. Models are converted to IR on this
machine, their ``.xml`` and ``.bin`` copied over SFTP to the connection's private
run folder in ``remote_dir`` (removed when the backend closes), and each round is
one ``benchmark_app -m MODEL -d DEVICE -hint latency -niter N`` whose Median
latency is the round's time (the only latency figure older releases print).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from nnmeter.backends.base import DeviceInfo, OpTime
from nnmeter.backends.parsers import parse_benchmark_app
from nnmeter.backends.remote import (
    DEVICE_FACTS_SCRIPT,
    DeviceFault,
    Invocation,
    InvocationSession,
    RemoteBackend,
    SSHConfig,
    SSHTransport,
    connect_ssh,
    describe,
    parse_facts,
    shell_join,
)
from nnmeter.errors import BackendError
from nnmeter.schema import setting


@dataclass(frozen=True)
class OpenVINOSSHConfig(SSHConfig):
    """The ``backend:`` keys of openvino-ssh."""

    device: str = setting("CPU", "OpenVINO device: CPU, GPU, NPU, or MYRIAD (NCS2; needs OpenVINO <= 2022.3)")
    benchmark_app: str = setting("benchmark_app", "benchmark_app on the host (a path, or a name on its PATH)")
    setupvars: str = setting("", "script sourced before benchmark_app, e.g. /opt/intel/openvino_2022/setupvars.sh")
    extra_args: list[str] = setting([], "more benchmark_app flags, e.g. ['-nthreads', '1']")


class OpenVINOSSHBackend(RemoteBackend[SSHTransport]):
    """OpenVINO's benchmark_app on a remote host (NCS2 stick, iGPU, NPU or CPU)."""

    name: ClassVar[str] = "openvino-ssh"
    model_format: ClassVar[str] = "openvino"
    Config: ClassVar[type[Any]] = OpenVINOSSHConfig
    description: ClassVar[str] = "OpenVINO benchmark_app over SSH (NCS2/MYRIAD, CPU, GPU, NPU)"

    def _shell(self, *argvs: list[str]) -> str:
        """A command run after sourcing setupvars (its chatter discarded)."""
        prefix = f". {shell_join([self.config.setupvars])} >/dev/null 2>&1 && " if self.config.setupvars else ""
        return prefix + shell_join(*argvs)

    def connect(self) -> DeviceInfo:
        cfg = self.config
        transport = connect_ssh(cfg)
        self.transport = transport
        try:
            facts = parse_facts(transport.check(DEVICE_FACTS_SCRIPT, cfg.command_timeout_s, "device facts"))
            help_text = transport.run(self._shell([cfg.benchmark_app, "-h"]), cfg.command_timeout_s)
            version = transport.run(
                self._shell(["python3", "-c", "import openvino; print(openvino.__version__)"]), cfg.command_timeout_s
            )
        except DeviceFault as fault:
            raise BackendError(f"ssh {transport.address}: {fault}") from None
        found = re.search(r"Available target devices:\s*(.*)", help_text.output)
        if help_text.exit_code != 0 or not found:
            raise BackendError(
                f"ssh {transport.address}: `{cfg.benchmark_app} -h` does not run (exit code {help_text.exit_code})",
                hint="install OpenVINO on the host and set backend.benchmark_app (and "
                "backend.setupvars for an archive install); see docs/devices/ncs2.md",
            )
        devices = found.group(1).split()
        if cfg.device.split(".")[0] not in devices:
            hint = (
                "the NCS2 needs OpenVINO <= 2022.3 (the last release with the MYRIAD plugin) on that host, "
                "the stick plugged in and its udev rules installed; see docs/devices/ncs2.md"
                if cfg.device.upper().startswith("MYRIAD")
                else f"set backend.device to one of {devices}"
            )
            raise BackendError(
                f"ssh {transport.address}: OpenVINO there has no {cfg.device} device "
                f"(available: {', '.join(devices) or 'none'})",
                hint=hint,
            )
        ov_version = version.stdout.strip() if version.exit_code == 0 and version.stdout.strip() else "unknown"
        self.open_run_dir()
        facts.update(openvino_devices=" ".join(devices), device=cfg.device)
        self.device_info = DeviceInfo(
            backend=self.name,
            device=f"ssh:{transport.address}/{cfg.device}",
            description=describe(facts, transport.address) + f", {cfg.device}",
            runtime=f"OpenVINO {ov_version} benchmark_app on {cfg.device}",
            runtime_versions={"openvino": ov_version},
            facts=facts,
        )
        return self.device_info

    def open_session(self, profiles: dict[str, tuple[OpTime, ...]]) -> InvocationSession:
        cfg = self.config
        report_dir = str(PurePosixPath(self.run_dir) / "report")

        def command(model: str, warmup: int, runs: int, min_s: float, profile: bool) -> str:
            # benchmark_app does its own first (warm-up) inference and times only the rest
            return self._shell(
                ["mkdir", "-p", report_dir],
                [
                    cfg.benchmark_app,
                    "-m",
                    model,
                    "-d",
                    cfg.device,
                    "-hint",
                    "latency",
                    "-niter",
                    str(max(runs, 1)),
                    "-report_type",
                    "no_counters",
                    "-report_folder",
                    report_dir,
                    *cfg.extra_args,
                ],
            )

        def parse(stdout: str) -> tuple[float, tuple[OpTime, ...]]:
            return parse_benchmark_app(stdout).median_ms, ()

        invocation = Invocation("benchmark_app", command, parse, companions=lambda xml: [Path(xml).with_suffix(".bin")])
        # benchmark_app prints no op profile here: no separate profiling run
        return self.invocation_session(invocation, profiles, False)

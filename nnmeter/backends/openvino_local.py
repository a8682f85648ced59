"""``openvino-local``: OpenVINO IR (or .tflite / ONNX read directly) on this machine's CPU, GPU or NPU.

Static batch-1 shapes; compiled with the latency hint, one stream and a fixed
thread count; timed with an inference request in ``openvino_runner.py``, a
subprocess pinned to the measuring core(s), like ``tflite-local``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnmeter.backends.base import DeviceInfo
from nnmeter.backends.local import LocalBackend, LocalConfig
from nnmeter.errors import BackendError
from nnmeter.schema import setting


@dataclass(frozen=True)
class OpenVINOLocalConfig(LocalConfig):
    device: str = setting("CPU", "OpenVINO device to compile for: CPU, GPU, NPU (as `benchmark_app -d` names them)")


class OpenVINOLocalBackend(LocalBackend):
    name = "openvino-local"
    model_format = "openvino"
    measured_formats = ("openvino", "tflite", "onnx")
    description = "this machine's CPU (or GPU/NPU), OpenVINO runtime in a pinned worker process"
    Config = OpenVINOLocalConfig
    runner_script = Path(__file__).with_name("openvino_runner.py")
    runtime_package = ("openvino", "openvino")

    def load_options(self) -> dict[str, Any]:
        return {"device": self.config.device}

    def runtime_summary(self, info: dict) -> str:
        return f"openvino {info['versions'].get('openvino', '?')} on {self.config.device}"

    def connect(self) -> DeviceInfo:
        info = super().connect()
        devices = info.facts.get("devices", "").split(",")
        if self.config.device.split(".")[0] not in {d.split(".")[0] for d in devices}:
            raise BackendError(
                f"openvino-local: device {self.config.device!r} is not present; OpenVINO sees: {', '.join(devices)}",
                hint="set backend.device to one of those",
            )
        return info

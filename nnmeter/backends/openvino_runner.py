"""A model runner that times OpenVINO inference requests; the command loop and protocol of ``litert_runner.py``.

Run as a script next to ``litert_runner.py`` (it imports that file's :func:`serve`).
``load`` takes ``device`` (default "CPU") besides ``path`` and ``threads``; the
model (IR .xml, .tflite or .onnx) gets static batch-1 shapes and is compiled
with the latency hint, one stream and ``threads`` inference threads.
"""

from __future__ import annotations

import os
import sys
from typing import Protocol

import numpy as np
from litert_runner import CommandError, Engine, serve  # the sibling script: same directory on sys.path


class InferRequestHandle(Protocol):
    """What the command loop uses of an OpenVINO ``InferRequest``."""

    def start_async(self) -> None: ...

    def wait(self) -> None: ...


class OpenVINOEngine(Engine[InferRequestHandle]):
    runtime = "openvino"

    def __init__(self) -> None:
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()

    def versions(self) -> dict:
        return {
            "openvino": self.ov.__version__.split("-")[0],
            "openvino-build": self.ov.__version__,
            "numpy": np.__version__,
        }

    def load(self, path: str, threads: int, options: dict) -> tuple[InferRequestHandle, dict]:
        device = options.pop("device", "CPU")
        if options:
            raise CommandError(f"unknown load options for OpenVINO: {', '.join(sorted(options))}")
        if not os.path.exists(path):
            raise CommandError(f"{path}: no such model file")
        model = self.core.read_model(path)
        shapes = {}
        for port in model.inputs:
            dims = list(port.get_partial_shape())
            if any(d.is_dynamic for d in dims[1:]):
                raise CommandError(
                    f"input {port.get_any_name()!r} has dynamic dimensions "
                    f"{port.get_partial_shape()}; give static shapes"
                )
            shapes[port] = [1 if d.is_dynamic else d.get_length() for d in dims]
        model.reshape(shapes)
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if device.split(".")[0] == "CPU":
            config["INFERENCE_NUM_THREADS"] = str(threads)
        compiled = self.core.compile_model(model, device, config)
        request = compiled.create_infer_request()
        rng = np.random.default_rng(0)
        for i, port in enumerate(compiled.inputs):
            tensor = request.get_input_tensor(i)
            tensor.data[...] = rng.standard_normal(list(port.get_shape())).astype(tensor.data.dtype)
        return request, {
            "inputs": [list(port.get_shape()) for port in compiled.inputs],
            "device": device,
            "precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))
            if device.split(".")[0] == "CPU"
            else "",
        }

    def invoke(self, model: InferRequestHandle) -> None:
        model.start_async()  # with wait(): the inference alone, without infer()'s copy of the outputs
        model.wait()

    def probe(self) -> dict:
        return {"devices": ",".join(self.core.available_devices)}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(serve(OpenVINOEngine()))

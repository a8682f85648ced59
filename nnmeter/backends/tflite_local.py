"""``tflite-local``: float32 .tflite models timed with the LiteRT interpreter on this machine's CPU.

Keras models are converted in a pool of worker processes on every core, in turns with the
measurements; measurement runs ``litert_runner.py`` in a subprocess pinned to the measuring
core(s), so the timing process never runs TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from nnmeter.backends.local import LocalBackend


class TFLiteLocalBackend(LocalBackend):
    name = "tflite-local"
    model_format = "tflite"
    measured_formats = ("tflite",)
    description = "this machine's CPU, LiteRT interpreter (XNNPACK) in a pinned worker process"
    runner_script = Path(__file__).with_name("litert_runner.py")
    runtime_package = ("ai-edge-litert", "ai_edge_litert")

    def runtime_summary(self, info: dict) -> str:
        delegates: dict[object, str] = {True: " (XNNPACK)", False: " (built-in kernels, no XNNPACK)"}
        delegate = delegates.get(info.get("xnnpack"), "")
        return f"ai-edge-litert {info['versions'].get('ai-edge-litert', '?')}{delegate}"

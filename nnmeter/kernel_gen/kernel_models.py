"""The functions conversion jobs of kernel models call, in worker processes: importing this module loads no
TensorFlow, so a worker that writes every model directly (:mod:`nnmeter.kernel_gen.tflite_writer`) never does."""

from __future__ import annotations

from typing import Any, Mapping

from nnmeter.kernel_gen.tflite_writer import write_kernel_tflite

__all__ = ["build_kernel_model", "write_kernel_tflite"]


def build_kernel_model(kernel: str, config: Mapping[str, object]) -> Any:
    """The Keras model of ``kernel`` with ``config`` (:func:`nnmeter.kernel_gen.builders.build_kernel`)."""
    from nnmeter.kernel_gen.builders import build_kernel

    return build_kernel(kernel, config).model

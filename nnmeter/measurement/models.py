"""What to measure: specs of generated models, and what became of each once built and converted.

A model's id is the content hash of its kind, name, config, the backend's model format
and the converter version (:func:`nnmeter.kernel_gen.cache.model_id`), so a model is
built once per backend format and found again in the store by its spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from nnmeter.backends.base import Backend, ModelFile
from nnmeter.backends.converters import converter_version
from nnmeter.kernel_gen.cache import model_id
from nnmeter.kernel_gen.kernel_models import build_kernel_model, write_kernel_tflite
from nnmeter.measurement.drift import ANCHOR_KERNELS
from nnmeter.measurement.store import ModelRecord


@dataclass(frozen=True)
class ModelSpec:
    """A model to generate: ``build(*build_args)`` (module-level, picklable) returns the Keras model;
    ``write(*build_args)``, when given, its .tflite bytes without TensorFlow, or None when it cannot.

    ``kind`` is a store model kind ('kernel', 'rule-case', ...), ``name`` the kernel
    or test case, ``config`` what identifies the model (JSON-serialisable).
    """

    kind: str
    name: str
    config: Mapping[str, Any]
    build: Callable[..., Any]
    build_args: tuple = ()
    write: Callable[..., bytes | None] | None = None


@dataclass(frozen=True)
class PreparedModel:
    """A spec and what became of it: its store record and file, or the conversion error."""

    spec: ModelSpec
    id: str
    record: ModelRecord | None
    file: ModelFile | None
    error: str = ""
    reused: bool = False  # found converted in the store, not built by this call

    @property
    def ok(self) -> bool:
        return self.file is not None


def kernel_spec(kernel: str, config: Mapping[str, Any], kind: str = "kernel") -> ModelSpec:
    """The spec of a kernel model of ``kind`` ('kernel', or 'anchor' for a drift anchor): written directly as
    .tflite (:func:`nnmeter.kernel_gen.write_kernel_tflite`), or built by
    :func:`nnmeter.kernel_gen.build_kernel_model` where the writer cannot."""
    return ModelSpec(kind, kernel, dict(config), build_kernel_model, (kernel, dict(config)), write_kernel_tflite)


def anchor_specs() -> list[ModelSpec]:
    """The specs of the drift anchors (kind 'anchor', :data:`~nnmeter.measurement.drift.ANCHOR_KERNELS`)."""
    return [kernel_spec(kernel, config, "anchor") for kernel, config in ANCHOR_KERNELS]


def spec_model_id(backend: Backend, spec: ModelSpec) -> str:
    """The store id the model of ``spec`` has (or will have) for ``backend``'s model format."""
    fmt = backend.model_format
    return model_id(spec.kind, spec.name, spec.config, fmt, converter_version(fmt))

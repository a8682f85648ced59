"""nn-Meter's calls, with nnmeter underneath: code written for ``nn_meter`` keeps working.

    from nnmeter.compat import nn_meter
    p = nn_meter.load_latency_predictor("cortexA76cpu_tflite21", "1.0")
    p.predict(model, model_type="onnx")        # latency in ms, nn-Meter's number

The predictors are those installed with ``nnmeter-build import-nnmeter`` (and nnmeter's own). ``predict`` runs in
the ``nnmeter-compat`` mode (:mod:`nnmeter.compat.predictor`): nn-Meter IR (``nnmeter-ir``, a dict or a
``.json`` file) is detected as nn-Meter does; ONNX, ``.pb`` and torch models go through nnmeter's converters and
then nn-Meter's detection. ``nni-ir`` and ``apply_nni=True`` need NNI's graph, which nnmeter does not read.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from nnmeter.errors import NnmeterError
from nnmeter.predictor.artifact import read_manifest
from nnmeter.predictor.registry import installed_predictors

from .nnmeter_format import MODE_COMPAT, ORIGIN
from .predictor import CompatPredictor, load_compat

#: nn-Meter's model types and what each takes.
MODEL_TYPES = {
    "nnmeter-ir": "an nn-Meter IR dict or the path of its .json file",
    "onnx": "an onnx.ModelProto or the path of a .onnx file",
    "pb": "the path of a TensorFlow frozen graph (.pb)",
    "torch": "a torch.nn.Module, with input_shape (NCHW)",
}
_NOT_READ = {"nni-ir": "NNI's IR graph is not read by nnmeter: export the model to ONNX and pass model_type='onnx'"}


class NnMeterPredictor:
    """nn-Meter's ``nnMeterPredictor``: ``predict(model, model_type, input_shape, apply_nni)`` in ms."""

    def __init__(self, predictor: CompatPredictor) -> None:
        self.predictor = predictor
        self.kernel_predictors = predictor.kernel_predictors

    def __repr__(self) -> str:
        return f"NnMeterPredictor({self.predictor.name!r})"

    def predict(
        self, model: Any, model_type: str, input_shape: Sequence[int] = (1, 3, 224, 224), apply_nni: bool = False
    ) -> float:
        """The latency (ms) nn-Meter predicts for ``model`` of ``model_type`` (see :data:`MODEL_TYPES`);
        ``input_shape`` is used for torch models only, as in nn-Meter."""
        if model_type in _NOT_READ:
            raise NnmeterError(f"model_type {model_type!r}: {_NOT_READ[model_type]}")
        if model_type not in MODEL_TYPES:
            raise NnmeterError(
                f"model_type {model_type!r} is not one nn-Meter takes",
                "use one of: " + "; ".join(f"{t} ({what})" for t, what in MODEL_TYPES.items()),
            )
        if apply_nni:
            raise NnmeterError(
                "apply_nni=True: NNI's torch converter is not available in nnmeter; pass apply_nni=False"
            )
        return self.predictor.predict(model, tuple(input_shape) if model_type == "torch" else None).latency_ms


def load_latency_predictor(predictor_name: str | os.PathLike, predictor_version: Any = None) -> NnMeterPredictor:
    """nn-Meter's ``load_latency_predictor``: an installed predictor imported from nn-Meter by name (the highest
    version when ``predictor_version`` is None; nn-Meter's float versions such as 1.0 are read as "1.0") or a
    predictor folder."""
    name = str(predictor_name)
    if predictor_version is not None:
        name = f"{name}@{predictor_version}"
    return NnMeterPredictor(load_compat(name, MODE_COMPAT))


def list_latency_predictors() -> list[dict[str, Any]]:
    """nn-Meter's ``list_latency_predictors``: the installed predictors imported from nn-Meter, as nn-Meter listed
    them (name, version, kernel predictors, folder)."""
    return [
        {
            "name": p.name,
            "version": p.version,
            "category": "",
            "kernel_predictors": sorted(read_manifest(p.path).kernels),
            "package_location": str(p.path),
        }
        for p in installed_predictors()
        if p.origin.startswith(ORIGIN)
    ]

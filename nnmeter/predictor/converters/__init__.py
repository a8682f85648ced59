"""Model -> IR graph, for every input the predictor takes.

Each framework's converter lives in its own module and is imported only when a model of
that kind arrives: a .tflite, ONNX or IR input never imports TensorFlow. Objects are
recognised by the module of their class, so no framework is imported to test them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from nnmeter.errors import ModelFileError
from nnmeter.predictor.ir import Graph

#: What :func:`to_graph` accepts.
ModelInput = Union[str, os.PathLike, Graph, Mapping[str, Any], Any]

#: File suffix -> what it is, for error messages and dispatch.
MODEL_SUFFIXES = {
    ".tflite": "TFLite flatbuffer",
    ".onnx": "ONNX model",
    ".keras": "Keras model",
    ".h5": "Keras HDF5 model",
    ".pb": "TensorFlow frozen graph",
    ".json": "nnmeter or nn-Meter IR graph",
}
_TFLITE_MAGIC = b"TFL3"


def _class_modules(obj: Any) -> list[str]:
    return [c.__module__ or "" for c in type(obj).__mro__]


def to_graph(model: ModelInput, input_shape: Sequence[int] | None = None) -> Graph:
    """The IR graph of ``model`` (see :meth:`nnmeter.predictor.engine.Predictor.predict` for the kinds).

    ``input_shape`` (in the model's own layout, batch included) fixes a dynamic input shape.
    """
    if isinstance(model, Graph):
        return model
    if isinstance(model, Mapping):
        from nnmeter.predictor.converters import nnmeter_ir

        if model.get("format") == "nnmeter-ir":
            return Graph.from_dict(dict(model))
        return nnmeter_ir.convert_dict(model)
    if isinstance(model, (str, os.PathLike)):
        return _from_path(Path(model), input_shape)
    modules = _class_modules(model)
    if any(m.startswith("onnx") for m in modules):
        from nnmeter.predictor.converters import onnx as onnx_converter

        return onnx_converter.convert(model, input_shape)
    if any(m.startswith("keras") or m.startswith("tf_keras") for m in modules):
        from nnmeter.predictor.converters import keras as keras_converter

        return keras_converter.convert(model, input_shape)
    if any(m.startswith("torch") for m in modules):
        from nnmeter.predictor.converters import torch as torch_converter

        return torch_converter.convert(model, input_shape)
    raise ModelFileError(
        f"cannot predict a {type(model).__module__}.{type(model).__name__}",
        "pass a model file path (" + ", ".join(MODEL_SUFFIXES) + ", or a SavedModel folder), a keras.Model, "
        "an onnx.ModelProto, a torch.nn.Module with input_shape, an nn-Meter IR dict or an IR Graph",
    )


def _from_path(path: Path, input_shape: Sequence[int] | None) -> Graph:
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            from nnmeter.predictor.converters import tensorflow as tf_converter

            return tf_converter.load_saved_model(path, input_shape)
        raise ModelFileError(f"{path}: a folder that is not a TensorFlow SavedModel (no saved_model.pb)")
    if not path.is_file():  # a pipe or a device would block or never end
        raise ModelFileError(f"{path}: not a regular file")
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    if suffix == ".tflite" or head[4:8] == _TFLITE_MAGIC:
        from nnmeter.predictor.converters import tflite

        return tflite.load(path, input_shape)
    if suffix == ".onnx":
        from nnmeter.predictor.converters import onnx as onnx_converter

        return onnx_converter.load(path, input_shape)
    if suffix in (".keras", ".h5"):
        from nnmeter.predictor.converters import keras as keras_converter

        return keras_converter.load(path, input_shape)
    if suffix == ".pb":
        from nnmeter.predictor.converters import tensorflow as tf_converter

        return tf_converter.load_frozen_graph(path, input_shape)
    if suffix == ".json":
        from nnmeter.predictor.converters import nnmeter_ir

        return nnmeter_ir.load(path)
    raise ModelFileError(
        f"{path}: not a model file nnmeter can read",
        "supported: " + ", ".join(f"{s} ({d})" for s, d in MODEL_SUFFIXES.items()) + ", and SavedModel folders",
    )

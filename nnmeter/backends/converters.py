"""Model converters: Keras models and user model files to the formats backends run.

Formats (``ModelFile.format``) and their files:

* ``tflite``: float32 ``.tflite``;
* ``openvino``: OpenVINO IR, ``.xml`` plus ``.bin`` beside it, static batch-1 shapes;
* ``onnx``: ``.onnx`` (opset :data:`ONNX_OPSET`).

Keras models become ``.tflite`` through a frozen concrete function with a fixed
batch-1 input signature: variables are folded into constants, so the graph has
no resource-variable ops (LiteRT would run those and the convolutions reading
them outside XNNPACK), and it is about 3x faster than ``from_keras_model``.
OpenVINO IR is made from that ``.tflite`` (one Keras path for both formats).

TensorFlow, tf2onnx and OpenVINO are imported inside the functions: importing
this module stays light.
"""

from __future__ import annotations

import logging
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from nnmeter.errors import ModelFileError

ONNX_OPSET = 17

#: format -> suffix of the file that names the model
SUFFIXES = {"tflite": ".tflite", "openvino": ".xml", "onnx": ".onnx"}

#: what a user may bring, by suffix (a directory with saved_model.pb is "savedmodel")
SOURCE_FORMATS = {
    ".keras": "keras",
    ".h5": "keras",
    ".hdf5": "keras",
    ".tflite": "tflite",
    ".onnx": "onnx",
    ".xml": "openvino",
}


def converter_version(fmt: str) -> str:
    """The versions of the tools that make ``fmt`` from a Keras model, e.g. ``"tensorflow 2.21.0, keras 3.15.1"``.

    Part of the content hash of a converted model: a new converter makes new files.
    """
    tools = [("tensorflow", _dist_version("tensorflow", "tensorflow-cpu")), ("keras", _dist_version("keras"))]
    if fmt == "onnx":
        tools.append(("tf2onnx", _dist_version("tf2onnx")))
    elif fmt == "openvino":
        tools.append(("openvino", _dist_version("openvino")))
    elif fmt != "tflite":
        raise ValueError(f"unknown model format {fmt!r}; known: {', '.join(SUFFIXES)}")
    return ", ".join(f"{name} {version}" for name, version in tools)


def source_format(path: Path) -> str:
    """The format of a user's model file, or ModelFileError naming what is accepted."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise ModelFileError(
            f"{path}: a directory that is not a SavedModel (no saved_model.pb)",
            hint="give a .keras, .h5, .tflite, .onnx or .xml file, or a SavedModel directory",
        )
    fmt = SOURCE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ModelFileError(
            f"{path}: not a model file nnmeter reads",
            hint="give a .keras, .h5, .tflite, .onnx or .xml file, or a SavedModel directory",
        )
    return fmt


def output_path(out_dir: Path, model_id: str, fmt: str) -> Path:
    return Path(out_dir) / f"{model_id}{SUFFIXES[fmt]}"


#: Formats made from a model's .tflite (OpenVINO reads it directly).
FROM_TFLITE = ("tflite", "openvino")


def convert_keras(model: Any, fmt: str, out_path: Path) -> None:
    """Write the Keras ``model`` to ``out_path`` in ``fmt``."""
    if fmt in FROM_TFLITE:
        convert_tflite_bytes(keras_to_tflite_bytes(model), fmt, out_path)
    elif fmt == "onnx":
        _write_atomic(out_path, keras_to_onnx_bytes(model))
    else:
        raise ValueError(f"unknown model format {fmt!r}; known: {', '.join(SUFFIXES)}")


def convert_tflite_bytes(data: bytes, fmt: str, out_path: Path) -> None:
    """Write the .tflite model ``data`` to ``out_path`` in ``fmt`` (one of :data:`FROM_TFLITE`)."""
    if fmt == "tflite":
        _write_atomic(out_path, data)
    elif fmt == "openvino":
        tflite = Path(str(out_path) + ".tmp.tflite")
        try:
            _write_atomic(tflite, data)
            _save_openvino(_read_openvino_source(tflite), out_path)
        finally:
            tflite.unlink(missing_ok=True)
    else:
        raise ValueError(f"a .tflite model cannot be written as {fmt!r}; formats made from .tflite: {FROM_TFLITE}")


def convert_file(source: Path, fmt: str, out_path: Path) -> None:
    """Write the user's model file ``source`` to ``out_path`` in ``fmt``."""
    source = Path(source)
    kind = source_format(source)
    if kind == fmt:
        if fmt == "openvino":
            _save_openvino(_read_openvino_source(source), out_path)
        else:
            shutil.copyfile(source, out_path)
        return
    if kind == "keras":
        convert_keras(load_keras(source), fmt, out_path)
    elif fmt == "openvino" and kind in ("tflite", "onnx", "savedmodel"):
        _save_openvino(_read_openvino_source(source), out_path)
    elif fmt == "tflite" and kind == "savedmodel":
        _quiet_tensorflow()
        import tensorflow as tf

        _write_atomic(out_path, tf.lite.TFLiteConverter.from_saved_model(str(source)).convert())
    elif fmt == "onnx" and kind == "tflite":
        import tf2onnx

        proto, _ = tf2onnx.convert.from_tflite(str(source), opset=ONNX_OPSET)
        _write_atomic(out_path, proto.SerializeToString())
    else:
        raise ModelFileError(
            f"{source}: cannot convert a {kind} model to {fmt}",
            hint="give the model as .keras/.h5 (converts to every format) or in the backend's format",
        )


def load_keras(path: Path) -> Any:
    """A Keras model from a .keras/.h5 file."""
    _quiet_tensorflow()
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:
        raise ModelFileError(f"{path}: not a Keras model Keras {keras.__version__} can load: {_one_line(err)}") from err


def keras_to_tflite_bytes(model: Any) -> bytes:
    """A float32 .tflite of ``model`` with batch-1 inputs."""
    _quiet_tensorflow()
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(_call_inference(model)).get_concrete_function(*_batch1_signature(model))
    frozen = convert_variables_to_constants_v2(function)
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()


def keras_to_onnx_bytes(model: Any) -> bytes:
    _quiet_tensorflow()
    import tensorflow as tf
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(
        tf.function(_call_inference(model)), input_signature=_batch1_signature(model), opset=ONNX_OPSET
    )
    return proto.SerializeToString()


def input_shapes(path: Path, fmt: str) -> tuple[tuple[int, ...], ...]:
    """The input shapes of a model file in a backend format, read without TensorFlow."""
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        return tuple(
            tuple(int(d) for d in detail["shape"]) for detail in Interpreter(model_path=str(path)).get_input_details()
        )
    if fmt in ("openvino", "onnx"):
        import openvino as ov

        return tuple(
            tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
            for port in ov.Core().read_model(str(path)).inputs
        )
    raise ValueError(f"unknown model format {fmt!r}; known: {', '.join(SUFFIXES)}")


def static_batch1(model: Any, name: str) -> Any:
    """The OpenVINO ``model`` with a dynamic batch dimension set to 1; other dynamic dimensions are an error."""
    shapes = {}
    for port in model.inputs:
        dims = list(port.get_partial_shape())
        fixed = []
        for axis, dim in enumerate(dims):
            if dim.is_static:
                fixed.append(dim.get_length())
            elif axis == 0:
                fixed.append(1)
            else:
                raise ModelFileError(
                    f"{name}: input {port.get_any_name()!r} has a dynamic dimension {axis} "
                    f"({port.get_partial_shape()})",
                    hint="export the model with static input shapes (batch may stay dynamic)",
                )
        shapes[port] = fixed
    if any(port.get_partial_shape().is_dynamic for port in model.inputs):
        model.reshape(shapes)
    return model


def _read_openvino_source(path: Path) -> Any:
    import openvino as ov

    path = Path(path)
    model = ov.Core().read_model(str(path)) if path.suffix == ".xml" else ov.convert_model(str(path))
    return static_batch1(model, str(path))


def _save_openvino(model: Any, out_path: Path) -> None:
    """Save IR so that ``out_path`` (the .xml) appears only when the .bin beside it is complete."""
    import openvino as ov

    out_path = Path(out_path)
    tmp_xml = out_path.with_name(out_path.stem + ".tmp.xml")
    try:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), out_path.with_suffix(".bin"))
        os.replace(tmp_xml, out_path)
    finally:  # a failed or interrupted save leaves no temporary file (nothing once both are replaced)
        tmp_xml.unlink(missing_ok=True)
        tmp_xml.with_suffix(".bin").unlink(missing_ok=True)


def _call_inference(model: Any):
    n_inputs = len(model.inputs)
    return lambda *xs: model(list(xs) if n_inputs > 1 else xs[0], training=False)


def _batch1_signature(model: Any) -> list:
    import tensorflow as tf

    specs = []
    for tensor in model.inputs:
        dims = (1, *tensor.shape[1:])
        if any(d is None for d in dims):
            raise ModelFileError(
                f"model {model.name!r}: input {tensor.name!r} has an unknown dimension {tuple(tensor.shape)}",
                hint="build the model with fixed input shapes",
            )
        specs.append(tf.TensorSpec(dims, tensor.dtype))
    return specs


def _write_atomic(path: Path, data: bytes) -> None:
    """Write so that a reader never sees half a file, even if this process is killed; a write that fails or is
    interrupted (a full disk, SIGTERM) leaves no temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # from_concrete_functions without a trackable object warns of a "deprecated path": that path, on a
    # frozen function, gives the same graph 3-5x faster than with one
    logging.getLogger("absl").setLevel(logging.ERROR)


def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__

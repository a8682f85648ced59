"""``torch.nn.Module`` -> IR graph, through an ONNX export in memory (torch is an optional extra)."""

from __future__ import annotations

import inspect
import io
from typing import Any, Sequence

from nnmeter.errors import ModelFileError
from nnmeter.predictor.converters import onnx as onnx_converter
from nnmeter.predictor.ir import Graph


def convert(module: Any, input_shape: Sequence[int] | None = None) -> Graph:
    if input_shape is None:
        raise ModelFileError(
            f"a torch module ({type(module).__name__}) has no input shape of its own",
            hint="give it, e.g. input_shape=(1, 3, 224, 224) (NCHW)",
        )
    import onnx
    import torch

    buffer = io.BytesIO()
    was_training = module.training
    module.eval()  # export folds batch norm only in eval mode, as deployment does
    # the TorchScript exporter: the dynamo one needs onnxscript, and older torch has no switch
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    try:
        with torch.no_grad():
            torch.onnx.export(
                module, (torch.zeros(*[int(d) for d in input_shape]),), buffer, do_constant_folding=True, **legacy
            )
    except Exception as err:  # torch's exporter raises many types; its message names the op
        raise ModelFileError(f"torch module {type(module).__name__}: ONNX export failed: {err}") from None
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buffer.getvalue())
    return onnx_converter.convert(
        model, None, name=type(module).__name__, source=f"torch module {type(module).__name__}"
    )

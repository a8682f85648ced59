"""The predictor engine: load a predictor artifact, turn a model into an IR graph, detect its kernels with the
device's fusion rules, and predict each kernel's latency (``nnmeter.load_predictor`` is the entry point).

Loads without TensorFlow for .tflite, ONNX and IR inputs. Names load on first use.
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            ("KernelRow", "PredictionResult", "Predictor", "UnsupportedModelError", "load_predictor"), "engine"
        ),
        **dict.fromkeys(("Artifact", "ArtifactError", "load_artifact"), "artifact"),
        **dict.fromkeys(("Graph", "Node"), "ir"),
        "to_graph": "converters",
        **dict.fromkeys(
            ("InstalledPredictor", "find_predictor", "install_predictor", "installed_predictors"), "registry"
        ),
    },
)

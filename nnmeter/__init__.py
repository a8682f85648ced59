"""nnmeter: build inference-latency predictors for edge devices, and predict with them.

``import nnmeter`` is light: the predictor engine loads without TensorFlow.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: the predictor engine (and numpy) load on first use, never TensorFlow
    if name in ("load_predictor", "Predictor", "PredictionResult"):
        from nnmeter.predictor import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'nnmeter' has no attribute {name!r}")

"""nnmeter: build inference-latency predictors for edge devices, and predict with them.

``import nnmeter`` is light: the predictor engine loads without TensorFlow.
"""

__version__ = "0.1.0"

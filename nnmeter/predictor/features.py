"""Regressor features of a kernel: defined once, used by training (builder) and prediction (engine).

A kernel's features are its config (``CINS`` of concat expanded to four slots
and a count) followed by its costs from :func:`nnmeter.ops.kernel_cost`: FLOPs,
params, bytes read and bytes written. Memory traffic is what nn-Meter's
features lack; bandwidth-bound kernels (depthwise, element-wise, pooling) need it.

The artifact records :data:`FEATURE_SCHEMA_VERSION` and each kernel's feature
names; the engine refuses an artifact whose schema differs.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from nnmeter import ops

#: Bump when the features of any kernel change meaning or order.
FEATURE_SCHEMA_VERSION = 1

_COST_FEATURES = ("FLOPS", "PARAMS", "BYTES_READ", "BYTES_WRITTEN")
_MAX_CONCAT_INPUTS = ops.CONCAT_INPUTS_RANGE[1]


def feature_names(kernel: str) -> tuple[str, ...]:
    """Names of the features of ``kernel``, in the order of :func:`kernel_features`."""
    names: list[str] = []
    for key in ops.kernel_type(kernel).keys:
        if key == ops.CINS:
            names += [f"CIN{i + 1}" for i in range(_MAX_CONCAT_INPUTS)] + ["NUM_INPUTS"]
        else:
            names.append(key)
    return tuple(names) + _COST_FEATURES


def kernel_features(kernel: str, config: Mapping[str, object]) -> list[float]:
    """The feature vector of one kernel config (validated; a bad config raises ValueError)."""
    cfg = ops.validate_config(kernel, config)
    values: list[float] = []
    for key in ops.kernel_type(kernel).keys:
        if key == ops.CINS:
            cins = list(cfg[key])  # type: ignore[arg-type]
            values += [float(c) for c in cins] + [0.0] * (_MAX_CONCAT_INPUTS - len(cins)) + [float(len(cins))]
        else:
            values.append(float(cfg[key]))  # type: ignore[arg-type]
    cost = ops.kernel_cost(kernel, cfg)
    return values + [float(cost.flops), float(cost.params), float(cost.bytes_read), float(cost.bytes_written)]


def feature_matrix(kernel: str, configs: Sequence[Mapping[str, object]]) -> np.ndarray:
    """Features of many configs of one kernel, one row each (float64)."""
    width = len(feature_names(kernel))
    if not configs:
        return np.zeros((0, width))
    return np.array([kernel_features(kernel, c) for c in configs], dtype=np.float64)

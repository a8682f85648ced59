"""Kernel latency regressors, in scikit-learn's estimator style (configure, ``fit``, ``predict``).

* ``nn-meter-rf``: nn-Meter's choice, the baseline. A random forest on the raw
  latency with nn-Meter's per-kernel settings for mobile CPUs (its
  ``predictor_lib`` table; kernels it has no entry for get its fallback).
* ``gbt-cost-ratio`` (the default): gradient-boosted trees on ``log(latency / base)``,
  where ``base`` is a non-negative linear cost model (fixed overhead + work + bytes
  read + bytes written) fitted for relative error; the work of a dense conv or an fc
  is counted in whole GEMM tiles of the shape that fits the device best (half-width
  tiles for a fully connected layer where the runtime switches to them), other
  kernels' in FLOPs. The cost model carries the scale, which trees extrapolate badly;
  the trees learn the efficiency factor, and squared error in log space is relative
  error, the measure the predictor is judged by. Huber's loss keeps a pocket of
  erratic measurements from pulling the configs near it (docs/design-notes.md).

Every regressor has ``fit(X, y)``, ``predict(X)`` and ``to_ensemble()``, the
portable form written to a predictor artifact (see
:mod:`nnmeter.predictor.regressor_format`), which reproduces ``predict`` exactly.
``X`` is :func:`nnmeter.predictor.features.feature_matrix` of the kernel; ``y``
is the latency in ms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

from nnmeter.predictor.features import GEMM_FEATURES, feature_names, half_tile_feature, nnmeter_feature_columns
from nnmeter.predictor.regressor_format import LinearBase, TreeEnsemble, from_sklearn, gemm_tile_terms

#: nn-Meter's random-forest settings per kernel for mobile CPUs (max_depth, n_estimators, max_features),
#: from its predictor builder's model table. ``oob_score`` is left out: it does not change the trees.
NNMETER_RF_SETTINGS: dict[str, tuple[int, int, int | float]] = {
    "conv-bn-relu": (70, 320, 6),
    "dwconv-bn-relu": (50, 240, 6),
    "fc": (50, 370, 2),
    "channelshuffle": (50, 370, 2),
    "se": (20, 290, 2),
    "maxpool": (50, 210, 5),
    "global-avgpool": (70, 370, 2),
    "hswish": (50, 190, 2),
    "avgpool": (50, 370, 5),
    "bnrelu": (50, 370, 2),
    "relu": (50, 370, 2),
    "bn": (50, 370, 2),
    "concat": (100, 690, 5),
    "addrelu": (50, 570, 3),
    "add": (50, 570, 3),
    "split": (50, 190, 2),
}
#: nn-Meter's fallback for a kernel without an entry (max_features "auto" = all features for regression).
NNMETER_RF_FALLBACK: tuple[int, int, int | float] = (50, 370, 1.0)
NNMETER_RF_RANDOM_STATE = 10

_BYTES_COLUMNS = ("BYTES_READ", "BYTES_WRITTEN")
_COST_COLUMNS = ("FLOPS", *_BYTES_COLUMNS)
#: Tile shapes (output rows mr x output columns nr) CPU GEMM micro-kernels compute at once: 1-8 rows by 4-64
#: columns, by SIMD width and register count. Which one a device runs is learned from its measurements.
GEMM_TILES: tuple[tuple[int, int], ...] = tuple((mr, nr) for mr in range(1, 9) for nr in (4, 8, 16, 32, 64))


def _check_training_data(X: Any, y: Any, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"expected a feature matrix of {n_features} columns, got shape {X.shape}")
    if len(y) != len(X):
        raise ValueError(f"{len(X)} feature rows but {len(y)} latencies")
    if len(y) < 2:
        raise ValueError(f"need at least 2 samples to fit, got {len(y)}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ValueError("features must be finite and latencies finite and positive")
    return X, y


class KernelRegressor(RegressorMixin, BaseEstimator):
    """Common parts: the kernel (which decides the features) and the portable form."""

    #: registry name, written into artifacts
    name = ""
    #: whether its features tell a family's kernels apart (the WITH_<op> columns), so that it can be fitted on
    #: the whole family's measurements
    family_aware = True

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel

    def _n_features(self) -> int:
        return len(feature_names(self.kernel))

    def to_ensemble(self) -> TreeEnsemble:
        raise NotImplementedError


class NnMeterForest(KernelRegressor):
    """nn-Meter's regressor: a random forest on the raw latency with its per-kernel settings and features."""

    name = "nn-meter-rf"
    family_aware = False  # nn-Meter's features are the config, FLOPs and params: one kernel's

    def __init__(self, kernel: str, random_state: int = NNMETER_RF_RANDOM_STATE) -> None:
        self.kernel = kernel
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> NnMeterForest:
        X, y = _check_training_data(X, y, self._n_features())
        X = X[:, list(nnmeter_feature_columns(self.kernel))]  # nn-Meter's features only
        max_depth, n_estimators, max_features = NNMETER_RF_SETTINGS.get(self.kernel, NNMETER_RF_FALLBACK)
        if isinstance(max_features, int):  # nn-Meter's counts refer to its own, sometimes longer, feature lists
            max_features = min(max_features, X.shape[1])
        self.forest_ = RandomForestRegressor(
            n_estimators=n_estimators,
            max_depth=max_depth,
            max_features=max_features,
            min_samples_leaf=1,
            min_samples_split=2,
            random_state=self.random_state,
        ).fit(X, y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return self.forest_.predict(np.asarray(X, dtype=np.float64)[:, list(nnmeter_feature_columns(self.kernel))])

    def to_ensemble(self) -> TreeEnsemble:
        return from_sklearn(
            self.forest_.estimators_,
            self._n_features(),
            aggregation="mean",
            regressor=self.name,
            columns=nnmeter_feature_columns(self.kernel),
        )


class _CostRatioRegressor(KernelRegressor):
    """Trees on ``log(y / base(X))`` with ``base`` a non-negative linear cost model (see the module doc)."""

    def _fit_base(self, X: np.ndarray, y: np.ndarray) -> LinearBase:
        """Least relative squared error ``sum((base(X) / y - 1)^2)`` with non-negative coefficients.

        Terms: a fixed overhead, the bytes read and written, and the work: FLOPs, or for a
        kernel that runs as a matrix product the multiply-adds and tiles counted in whole
        tiles (:func:`gemm_tile_terms`), with the tile shape that fits best of :data:`GEMM_TILES`,
        and with or without fully connected layers switching to the half-width micro-kernel where
        XNNPACK's rule would: the device's micro-kernels are learned from its measurements, not assumed.
        """
        names = feature_names(self.kernel)
        gemm = tuple(names.index(c) for c in GEMM_FEATURES) if GEMM_FEATURES[0] in names else ()
        columns = tuple(names.index(c) for c in (_BYTES_COLUMNS if gemm else _COST_COLUMNS))
        candidates = [(tile, -1) for tile in GEMM_TILES] if gemm else [((1, 1), -1)]
        # the same tiles with fully connected layers switching to the half-width micro-kernel, where the
        # features say when it would (whether the device's runtime does is the fit's to find)
        candidates += [
            (tile, names.index(half_tile_feature(tile[1])))
            for tile in GEMM_TILES
            if gemm and half_tile_feature(tile[1]) in names
        ]
        best: tuple[float, tuple[int, int], int, np.ndarray] | None = None
        for tile, half in candidates:
            work = gemm_tile_terms(X, gemm, tile, half) if gemm else np.zeros((len(y), 0))
            design = np.column_stack([np.ones(len(y)), work, X[:, list(columns)]])
            norm = np.maximum(np.abs(design).max(axis=0), 1e-300)  # unit columns: nnls is then well conditioned
            coef = nnls(design / norm / y[:, None], np.ones(len(y)))[0] / norm
            error = float(np.mean((design @ coef / y - 1) ** 2))
            if best is None or error < best[0]:
                best = (error, tile, half, coef)
        _, tile, half, coef = best  # type: ignore[misc]
        if not np.any(coef[1:] > 0):  # no cost term helps: a constant base, the trees do the rest
            coef = np.concatenate([[np.exp(np.mean(np.log(y)))], np.zeros(len(coef) - 1)])
        n_work = 2 if gemm else 0
        return LinearBase(
            columns=columns,
            coef=tuple(float(c) for c in coef[1 + n_work :]),
            intercept=float(coef[0]),
            floor=float(y.min()) * 1e-3,
            gemm_columns=gemm,
            tile=tile,
            tile_coef=(float(coef[1]), float(coef[2])) if gemm else (0.0, 0.0),
            half_tile_column=half,
        )

    def _targets(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        self.base_ = self._fit_base(X, y)
        target = np.log(y) - np.log(self.base_(X))
        self.offset_ = float(target.mean())
        return target - self.offset_

    def _raw(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return np.exp(self._raw(X) + self.offset_) * self.base_(X)


class CostRatioBoosting(_CostRatioRegressor):
    """Gradient-boosted trees on the log latency relative to a linear cost model (the default)."""

    name = "gbt-cost-ratio"

    def __init__(
        self,
        kernel: str,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        max_depth: int = 5,
        subsample: float = 0.8,
        min_samples_leaf: int = 2,
        loss: str = "huber",
        huber_quantile: float = 0.9,
        random_state: int = 0,
    ) -> None:
        self.kernel = kernel
        self.loss = loss  # scikit-learn's: 'huber' or 'squared_error'
        self.huber_quantile = huber_quantile  # residuals above this quantile count linearly (loss 'huber')
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.subsample = subsample
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> CostRatioBoosting:
        X, y = _check_training_data(X, y, self._n_features())
        target = self._targets(X, y)
        self.boosting_ = GradientBoostingRegressor(
            loss=self.loss,
            alpha=self.huber_quantile,
            init="zero",
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            subsample=self.subsample,
            min_samples_leaf=self.min_samples_leaf,
            random_state=self.random_state,
        ).fit(X, target)
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        return self.boosting_.predict(X)

    def to_ensemble(self) -> TreeEnsemble:
        return from_sklearn(
            self.boosting_.estimators_[:, 0],
            self.boosting_.n_features_in_,
            aggregation="sum",
            scale=self.learning_rate,
            offset=self.offset_,
            target="log",
            base=self.base_,
            regressor=self.name,
        )


#: Regressors by name; the campaign's ``kernels.regressor`` picks one.
REGRESSORS: dict[str, type[KernelRegressor]] = {cls.name: cls for cls in (NnMeterForest, CostRatioBoosting)}
#: The default: on tflite-local it beat nn-meter-rf at every budget tried (bench/kernel_accuracy.py).
DEFAULT_REGRESSOR = CostRatioBoosting.name
BASELINE_REGRESSOR = NnMeterForest.name


def regressor_class(name: str) -> type[KernelRegressor]:
    """The regressor class called ``name``; a clear error naming the valid names otherwise."""
    try:
        return REGRESSORS[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a regressor; known: {', '.join(REGRESSORS)}") from None


def make_regressor(name: str, kernel: str, random_state: int | None = None) -> KernelRegressor:
    """A fresh regressor called ``name`` for ``kernel``; a clear error naming the valid names otherwise."""
    cls = regressor_class(name)
    feature_names(kernel)  # validates the kernel name
    return cls(kernel) if random_state is None else cls(kernel, random_state=random_state)

"""Fitted tree ensembles as plain arrays: a file format loading cannot run code from, and its numpy evaluator.

Why not pickle/joblib: unpickling runs code from the file, and a pickled
scikit-learn model breaks when scikit-learn is upgraded (one of nn-Meter's known
gaps). A tree is just arrays; so a regressor file is an ``.npz`` archive of
numeric arrays plus one JSON header, read with ``np.load(allow_pickle=False)``,
and evaluated here with numpy alone (no scikit-learn import at prediction time).

Format ``nnmeter-trees`` version 3 (all trees of the ensemble concatenated):

==================  ========  =====================================================
array               dtype     meaning
==================  ========  =====================================================
``header``          unicode   JSON: ``format``, ``format_version``, ``aggregation``,
                              ``scale``, ``offset``, ``target``, ``base``,
                              ``n_features``, ``max_depth``, ``regressor``
``tree_offsets``    int64     index of each tree's root node; length n_trees + 1
``feature``         int32     feature tested at each node (-2 at leaves)
``threshold``       float64   go left when ``float32(x[feature]) <= threshold``
``children_left``   int32     child node index within its tree (-1 at leaves)
``children_right``  int32     child node index within its tree (-1 at leaves)
``value``           float64   node value (used at leaves)
==================  ========  =====================================================

Prediction for a feature matrix ``X`` (one row per kernel config):

1. every tree is walked from its root to a leaf; the comparison is made on ``X``
   cast to float32, as scikit-learn does, so leaves match scikit-learn's exactly;
2. the leaves are summed tree by tree from 0 (scikit-learn's order, so the rounding is
   the same): ``raw = offset + sum_t(scale * leaf_t)`` for ``aggregation == "sum"``
   (gradient boosting), ``raw = offset + sum_t(leaf_t) / n_trees`` for ``"mean"``
   (random forests, extra-trees);
3. ``target == "log"``: ``y = base(X) * exp(raw)``; ``"identity"``: ``y = base(X) * raw``;
   ``base`` is 1 when the header's ``base`` is null, else a mapping ``{columns, coef,
   intercept, floor, gemm_columns, tile, tile_coef}`` and
   ``base(X) = max(intercept + X[:, columns] @ coef + T @ tile_coef, floor)``, where,
   when ``gemm_columns`` names the columns ``m, n, k`` of a matrix product and ``tile``
   is ``[mr, nr]``, ``tiles = ceil(m / mr) * ceil(n / nr)`` and ``T`` has the two columns
   ``tiles * mr * nr * k`` (multiply-adds computed, padding included) and ``tiles``;
   ``T`` is empty when ``gemm_columns`` is. When ``half_tile_column`` is a column index
   (not -1), rows where that column is non-zero count their columns in tiles of
   ``nr // 2``: ``tiles = ceil(m / mr) * ceil(n / (nr // 2))``, each still counted as
   ``mr * nr * k`` multiply-adds (the half-width micro-kernel takes a wide tile's time).

The result is a latency in milliseconds.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

FORMAT = "nnmeter-trees"
FORMAT_VERSION = 3  # 2: the base's GEMM tile terms; 3: its half-width tiles
AGGREGATIONS = ("mean", "sum")
TARGETS = ("identity", "log")

_ARRAYS = ("tree_offsets", "feature", "threshold", "children_left", "children_right", "value")
_PICKLE_PROTOCOL_BYTE = b"\x80"
_ZIP_MAGIC = b"PK\x03\x04"


class RegressorFormatError(ValueError):
    """A regressor file that is not a valid ``nnmeter-trees`` file (message names the file and the problem)."""


@dataclass(frozen=True)
class LinearBase:
    """A non-negative linear cost model the trees correct multiplicatively (see the module doc)."""

    columns: tuple[int, ...]
    coef: tuple[float, ...]
    intercept: float
    floor: float
    gemm_columns: tuple[int, ...] = ()  # the m, n, k columns of a matrix product; empty: no tile terms
    tile: tuple[int, int] = (1, 1)  # mr, nr
    tile_coef: tuple[float, float] = (0.0, 0.0)  # ms per multiply-add computed, ms per tile
    half_tile_column: int = -1  # the column saying a row runs on the half-width micro-kernel; -1: none does

    def __call__(self, X: np.ndarray) -> np.ndarray:
        cols = list(self.columns)
        cost = self.intercept + X[:, cols] @ np.asarray(self.coef, dtype=np.float64)
        if self.gemm_columns:
            tiles = gemm_tile_terms(X, self.gemm_columns, self.tile, self.half_tile_column)
            cost = cost + tiles @ np.asarray(self.tile_coef)
        return np.maximum(cost, self.floor)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "floor": self.floor,
            "gemm_columns": list(self.gemm_columns),
            "tile": list(self.tile),
            "tile_coef": list(self.tile_coef),
            "half_tile_column": self.half_tile_column,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearBase:
        mr, nr = (int(v) for v in data["tile"])
        a, b = (float(v) for v in data["tile_coef"])
        half = int(data["half_tile_column"])
        if mr < 1 or nr < 1 or len(data["gemm_columns"]) not in (0, 3) or half < -1:
            raise ValueError(
                f"base: tile {[mr, nr]}, gemm_columns {data['gemm_columns']} or half_tile_column {half} is not valid"
            )
        return cls(
            tuple(int(c) for c in data["columns"]),
            tuple(float(c) for c in data["coef"]),
            float(data["intercept"]),
            float(data["floor"]),
            tuple(int(c) for c in data["gemm_columns"]),
            (mr, nr),
            (a, b),
            half,
        )


def gemm_tile_terms(
    X: np.ndarray, gemm_columns: Sequence[int], tile: tuple[int, int], half_tile_column: int = -1
) -> np.ndarray:
    """Per row of ``X``: the multiply-adds a matrix product computes in whole ``mr x nr`` tiles, and the tiles.

    A SIMD micro-kernel computes a whole tile of output rows and columns whatever
    the product's shape, so the work counted in tiles, not in FLOPs, is what the
    time follows (an ``N`` of 17 costs about what 32 does with 16-wide tiles).
    Rows flagged in ``half_tile_column`` run on the half-width micro-kernel, which
    takes about a wide tile's time for half its columns (see
    :func:`nnmeter.predictor.features.half_tile_chosen`): their columns count in
    tiles of ``nr // 2``, each as a whole ``mr x nr`` tile of work.
    """
    m, n, k = (X[:, c] for c in gemm_columns)
    mr, nr = tile
    column_tiles = np.ceil(n / nr)
    if half_tile_column >= 0:
        column_tiles = np.where(X[:, half_tile_column] != 0, np.ceil(n / max(nr // 2, 1)), column_tiles)
    tiles = np.ceil(m / mr) * column_tiles
    return np.column_stack([tiles * (mr * nr) * k, tiles])


@dataclass(frozen=True)
class TreeEnsemble:
    """A tree ensemble regressor as arrays; :meth:`predict` is the numpy evaluator."""

    tree_offsets: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    children_left: np.ndarray
    children_right: np.ndarray
    value: np.ndarray
    n_features: int
    aggregation: str = "mean"
    scale: float = 1.0
    offset: float = 0.0
    target: str = "identity"
    base: LinearBase | None = None
    regressor: str = ""  # the name of the regressor that produced it, for the record
    max_depth: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise RegressorFormatError(f"aggregation {self.aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        if self.target not in TARGETS:
            raise RegressorFormatError(f"target {self.target!r} is not one of {', '.join(TARGETS)}")
        if self.max_depth < 0:
            object.__setattr__(
                self, "max_depth", _max_depth(self.tree_offsets, self.children_left, self.children_right)
            )

    @property
    def n_trees(self) -> int:
        return len(self.tree_offsets) - 1

    @property
    def n_nodes(self) -> int:
        return len(self.feature)

    def raw_predict(self, X: np.ndarray) -> np.ndarray:
        """The aggregated tree output (before the target transform and the base)."""
        X = self._check_X(X)
        leaves = self._leaf_values(X)
        raw = np.zeros(X.shape[0], dtype=np.float64)
        if self.aggregation == "sum":
            for t in range(self.n_trees):  # tree by tree, in scikit-learn's order, for identical rounding
                raw += self.scale * leaves[:, t]
        else:
            for t in range(self.n_trees):
                raw += leaves[:, t]
            raw /= self.n_trees
        return raw + self.offset

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Latency (ms) of each row of the feature matrix ``X``."""
        X = self._check_X(X)
        raw = self.raw_predict(X)
        out = np.exp(raw) if self.target == "log" else raw
        return out * self.base(X) if self.base is not None else out

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a feature matrix of {self.n_features} columns, got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("feature matrix has NaN or infinite values")
        return X

    def _leaf_values(self, X: np.ndarray) -> np.ndarray:
        """Value of the leaf each row reaches in each tree: shape (n_rows, n_trees)."""
        left, right, feature, threshold = self._global_nodes()
        X32 = X.astype(np.float32).astype(np.float64)  # scikit-learn compares float32 inputs
        rows = np.arange(X.shape[0])[:, None]
        node = np.broadcast_to(self.tree_offsets[:-1], (X.shape[0], self.n_trees)).copy()
        for _ in range(self.max_depth):
            go_left = X32[rows, feature[node]] <= threshold[node]
            node = np.where(go_left, left[node], right[node])
        return self.value[node]

    def _global_nodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Children as global node indices, leaves pointing at themselves (a fixed point of the walk)."""
        cached = self.__dict__.get("_nodes_cache")
        if cached is None:
            tree_of_node = np.repeat(np.arange(self.n_trees), np.diff(self.tree_offsets))
            base = self.tree_offsets[:-1][tree_of_node]
            is_leaf = self.children_left < 0
            own = np.arange(self.n_nodes)
            left = np.where(is_leaf, own, self.children_left + base)
            right = np.where(is_leaf, own, self.children_right + base)
            feature = np.where(is_leaf, 0, self.feature)
            threshold = np.where(is_leaf, np.inf, self.threshold)
            cached = (left, right, feature, threshold)
            object.__setattr__(self, "_nodes_cache", cached)
        return cached

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "regressor": self.regressor,
            "aggregation": self.aggregation,
            "scale": self.scale,
            "offset": self.offset,
            "target": self.target,
            "base": self.base.to_dict() if self.base is not None else None,
            "n_features": self.n_features,
            "max_depth": self.max_depth,
        }


def from_sklearn(
    estimators: Sequence[Any],
    n_features: int,
    *,
    aggregation: str,
    scale: float = 1.0,
    offset: float = 0.0,
    target: str = "identity",
    base: LinearBase | None = None,
    regressor: str = "",
    columns: Sequence[int] | None = None,
) -> TreeEnsemble:
    """A :class:`TreeEnsemble` from fitted scikit-learn decision trees (anything with a ``tree_``).

    Takes the trees of a RandomForestRegressor / ExtraTreesRegressor (``estimators_``)
    or a GradientBoostingRegressor (``estimators_[:, 0]``); reads their arrays, never imports scikit-learn.
    ``columns``: trees fitted on a subset of the ``n_features`` columns, their positions in the full matrix.
    """
    trees = [est.tree_ for est in estimators]
    if not trees:
        raise ValueError("an ensemble needs at least one fitted tree")
    for t in trees:
        if t.value.shape[1] != 1:
            raise ValueError("only single-output regression trees can be stored")
    counts = [t.node_count for t in trees]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return TreeEnsemble(
        tree_offsets=offsets,
        feature=_full_columns(np.concatenate([t.feature for t in trees]), columns).astype(np.int32),
        threshold=np.concatenate([t.threshold for t in trees]).astype(np.float64),
        children_left=np.concatenate([t.children_left for t in trees]).astype(np.int32),
        children_right=np.concatenate([t.children_right for t in trees]).astype(np.int32),
        value=np.concatenate([t.value[:, 0, 0] for t in trees]).astype(np.float64),
        n_features=int(n_features),
        aggregation=aggregation,
        scale=float(scale),
        offset=float(offset),
        target=target,
        base=base,
        regressor=regressor,
        max_depth=max(int(t.max_depth) for t in trees),
    )


def _full_columns(feature: np.ndarray, columns: Sequence[int] | None) -> np.ndarray:
    """Tree feature indices mapped from a column subset to the full matrix (leaves, < 0, stay)."""
    if columns is None:
        return feature
    mapping = np.asarray(columns)
    return np.where(feature >= 0, mapping[np.maximum(feature, 0)], feature)


def save_ensemble(ensemble: TreeEnsemble, path: str | Path) -> Path:
    """Write ``ensemble`` to ``path`` (an ``.npz`` of numeric arrays and a JSON header)."""
    path = Path(path)
    arrays = {name: getattr(ensemble, name) for name in _ARRAYS}
    header = np.array(json.dumps(ensemble.header(), sort_keys=True))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, header=header, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def check_not_pickle(path: str | Path) -> None:
    """Refuse a file that is a pickle (or anything but an ``.npz``) by its first bytes, without loading it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise RegressorFormatError(f"{path}: cannot read ({err.strerror or err})") from None
    if magic[:1] == _PICKLE_PROTOCOL_BYTE:
        raise RegressorFormatError(
            f"{path}: is a Python pickle, refused: nnmeter never loads pickles (loading one can run code)"
        )
    if magic != _ZIP_MAGIC:
        raise RegressorFormatError(f"{path}: is not an {FORMAT} regressor file (.npz)")


def load_ensemble(path: str | Path) -> TreeEnsemble:
    """Read a regressor file; a pickle, a foreign file or a damaged one raises :class:`RegressorFormatError`."""
    path = Path(path)
    check_not_pickle(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [n for n in ("header", *_ARRAYS) if n not in npz.files]
            if missing:
                raise RegressorFormatError(f"{path}: is not an {FORMAT} file; missing arrays {', '.join(missing)}")
            header = json.loads(str(npz["header"]))
            arrays = {n: npz[n] for n in _ARRAYS}
    except RegressorFormatError:
        raise
    except ValueError as err:  # numpy refuses object arrays (they need pickle) with a ValueError
        raise RegressorFormatError(f"{path}: refused: {err}") from None
    except (OSError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as err:
        raise RegressorFormatError(f"{path}: damaged regressor file ({err})") from None
    if header.get("format") != FORMAT:
        raise RegressorFormatError(f"{path}: format {header.get('format')!r} is not {FORMAT!r}")
    if header.get("format_version") != FORMAT_VERSION:
        raise RegressorFormatError(
            f"{path}: {FORMAT} version {header.get('format_version')} is not supported "
            f"(this nnmeter reads version {FORMAT_VERSION})"
        )
    _check_arrays(path, arrays)
    try:
        return TreeEnsemble(
            **arrays,
            n_features=int(header["n_features"]),
            aggregation=header["aggregation"],
            scale=float(header["scale"]),
            offset=float(header["offset"]),
            target=header["target"],
            base=LinearBase.from_dict(header["base"]) if header.get("base") else None,
            regressor=str(header.get("regressor", "")),
            max_depth=int(header["max_depth"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RegressorFormatError(f"{path}: bad header ({err})") from None


def _check_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Shapes and index ranges, so that a damaged file fails here and not with an IndexError later."""
    offsets = arrays["tree_offsets"]
    n = len(arrays["feature"])
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 1):
        raise RegressorFormatError(f"{path}: damaged regressor file (bad tree_offsets)")
    for name in _ARRAYS[1:]:
        if arrays[name].shape != (n,):
            raise RegressorFormatError(
                f"{path}: damaged regressor file ({name} has shape {arrays[name].shape}, expected ({n},))"
            )
    sizes = np.repeat(np.diff(offsets), np.diff(offsets))
    for name in ("children_left", "children_right"):
        c = arrays[name]
        if np.any((c != -1) & ((c < 0) | (c >= sizes))):
            raise RegressorFormatError(f"{path}: damaged regressor file ({name} points outside its tree)")
    if not np.all(np.isfinite(arrays["value"])):
        raise RegressorFormatError(f"{path}: damaged regressor file (non-finite leaf values)")


def _max_depth(offsets: np.ndarray, left: np.ndarray, right: np.ndarray) -> int:
    """Depth of the deepest leaf over all trees (edges from the root)."""
    depth = np.zeros(len(left), dtype=np.int64)
    deepest = 0
    for t in range(len(offsets) - 1):
        lo, hi = int(offsets[t]), int(offsets[t + 1])
        for i in range(lo, hi):  # children come after their parent in scikit-learn's node order
            if left[i] >= 0:
                depth[lo + left[i]] = depth[lo + right[i]] = depth[i] + 1
        deepest = max(deepest, int(depth[lo:hi].max()))
    return deepest


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LinearBase",
    "RegressorFormatError",
    "TreeEnsemble",
    "check_not_pickle",
    "from_sklearn",
    "load_ensemble",
    "save_ensemble",
]

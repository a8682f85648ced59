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

Reading a file (:func:`load_ensemble`) is bounded and never runs code: each member's ``.npy`` header is read
first from the zip member, and its dtype (plain numbers; unicode for ``header``), shape and size are checked
against what the file's own header and ``tree_offsets`` say (one value per node, at most :data:`MAX_NODES`
nodes in at most :data:`MAX_TREES` trees) and against the member's declared uncompressed size before a byte
of its data is read; only stored or deflated members are read. The JSON header is at most
:data:`MAX_HEADER_CHARS` characters nested at most :data:`MAX_HEADER_NESTING` deep. Every tree must be a
tree: children after their parent within the tree, each node the child of exactly one other but the root,
features in range (-2 at leaves), finite thresholds and values, depth at most :data:`MAX_TREE_DEPTH`; the
walk uses the depth computed from the trees (the header's ``max_depth`` may not be less).
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zipfile
import zlib
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

#: Bounds on what a regressor file may hold (a packaged ensemble has a few hundred trees of a few
#: thousand nodes at most, 30 to 100 levels deep, and about 30 features).
MAX_FILE_BYTES = 1 << 30
MAX_TREES = 1 << 14
MAX_NODES = 1 << 24
MAX_TREE_DEPTH = 256
MAX_FEATURES = 1 << 12
MAX_HEADER_CHARS = 1 << 16
MAX_HEADER_NESTING = 8
_MAX_TILE = 1 << 16
_NPY_HEADER_BYTES = 4096  # the .npy header of a member (numpy writes about 128 bytes)


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
    def from_dict(cls, data: Mapping[str, Any], n_features: int | None = None) -> LinearBase:
        """The base a header describes; ValueError when a value has the wrong type, is not finite, or (given
        ``n_features``) a column is out of range."""
        if not isinstance(data, Mapping):
            raise ValueError(f"base is a {type(data).__name__}, not a mapping")
        columns = tuple(_int(c, "base columns") for c in _list(data["columns"], "base columns"))
        coef = tuple(_finite(c, "base coef") for c in _list(data["coef"], "base coef"))
        gemm = tuple(_int(c, "base gemm_columns") for c in _list(data["gemm_columns"], "base gemm_columns"))
        tile = tuple(_int(v, "base tile") for v in _list(data["tile"], "base tile"))
        tile_coef = tuple(_finite(v, "base tile_coef") for v in _list(data["tile_coef"], "base tile_coef"))
        half = _int(data["half_tile_column"], "base half_tile_column")
        if len(coef) != len(columns):
            raise ValueError(f"base: {len(columns)} columns but {len(coef)} coefficients")
        if len(tile) != 2 or len(tile_coef) != 2:
            raise ValueError(f"base: tile {list(tile)} and tile_coef {list(tile_coef)} must have two values each")
        mr, nr = tile
        if not (1 <= mr <= _MAX_TILE and 1 <= nr <= _MAX_TILE) or len(gemm) not in (0, 3) or half < -1:
            raise ValueError(
                f"base: tile {[mr, nr]}, gemm_columns {list(gemm)} or half_tile_column {half} is not valid"
            )
        if n_features is not None:
            bad = [c for c in (*columns, *gemm) if not 0 <= c < n_features]
            if bad or half >= n_features:
                raise ValueError(f"base: column {(bad or [half])[0]} is out of range for {n_features} features")
        return cls(
            columns,
            coef,
            _finite(data["intercept"], "base intercept"),
            _finite(data["floor"], "base floor"),
            gemm,
            (mr, nr),
            (tile_coef[0], tile_coef[1]),
            half,
        )


def _int(value: Any, what: str) -> int:
    """``value`` if it is an integer (a bool or a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what}: {value!r} is not an integer")
    return int(value)


def _finite(value: Any, what: str) -> float:
    """``value`` as a float if it is a finite number (a bool or a string is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what}: {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{what}: {value!r} is not finite")
    return number


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what}: {value!r} is not a list")
    return list(value)


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
                self, "max_depth", tree_depth(self.tree_offsets, self.children_left, self.children_right)
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
    """Read a regressor file; a pickle, a foreign file, a damaged one or one out of bounds (see the module doc)
    raises :class:`RegressorFormatError` naming the file, before anything big is read."""
    path = Path(path)
    check_not_pickle(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RegressorFormatError(
                f"{path}: {size:,} bytes, more than a regressor file may have ({MAX_FILE_BYTES:,})"
            )
        _check_zip_directory(path, size)
        with zipfile.ZipFile(path) as archive:
            missing = [n for n in ("header", *_ARRAYS) if f"{n}.npy" not in archive.NameToInfo]
            if missing:
                raise RegressorFormatError(f"{path}: is not an {FORMAT} file; missing arrays {', '.join(missing)}")
            members = _Members(path, archive)
            header = _parse_header(path, members.read("header", "U", shape=()).item())
            fields = _header_fields(path, header)
            offsets = members.read("tree_offsets", "iu", max_length=MAX_TREES + 1).astype(np.int64)
            n_nodes = _check_offsets(path, offsets)
            arrays = {"tree_offsets": offsets}
            for name in _ARRAYS[1:]:
                kinds = "f" if name in ("threshold", "value") else "iu"
                arrays[name] = members.read(name, kinds, shape=(n_nodes,))
    except RegressorFormatError:
        raise
    except (
        OSError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        struct.error,
        ValueError,
        TypeError,
        NotImplementedError,
        RuntimeError,
        OverflowError,
    ) as err:
        raise RegressorFormatError(f"{path}: damaged regressor file ({_one_line(err)})") from None
    depth = _check_trees(path, arrays, fields["n_features"])
    if fields["max_depth"] < depth:
        raise RegressorFormatError(
            f"{path}: damaged regressor file "
            f"(header max_depth {fields['max_depth']} is less than the trees' depth {depth})"
        )
    try:
        return TreeEnsemble(
            tree_offsets=arrays["tree_offsets"],
            feature=arrays["feature"].astype(np.int32),
            threshold=arrays["threshold"].astype(np.float64),
            children_left=arrays["children_left"].astype(np.int32),
            children_right=arrays["children_right"].astype(np.int32),
            value=arrays["value"].astype(np.float64),
            **{**fields, "max_depth": depth},
        )
    except ValueError as err:
        raise RegressorFormatError(f"{path}: bad header ({_one_line(err)})") from None


def _check_zip_directory(path: Path, size: int) -> None:
    """Refuse a zip whose central directory (which :class:`zipfile.ZipFile` reads whole) is bigger than a regressor
    file's: more than :data:`_MAX_MEMBERS` members, more than 64 KB, or in zip64 form. Found as zipfile finds it."""
    tail_bytes = min(size, _EOCD_SIZE + 0xFFFF)
    with path.open("rb") as fh:
        fh.seek(size - tail_bytes)
        tail = fh.read(tail_bytes)
    if tail[-_EOCD_SIZE:][:4] == _EOCD_MAGIC and tail[-2:] == b"\x00\x00":
        at = len(tail) - _EOCD_SIZE
    else:
        at = tail.rfind(_EOCD_MAGIC)
    if at < 0 or len(tail) - at < _EOCD_SIZE:
        raise RegressorFormatError(f"{path}: damaged regressor file (no zip directory: truncated?)")
    members, directory_bytes = (
        struct.unpack("<H", tail[at + 10 : at + 12])[0],
        struct.unpack("<L", tail[at + 12 : at + 16])[0],
    )
    if members > _MAX_MEMBERS or directory_bytes > 1 << 16 or tail[max(at - 20, 0) : at - 16] == b"PK\x06\x07":
        raise RegressorFormatError(
            f"{path}: damaged regressor file (a zip directory of {members} members and {directory_bytes:,} bytes; "
            f"a regressor file has {len(_ARRAYS) + 1})"
        )


_EOCD_MAGIC = b"PK\x05\x06"
_EOCD_SIZE = 22
_MAX_MEMBERS = 64


class _Members:
    """The ``.npy`` members of an ``.npz``, each read only after its header says it is what is expected."""

    def __init__(self, path: Path, archive: zipfile.ZipFile) -> None:
        self.path = path
        self.archive = archive

    def read(self, name: str, kinds: str, *, shape: tuple[int, ...] | None = None, max_length: int = 0) -> np.ndarray:
        """Member ``name``: of a dtype of one of ``kinds`` ("U" unicode, "i" "u" integers, "f" floats) and
        either of ``shape`` or one-dimensional of 1 to ``max_length`` values."""
        where = f"{self.path}: damaged regressor file ({name}"
        info = self.archive.getinfo(f"{name}.npy")
        if info.flag_bits & 0x1:
            raise RegressorFormatError(f"{where} is encrypted)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise RegressorFormatError(f"{where} is compressed with method {info.compress_type}, not deflate)")
        limit = _NPY_HEADER_BYTES + (4 * MAX_HEADER_CHARS if kinds == "U" else 8 * MAX_NODES)
        if info.file_size > limit:
            raise RegressorFormatError(
                f"{where} declares {info.file_size:,} bytes uncompressed, more than the {limit:,} it may have)"
            )
        with self.archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                declared, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_NPY_HEADER_BYTES)
            elif version == (2, 0):
                declared, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_NPY_HEADER_BYTES)
            else:
                raise RegressorFormatError(f"{where} is .npy version {version}, not 1.0 or 2.0)")
            if dtype.hasobject:
                raise RegressorFormatError(
                    f"{self.path}: refused: {name} is an array of Python objects (reading it would unpickle)"
                )
            if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in kinds:
                raise RegressorFormatError(f"{where} has dtype {dtype.str}, expected {_KIND_NAMES[kinds]})")
            if kinds != "U" and (dtype.itemsize > 8 or (dtype.kind == "u" and dtype.itemsize > 4)):
                raise RegressorFormatError(f"{where} has dtype {dtype.str}, expected {_KIND_NAMES[kinds]})")
            if shape is not None and declared != shape:
                raise RegressorFormatError(f"{where} has shape {declared}, expected {shape})")
            if shape is None and (len(declared) != 1 or not 1 <= declared[0] <= max_length):
                raise RegressorFormatError(f"{where} has shape {declared}, expected (1..{max_length},))")
            count = math.prod(declared)
            nbytes = count * dtype.itemsize
            if info.file_size != fh.tell() + nbytes:
                raise RegressorFormatError(
                    f"{where} declares {info.file_size:,} bytes uncompressed, its array takes {fh.tell() + nbytes:,})"
                )
            data = fh.read(nbytes)
        if len(data) != nbytes:
            raise RegressorFormatError(f"{where} is truncated)")
        array = np.frombuffer(data, dtype=dtype, count=count).reshape(declared)
        return array.astype(dtype.newbyteorder("="), copy=False) if kinds != "U" else array


_KIND_NAMES = {"U": "a unicode string", "iu": "integers of at most 64 bits", "f": "floats of at most 64 bits"}


def _parse_header(path: Path, text: Any) -> dict[str, Any]:
    """The JSON header, bounded in size and nesting, without NaN or infinities."""
    if not isinstance(text, str) or len(text) > MAX_HEADER_CHARS:
        raise RegressorFormatError(
            f"{path}: damaged regressor file (header is not a JSON text of at most {MAX_HEADER_CHARS:,} characters)"
        )
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', "", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_HEADER_NESTING:
        raise RegressorFormatError(
            f"{path}: damaged regressor file (header nested deeper than {MAX_HEADER_NESTING} levels)"
        )

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a number a header may hold")

    try:
        header = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as err:
        raise RegressorFormatError(f"{path}: damaged regressor file (header: {_one_line(err)})") from None
    if not isinstance(header, dict):
        raise RegressorFormatError(
            f"{path}: damaged regressor file (header is a {type(header).__name__}, not an object)"
        )
    if header.get("format") != FORMAT:
        raise RegressorFormatError(f"{path}: format {_short(header.get('format'))} is not {FORMAT!r}")
    if header.get("format_version") != FORMAT_VERSION:
        raise RegressorFormatError(
            f"{path}: {FORMAT} version {_short(header.get('format_version'))} is not supported "
            f"(this nnmeter reads version {FORMAT_VERSION})"
        )
    return header


def _header_fields(path: Path, header: Mapping[str, Any]) -> dict[str, Any]:
    """The header's values as :class:`TreeEnsemble` takes them, each checked for type and range."""
    try:
        n_features = _int(header["n_features"], "n_features")
        if not 1 <= n_features <= MAX_FEATURES:
            raise ValueError(f"n_features {n_features} is not in 1..{MAX_FEATURES}")
        max_depth = _int(header["max_depth"], "max_depth")
        if not 0 <= max_depth <= MAX_TREE_DEPTH:
            raise ValueError(f"max_depth {max_depth} is not in 0..{MAX_TREE_DEPTH}")
        aggregation, target = header["aggregation"], header["target"]
        if aggregation not in AGGREGATIONS or target not in TARGETS:
            raise ValueError(
                f"aggregation {_short(aggregation)} or target {_short(target)} is not one of "
                f"{', '.join(AGGREGATIONS)} / {', '.join(TARGETS)}"
            )
        base = header.get("base")
        return {
            "n_features": n_features,
            "aggregation": aggregation,
            "scale": _finite(header["scale"], "scale"),
            "offset": _finite(header["offset"], "offset"),
            "target": target,
            "base": LinearBase.from_dict(base, n_features) if base is not None else None,
            "regressor": str(header.get("regressor", ""))[:200],
            "max_depth": max_depth,
        }
    except KeyError as err:
        raise RegressorFormatError(f"{path}: bad header (no key {err})") from None
    except (TypeError, ValueError) as err:
        raise RegressorFormatError(f"{path}: bad header ({_one_line(err)})") from None


def _check_offsets(path: Path, offsets: np.ndarray) -> int:
    """The node count ``tree_offsets`` gives: it starts at 0 and grows by at least one node per tree."""
    if offsets[0] != 0 or len(offsets) < 2 or np.any(np.diff(offsets) < 1) or offsets[-1] > MAX_NODES:
        raise RegressorFormatError(
            f"{path}: damaged regressor file (bad tree_offsets: not 0 then increasing up to at most {MAX_NODES:,})"
        )
    return int(offsets[-1])


def _check_trees(path: Path, arrays: Mapping[str, np.ndarray], n_features: int) -> int:
    """Refuse anything but a forest of binary trees with children after their parent (so every walk ends), with
    features in range and finite numbers; the depth of its deepest leaf."""
    offsets = arrays["tree_offsets"]
    n = int(offsets[-1])
    sizes = np.diff(offsets)
    tree_of_node = np.repeat(np.arange(len(sizes)), sizes)
    base = offsets[:-1][tree_of_node]
    local = np.arange(n, dtype=np.int64) - base
    left = arrays["children_left"].astype(np.int64)
    right = arrays["children_right"].astype(np.int64)
    feature = arrays["feature"].astype(np.int64)
    leaf = left == -1
    inner = ~leaf

    def refuse(problem: str) -> RegressorFormatError:
        return RegressorFormatError(f"{path}: damaged regressor file ({problem})")

    if np.any(leaf & (right != -1)):
        raise refuse("a leaf has a right child but no left one")
    for name, child in (("children_left", left), ("children_right", right)):
        if np.any(inner & ((child <= local) | (child >= sizes[tree_of_node]))):
            raise refuse(f"{name} points outside its tree, or back to a node before its child")
    parents = np.bincount(np.concatenate([(left + base)[inner], (right + base)[inner]]), minlength=n)
    is_root = np.zeros(n, dtype=bool)
    is_root[offsets[:-1]] = True
    if np.any(parents != np.where(is_root, 0, 1)):
        raise refuse("a node is the child of no node or of several: the trees are not trees")
    if np.any(leaf & (feature != -2)) or np.any(inner & ((feature < 0) | (feature >= n_features))):
        raise refuse(f"a feature index is out of range for {n_features} features (or a leaf's is not -2)")
    for name in ("threshold", "value"):
        if not np.all(np.isfinite(arrays[name])):
            raise refuse(f"non-finite {name}s")
    try:
        return tree_depth(offsets, left, right, limit=MAX_TREE_DEPTH)
    except ValueError:
        raise refuse(f"a tree is deeper than {MAX_TREE_DEPTH} levels") from None


def tree_depth(offsets: np.ndarray, left: np.ndarray, right: np.ndarray, limit: int | None = None) -> int:
    """Depth of the deepest leaf over all trees (edges from the root), walked level by level; ValueError when it
    exceeds ``limit`` (at most the node count: a walk that long has met a cycle)."""
    limit = len(left) if limit is None else limit
    base = np.repeat(offsets[:-1], np.diff(offsets))
    left_global = np.where(left >= 0, left + base, -1)
    right_global = np.where(right >= 0, right + base, -1)
    frontier = np.asarray(offsets[:-1], dtype=np.int64)
    depth = 0
    while True:
        frontier = frontier[left_global[frontier] >= 0]
        if not frontier.size:
            return depth
        depth += 1
        if depth > limit:
            raise ValueError(f"trees deeper than {limit}")
        frontier = np.concatenate([left_global[frontier], right_global[frontier]])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


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
    "tree_depth",
]

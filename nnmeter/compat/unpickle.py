"""Reading nn-Meter's pickled forests without running them.

nn-Meter stored each kernel regressor as a pickled scikit-learn ``RandomForestRegressor`` (0.23.1 for its
published predictors). ``pickle.load`` would call whatever the file names, and a forest pickled by scikit-learn
0.2x does not even load on scikit-learn >= 1.3. :func:`read_forest` reads such a file with an unpickler whose
``find_class`` knows only the names a forest needs, each mapped to an inert record of this module:

* the forest and its trees (``RandomForestRegressor`` and ``DecisionTreeRegressor`` under their module paths of
  scikit-learn 0.2x to today's: ``sklearn.ensemble.forest`` / ``_forest``, ``sklearn.tree.tree`` / ``_classes``)
  and ``sklearn.tree._tree.Tree``: records that keep their state (estimator parameters, node arrays, values);
* numpy's array, dtype and scalar reconstruction helpers (``numpy.core`` and ``numpy._core`` paths): the
  records rebuild plain numeric arrays from the raw bytes with ``np.frombuffer``, nothing else;
* ``copyreg._reconstructor`` and ``builtins.object``, which protocols 0 and 1 use to make objects, and
  ``_codecs.encode`` of latin1 text, how protocols 0 to 2 write bytes.

Any other name is refused before it is called, naming it (:class:`UnsafePickleError`); no scikit-learn object
is built and scikit-learn is never imported. :func:`forest_to_ensemble` turns the records into nnmeter's tree
format (:mod:`nnmeter.predictor.regressor_format`), whose predictions equal scikit-learn's.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnmeter.errors import NnmeterError
from nnmeter.predictor.regressor_format import TreeEnsemble

from .files import read_bounded

#: The largest pickle read: a published nn-Meter forest is a few MB.
MAX_PICKLE_BYTES = 1 << 30

_FORESTS = {("sklearn.ensemble.forest", "RandomForestRegressor"), ("sklearn.ensemble._forest", "RandomForestRegressor")}
_TREES = {("sklearn.tree.tree", "DecisionTreeRegressor"), ("sklearn.tree._classes", "DecisionTreeRegressor")}
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
#: Python 2 module names protocols 0-2 may carry.
_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}


class UnsafePickleError(NnmeterError):
    """A pickle that names a class or function outside what a scikit-learn forest needs, or is not a forest."""


class _Estimator:
    """An inert forest or tree estimator: the class it names and the state pickle gives it."""

    qualname = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.qualname}: its state is a {type(state).__name__}, not a mapping")
        self.__dict__["state"] = state


class _Forest(_Estimator):
    qualname = "RandomForestRegressor"


class _DecisionTree(_Estimator):
    qualname = "DecisionTreeRegressor"


class _Tree:
    """An inert ``sklearn.tree._tree.Tree``: its constructor arguments and its state (nodes, values)."""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("Tree: its state is not a mapping")
        self.state = state


class _Dtype:
    """An inert ``numpy.dtype(code, align, copy)``; :attr:`dtype` is the real dtype once its state is set."""

    def __init__(self, code: Any, *_: Any) -> None:
        if not isinstance(code, str) or len(code) > 8:
            raise pickle.UnpicklingError(f"dtype: {code!r} is not a dtype code")
        self.code = code
        self.dtype = np.dtype(code) if code != "O" else None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 8:
            raise pickle.UnpicklingError("dtype: its state is not numpy's dtype state")
        _, order, _, names, fields, itemsize = state[:6]
        if names is not None:  # a structured dtype (a tree's node records)
            if not isinstance(fields, dict) or not all(isinstance(fields.get(n), tuple) for n in names):
                raise pickle.UnpicklingError("dtype: structured fields are not numpy's")
            parts = [fields[n] for n in names]
            if not all(isinstance(p[0], _Dtype) and p[0].dtype is not None for p in parts):
                raise pickle.UnpicklingError("dtype: a structured field is not a plain number")
            self.dtype = np.dtype(
                {
                    "names": list(names),
                    "formats": [p[0].dtype for p in parts],
                    "offsets": [int(p[1]) for p in parts],
                    "itemsize": int(itemsize),
                }
            )
        elif self.dtype is not None and order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class _Array:
    """An inert ``ndarray`` reconstruction: numbers from the raw bytes, or the list of an object array."""

    def __init__(self, *_: Any) -> None:
        self.value: Any = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5 or not isinstance(state[2], _Dtype):
            raise pickle.UnpicklingError("ndarray: its state is not numpy's array state")
        _, shape, dtype, fortran, data = state
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"ndarray: shape {shape!r} is not a shape")
        if dtype.dtype is None:  # an object array (feature names): its items as they are
            self.value = list(data) if isinstance(data, list) else None
            return
        self.value = _numbers(data, dtype.dtype, shape, "F" if fortran else "C")


def _numbers(data: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """The array of ``shape`` from its raw bytes, checked for size."""
    if not isinstance(data, (bytes, bytearray, pickle.PickleBuffer)):
        raise pickle.UnpicklingError(f"ndarray: its data is a {type(data).__name__}, not bytes")
    raw = bytes(data)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise pickle.UnpicklingError(f"ndarray: {len(raw)} bytes of data for shape {shape} of {dtype} ({expected})")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy()  # type: ignore[call-overload]


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Inert ``numpy.core.numeric._frombuffer`` (protocol 5 arrays)."""
    if not isinstance(dtype, _Dtype) or dtype.dtype is None or not isinstance(shape, tuple):
        raise pickle.UnpicklingError("_frombuffer: not a numeric array")
    return _numbers(data, dtype.dtype, shape, "F" if order == "F" else "C")


def _scalar(dtype: Any, data: Any = None) -> Any:
    """Inert ``numpy.core.multiarray.scalar``: a number from its bytes."""
    if not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError("scalar: not a numpy dtype")
    if dtype.dtype is None:
        return data
    return _numbers(data, dtype.dtype, (), "C")[()].item()


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """Inert ``copyreg._reconstructor`` for the record classes only."""
    if not (isinstance(cls, type) and issubclass(cls, (_Estimator, _Array))) or base is not object:
        raise pickle.UnpicklingError("copyreg._reconstructor: only for a forest's classes")
    return cls.__new__(cls)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """Inert ``_codecs.encode``, how protocols 0-2 write bytes: a str and latin1 only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode: only latin1 text, as pickle writes bytes")
    return text.encode("latin1")


def _allowed(module: str, name: str) -> Any:
    """The inert stand-in for ``module.name``, or None when a forest has no use for it."""
    if (module, name) in _FORESTS:
        return _Forest
    if (module, name) in _TREES:
        return _DecisionTree
    if (module, name) == ("sklearn.tree._tree", "Tree"):
        return _Tree
    if module in _NUMPY_CORE and name == "_reconstruct":
        return _Array
    if module in _NUMPY_CORE and name == "scalar":
        return _scalar
    if module in _NUMPY_NUMERIC and name == "_frombuffer":
        return _frombuffer
    if module == "numpy" and name == "ndarray":
        return _Array
    if module == "numpy" and name == "dtype":
        return _Dtype
    if (module, name) == ("copyreg", "_reconstructor"):
        return _reconstructor
    if (module, name) == ("builtins", "object"):
        return object
    if (module, name) == ("_codecs", "encode"):
        return _latin1
    return None


class _ForestUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        found = _allowed(module, name)
        if found is None:
            raise UnsafePickleError(
                f"{self.source}: refused: the pickle calls {module}.{name}, which a scikit-learn forest does not "
                "need (only RandomForestRegressor, DecisionTreeRegressor, Tree and numpy arrays are read)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused: the pickle asks for a persistent object")


@dataclass(frozen=True)
class TreeArrays:
    """One fitted regression tree as arrays (scikit-learn's node records, single output)."""

    children_left: np.ndarray
    children_right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    max_depth: int


@dataclass(frozen=True)
class ForestState:
    """What a pickled ``RandomForestRegressor`` holds that prediction needs."""

    n_features: int
    trees: tuple[TreeArrays, ...]
    sklearn_version: str
    params: dict[str, Any]


def read_forest(path: str | Path) -> ForestState:
    """The forest pickled in ``path``, read without running it; :class:`UnsafePickleError` when the file names
    anything else than a scikit-learn random forest regressor needs, or holds something else."""
    path = Path(path)
    data = read_bounded(path, MAX_PICKLE_BYTES, "an nn-Meter kernel regressor", UnsafePickleError)
    try:
        top = _ForestUnpickler(data, str(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise UnsafePickleError(f"{path}: not a readable pickled forest ({str(err).splitlines()[0][:200]})") from None
    except RecursionError:
        raise UnsafePickleError(f"{path}: nested too deeply: not a pickled forest") from None
    return _forest_state(top, path)


def _forest_state(top: Any, path: Path) -> ForestState:
    if not isinstance(top, _Forest):
        raise UnsafePickleError(f"{path}: holds a {type(top).__name__.strip('_')}, not a RandomForestRegressor")
    state = top.__dict__.get("state", {})
    n_features = state.get("n_features_in_", state.get("n_features_"))
    estimators = state.get("estimators_")
    if not isinstance(n_features, int) or not isinstance(estimators, list) or not estimators:
        raise UnsafePickleError(f"{path}: a RandomForestRegressor without fitted trees (estimators_, n_features_)")
    trees = tuple(_tree_arrays(e, i, path) for i, e in enumerate(estimators))
    params = {k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, type(None)))}
    return ForestState(n_features, trees, str(state.get("_sklearn_version", "")), params)


def _tree_arrays(estimator: Any, index: int, path: Path) -> TreeArrays:
    where = f"{path}: estimators_[{index}]"
    if not isinstance(estimator, _DecisionTree):
        raise UnsafePickleError(f"{where}: is not a DecisionTreeRegressor")
    tree = estimator.__dict__.get("state", {}).get("tree_")
    if not isinstance(tree, _Tree):
        raise UnsafePickleError(f"{where}: has no fitted tree_")
    nodes, values = tree.state.get("nodes"), tree.state.get("values")
    nodes = nodes.value if isinstance(nodes, _Array) else nodes
    values = values.value if isinstance(values, _Array) else values
    names = ("left_child", "right_child", "feature", "threshold")
    if not isinstance(nodes, np.ndarray) or nodes.dtype.names is None or not set(names) <= set(nodes.dtype.names):
        raise UnsafePickleError(f"{where}: tree_ has no node records ({', '.join(names)})")
    if not isinstance(values, np.ndarray) or values.ndim != 3 or values.shape[0] != len(nodes):
        raise UnsafePickleError(f"{where}: tree_ values are not one per node")
    if values.shape[1] != 1 or values.shape[2] != 1:
        raise UnsafePickleError(f"{where}: a tree of {values.shape[1]} outputs; nn-Meter's trees have one")
    return TreeArrays(
        children_left=nodes["left_child"].astype(np.int32),
        children_right=nodes["right_child"].astype(np.int32),
        feature=nodes["feature"].astype(np.int32),
        threshold=nodes["threshold"].astype(np.float64),
        value=values[:, 0, 0].astype(np.float64),
        max_depth=int(tree.state.get("max_depth", -1)),
    )


def forest_to_ensemble(forest: ForestState, regressor: str = "nn-Meter RandomForestRegressor") -> TreeEnsemble:
    """The forest in nnmeter's tree format: the mean of its trees, summed in scikit-learn's order."""
    offsets = np.concatenate([[0], np.cumsum([len(t.feature) for t in forest.trees])]).astype(np.int64)
    return TreeEnsemble(
        tree_offsets=offsets,
        feature=np.concatenate([t.feature for t in forest.trees]),
        threshold=np.concatenate([t.threshold for t in forest.trees]),
        children_left=np.concatenate([t.children_left for t in forest.trees]),
        children_right=np.concatenate([t.children_right for t in forest.trees]),
        value=np.concatenate([t.value for t in forest.trees]),
        n_features=forest.n_features,
        aggregation="mean",
        regressor=regressor,
    )

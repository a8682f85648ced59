"""nn-Meter predictor folders: their kernels and features, and importing one as an nnmeter predictor.

An nn-Meter predictor folder (``~/.nn_meter/data/predictor/<name>``, or one its builder made) holds
``fusion_rules.json`` and one pickled ``RandomForestRegressor`` per kernel predictor, ``<kernel>.pkl``.
:func:`import_nnmeter` reads the pickles without running them (:mod:`nnmeter.compat.unpickle`), checks each
forest takes the features nn-Meter gives that kernel (:data:`NN_METER_FEATURES`), and writes an nnmeter
predictor folder: the trees as ``kernels/<kernel>.npz``, the rules converted to nnmeter's ``fusion_rules.json``,
nn-Meter's own rules file kept as ``nn_meter/fusion_rules.json``, and a manifest whose ``origin`` says where it
comes from and whose ``detection`` is ``nnmeter-compat`` (its regressors take nn-Meter's features; it predicts
in either of :data:`MODES`, see :mod:`nnmeter.compat.predictor`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nnmeter import ops
from nnmeter.errors import NnmeterError
from nnmeter.predictor.artifact import KernelPayload, write_artifact
from nnmeter.predictor.rules import load_rules
from nnmeter.progress import SILENT, Reporter

from .files import read_json_mapping
from .nnmeter_detection import NnMeterRules
from .unpickle import forest_to_ensemble, read_forest

#: ``nnmeter-compat``: nn-Meter's detection and features, nn-Meter's numbers (what it skips is listed);
#: ``nnmeter``: nnmeter's converters and detection (every op predicted or reported; strict by default), the
#: kernels fed to nn-Meter's trees with nn-Meter's features.
MODE_COMPAT = "nnmeter-compat"
MODE_NNMETER = "nnmeter"
MODES = (MODE_COMPAT, MODE_NNMETER)
#: How an imported predictor's manifest ``origin`` starts.
ORIGIN = "imported from nn-Meter"
#: Where the nn-Meter rules file is kept in an imported predictor.
NN_METER_RULES = "nn_meter/fusion_rules.json"
#: The largest fusion_rules.json read (nn-Meter's are a few KB).
MAX_RULES_BYTES = 1 << 20

_CONV = ("HW", "CIN", "COUT", "KERNEL_SIZE", "STRIDES", "FLOPS/2e6", "PARAMS/1e6")
_MAP = ("HW", "CIN")
#: nn-Meter's kernel predictors and the features it gives each, in order (its ``get_predict_features``).
NN_METER_FEATURES: dict[str, tuple[str, ...]] = {
    "conv-bn-relu": _CONV,
    "dwconv-bn-relu": _CONV,
    "fc": ("CIN", "COUT", "FLOPS/2e6", "FLOPS/1e6"),
    "maxpool": ("HW", "CIN", "COUT", "KERNEL_SIZE", "STRIDES"),
    "avgpool": ("HW", "CIN", "COUT", "KERNEL_SIZE", "STRIDES"),
    "global-avgpool": ("ONE", "CIN"),
    "se": _MAP,
    "hswish": _MAP,
    "channelshuffle": _MAP,
    "split": _MAP,
    "bn": _MAP,
    "relu": _MAP,
    "bnrelu": _MAP,
    "add": ("HW", "CIN1", "CIN2"),
    "addrelu": ("HW", "CIN1", "CIN2"),
    "concat": ("HW", "NUM_INPUTS", "CIN1", "CIN2", "CIN3", "CIN4"),
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def nnmeter_kernels_for(predictor: str) -> tuple[str, ...]:
    """The nnmeter kernel types whose configs nn-Meter's ``predictor`` predicts (nnmeter mode): every conv
    kernel for conv-bn-relu, every depthwise one for dwconv-bn-relu, relu6 for relu, else the same name."""
    if predictor in ("conv-bn-relu", "dwconv-bn-relu"):
        main = predictor.split("-")[0]
        return tuple(k for k, t in ops.KERNELS.items() if t.ops[0] == main)
    if predictor == "relu":
        return (ops.RELU, ops.RELU6)
    return (predictor,) if predictor in ops.KERNELS else ()


def read_nn_meter_rules(path: Path) -> tuple[bytes, NnMeterRules]:
    """The bytes of an nn-Meter ``fusion_rules.json`` and what its detector reads of them."""
    data, parsed = read_json_mapping(path, MAX_RULES_BYTES, "an nn-Meter fusion rules file")
    return data, NnMeterRules.from_json(parsed, str(path))


def import_nnmeter(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str,
    version: str = "1.0",
    overwrite: bool = False,
    reporter: Reporter = SILENT,
) -> Path:
    """Import the nn-Meter predictor folder ``source`` as the nnmeter predictor folder ``out_dir``.

    Every ``<kernel>.pkl`` is read without running it; a pickle that names anything a forest does not need is
    refused (:class:`~nnmeter.compat.unpickle.UnsafePickleError`) before anything is written. A pickle whose name
    is not one of nn-Meter's kernel predictors is never used by nn-Meter: it is left out with a note."""
    folder = Path(source).expanduser()
    if not _SAFE_NAME.fullmatch(name):
        raise NnmeterError(f"predictor name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    if not folder.is_dir():
        raise NnmeterError(f"{folder}: no such nn-Meter predictor folder")
    rules_bytes, _ = read_nn_meter_rules(folder / "fusion_rules.json")
    pickles = sorted(p for p in folder.glob("*.pkl") if p.is_file())
    if not pickles:
        raise NnmeterError(f"{folder}: no kernel predictors (*.pkl)", "an nn-Meter predictor folder has one per kernel")
    kernels: dict[str, KernelPayload] = {}
    features: dict[str, tuple[str, ...]] = {}
    with reporter.task(f"importing {folder.name}", len(pickles)) as task:
        for done, pkl in enumerate(pickles, 1):
            kernel = pkl.stem
            forest = read_forest(pkl)
            task.update(done)
            if kernel not in NN_METER_FEATURES:
                reporter.note(
                    f"{pkl.name}: left out: nn-Meter has no kernel {kernel!r} (it has {', '.join(NN_METER_FEATURES)})",
                    warning=True,
                )
                continue
            expected = NN_METER_FEATURES[kernel]
            if forest.n_features != len(expected):
                raise NnmeterError(
                    f"{pkl}: the forest takes {forest.n_features} features; nn-Meter gives {kernel} "
                    f"{len(expected)} ({', '.join(expected)})"
                )
            ensemble = forest_to_ensemble(
                forest, f"nn-Meter RandomForestRegressor (scikit-learn {forest.sklearn_version or '?'})"
            )
            kernels[kernel] = KernelPayload(ensemble, samples=0)
            features[kernel] = expected
    if not kernels:
        raise NnmeterError(
            f"{folder}: none of its pickles is an nn-Meter kernel predictor ({', '.join(NN_METER_FEATURES)})"
        )
    rules = load_rules(folder / "fusion_rules.json")
    return write_artifact(
        out_dir,
        name=name,
        version=version,
        device={"id": name, "description": f"nn-Meter predictor {folder.name}"},
        backend="nn-meter",
        protocol={},
        rules=rules,
        kernels=kernels,
        description=f"imported from the nn-Meter predictor folder {folder}",
        overwrite=overwrite,
        origin=f"{ORIGIN} ({folder.name})",
        detection=MODE_COMPAT,
        kernel_features=features,
        extra_files={NN_METER_RULES: rules_bytes},
    )

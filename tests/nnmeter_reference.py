"""nn-Meter's own code, run in a virtual environment of its own, to compare imported predictors with.

:func:`reference_python` (imported by tests/test_compat_nnmeter.py and bench/nnmeter_import.py) makes that
environment once (``.venv-nnmeter-ref/nn-meter-VERSION`` in the repository, ignored by git); this file is then run
with its Python:

    python nnmeter_reference.py build FOLDER RULES.json SEED     # a predictor folder: forests pickled as nn-Meter does
    python nnmeter_reference.py predict FOLDER MODEL.json...      # JSON: per model, nn-Meter's total and kernels
    python nnmeter_reference.py speed FOLDER SECONDS MODEL.json...# JSON: models per second of nn-Meter's predict
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

#: The nn-Meter release compared with (the last one).
NN_METER_VERSION = "2.0"
REF_VENV = Path(__file__).resolve().parent.parent / ".venv-nnmeter-ref" / f"nn-meter-{NN_METER_VERSION}"

#: Fusion rules files of the test predictors, in nn-Meter's format: what its rule tester writes for a mobile CPU,
#: and one with MON 1, a three-op chain and an undecided rule.
RULES = {
    "mon0": {
        "BF_conv_bn": {"obey": True},
        "BF_conv_relu": {"obey": True},
        "BF_bn_relu": {"obey": True},
        "BF_dwconv_bn": {"obey": True},
        "BF_dwconv_relu": {"obey": True},
        "BF_add_relu": {"obey": True},
        "BF_conv_hswish": {"obey": True},
        "BF_fc_relu": {"obey": True},
        "BF_dwconv_hswish": {"obey": False},
        "MON": {"obey": 0},
    },
    "mon1-chain": {
        "BF_conv_bn_relu": {"obey": True},
        "BF_conv_bn": {"obey": True},
        "BF_dwconv_bn": {"obey": True},
        "BF_bn_relu": {"obey": False},
        "BF_conv_add": {"obey": True},
        "BF_add_relu": {"obey": None},
        "MON": {"obey": 1},
    },
}
#: nn-Meter's kernel predictors and their feature counts (nn_meter.predictor.prediction.extract_feature).
FEATURES = {
    "conv-bn-relu": 7,
    "dwconv-bn-relu": 7,
    "fc": 4,
    "maxpool": 5,
    "avgpool": 5,
    "global-avgpool": 2,
    "se": 2,
    "hswish": 2,
    "channelshuffle": 2,
    "split": 2,
    "bn": 2,
    "relu": 2,
    "bnrelu": 2,
    "add": 3,
    "addrelu": 3,
    "concat": 6,
}


def reference_python() -> Path:
    """The Python of a virtual environment with nn-Meter from PyPI, made on first use and kept."""
    python = REF_VENV / "bin" / "python"
    marker = REF_VENV / ".installed"
    if not marker.is_file():
        shutil.rmtree(REF_VENV, ignore_errors=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(REF_VENV)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"nn-meter=={NN_METER_VERSION}"], check=True, timeout=900
        )
        marker.write_text(NN_METER_VERSION)
    return python


def run(python: Path, *args: object) -> str:
    """The output of this file run with ``python`` and ``args``."""
    done = subprocess.run(
        [str(python), __file__, *map(str, args)], check=True, capture_output=True, text=True, timeout=600
    )
    return done.stdout


def build(folder: Path, rules: Path, seed: int) -> None:
    """Small forests with nn-Meter's hyper-parameters (fewer trees) fitted on synthetic kernel latencies."""
    import numpy as np
    from nn_meter.builder.kernel_predictor_builder.predictor_builder.predictor_lib import init_predictor

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rules, folder / "fusion_rules.json")
    rng = np.random.default_rng(seed)
    for kernel, width in FEATURES.items():
        X = rng.uniform(0, 256, size=(160, width))
        X[:, 0] = rng.choice([1, 7, 14, 28, 56, 112, 224], size=160)
        y = 0.01 + 1e-3 * X.sum(axis=1) * (1 + rng.uniform(0, 0.2, size=160))
        model = init_predictor(kernel, "tflite_cpu")
        params = model.get_params()
        max_features = params["max_features"]
        if not isinstance(max_features, (int, float)) or max_features > width:
            max_features = 1.0
        model.set_params(n_estimators=6, max_features=max_features, n_jobs=None, oob_score=False)
        model.fit(X, y)
        with open(folder / f"{kernel}.pkl", "wb") as fp:  # as nn-Meter's build_predictor saves it
            pickle.dump(model, fp)


def _predictor(folder: Path):
    from nn_meter.predictor.nn_meter_predictor import nnMeterPredictor
    from nn_meter.predictor.utils import loading_customized_predictor

    info = {"name": folder.name, "package_location": str(folder), "kernel_predictors": list(FEATURES)}
    predictors, rules = loading_customized_predictor(info)
    return nnMeterPredictor(predictors, rules)


def predict(folder: Path, models: list[Path]) -> dict:
    from nn_meter.predictor.prediction.extract_feature import get_predict_features
    from nn_meter.predictor.prediction.predict_by_kernel import merge_conv_kernels
    from nn_meter.predictor.prediction.utils import get_kernel_name

    predictor = _predictor(folder)
    out = {}
    for path in models:
        graph = json.loads(path.read_text())
        total = predictor.predict(graph, model_type="nnmeter-ir")
        features = get_predict_features(predictor.kd.get_kernels())
        kernels = []
        for layer in features.values():
            ((op, values),) = layer.items()
            name = get_kernel_name(merge_conv_kernels(op))
            if name in predictor.kernel_predictors:
                ms = float(predictor.kernel_predictors[name].predict([values])[0])
                kernels.append([name, [float(v) for v in values], ms])
        out[path.name] = {"total": float(total), "kernels": kernels}
    return out


def speed(folder: Path, seconds: float, models: list[Path]) -> dict:
    predictor = _predictor(folder)
    graphs = [json.loads(p.read_text()) for p in models]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for graph in graphs:
            predictor.predict(graph, model_type="nnmeter-ir")
            done += 1
    return {"models_per_s": done / (time.perf_counter() - start), "models": done}


if __name__ == "__main__":
    import logging

    logging.disable(logging.CRITICAL)
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "build":
        build(folder, Path(sys.argv[3]), int(sys.argv[4]))
    elif command == "predict":
        print(json.dumps(predict(folder, [Path(p) for p in sys.argv[3:]])))
    else:
        print(json.dumps(speed(folder, float(sys.argv[3]), [Path(p) for p in sys.argv[4:]])))

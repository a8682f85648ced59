"""Prediction speed of a predictor imported from nn-Meter against nn-Meter itself, on the same models (prints
figures; no assertions).

    .venv/bin/python bench/nnmeter_import.py [--folder NN_METER_PREDICTOR] [--seconds 20] [MODEL.json ...]

Without ``--folder``, nn-Meter's own code builds a predictor folder (small forests, as the tests do). nn-Meter runs
in its own virtual environment (``.venv-nnmeter-ref``, made on first use, see tests/nnmeter_reference.py); both
sides take parsed nn-Meter IR dicts and predict them one at a time, warm, for ``--seconds``. Models: nn-Meter's
``mobilenetv3small_0.json`` unless some are given. Prints models/s of nn-Meter's ``predict``, of the imported
predictor in the ``nnmeter-compat`` mode (nn-Meter's numbers) and in the ``nnmeter`` mode, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import nnmeter_reference  # noqa: E402  (nn-Meter's side: tests/nnmeter_reference.py)

from nnmeter.compat.nnmeter_format import import_nnmeter  # noqa: E402
from nnmeter.compat.predictor import load_compat  # noqa: E402

DEFAULT_MODEL = Path("/work/shared/testdata/nnmeter-ir/mobilenetv3small_0.json")


def _rate(predict, graphs: list, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for graph in graphs:
            predict(graph)
            done += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, help="nn-Meter IR .json files")
    parser.add_argument("--folder", type=Path, help="an nn-Meter predictor folder (default: build a small one)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time spent predicting, per side")
    args = parser.parse_args()
    models = args.models or [DEFAULT_MODEL]
    python = nnmeter_reference.reference_python()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            (Path(tmp) / "rules.json").write_text(json.dumps(nnmeter_reference.RULES["mon0"]))
            folder = Path(tmp) / "nn-meter-predictor"
            nnmeter_reference.run(python, "build", folder, Path(tmp) / "rules.json", 0)
        theirs = json.loads(nnmeter_reference.run(python, "speed", folder, args.seconds, *models))["models_per_s"]
        imported = import_nnmeter(folder, Path(tmp) / "imported", name="bench")
        graphs = [json.loads(p.read_text()) for p in models]
        compat = load_compat(imported)
        ours = _rate(compat.predict, graphs, args.seconds)
        engine = load_compat(imported, mode="nnmeter")
        ours_nnmeter = _rate(lambda g: engine.predict(g, strict=False), graphs, args.seconds)
    print(f"{time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()}")
    print(f"models: {', '.join(p.name for p in models)}; predictor: {folder.name}; {args.seconds:g} s per side")
    print(f"nn-Meter {nnmeter_reference.NN_METER_VERSION} predict:          {theirs:8.1f} models/s")
    print(f"imported, nnmeter-compat mode:    {ours:8.1f} models/s  ({ours / theirs:.1f}x nn-Meter)")
    print(f"imported, nnmeter mode:           {ours_nnmeter:8.1f} models/s  ({ours_nnmeter / theirs:.1f}x nn-Meter)")


if __name__ == "__main__":
    main()

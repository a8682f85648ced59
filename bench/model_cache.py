"""What the user model cache saves a second campaign: the quickstart's models made in a fresh workspace with an
empty cache, then in another fresh workspace with the cache the first one filled.

The models are those a quickstart campaign converts besides its rule cases: every kernel's prior configs
(``-n`` per kernel of the quickstart's list), the evaluation models and the package step's calibration models
(Keras models converted by TensorFlow). Each pass is ``MeasuringSession.prepare`` on ``tflite-local``, timed
from the call to its return (the worker pool included).

    .venv/bin/python bench/model_cache.py -n 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import resources
from pathlib import Path

import yaml

from nnmeter.backends import create_backend
from nnmeter.builder import Workspace
from nnmeter.builder.packaging import CALIBRATION_PER_FAMILY, CALIBRATION_SEED, CALIBRATION_SETS
from nnmeter.evaluation import build_zoo_model, evaluation_set
from nnmeter.kernel_gen import sample_configs
from nnmeter.measurement import ModelSpec, kernel_spec
from nnmeter.measurement.model_cache import ModelCache


def specs(per_kernel: int) -> tuple[list[ModelSpec], list[ModelSpec]]:
    """(kernel models, whole models) of the quickstart campaign."""
    campaign = yaml.safe_load(resources.files("nnmeter.configs").joinpath("quickstart.yaml").read_text())
    kernels = [
        kernel_spec(k, config)
        for k in campaign["kernels"]["kernels"]
        for config in sample_configs(k, per_kernel, "prior", seed=0)
    ]
    ev = campaign["evaluation"]
    zoo = evaluation_set(ev["families"], ev["models_per_family"], ev["resolutions"])
    zoo += [
        m
        for families, resolutions in CALIBRATION_SETS
        for m in evaluation_set(families, CALIBRATION_PER_FAMILY, resolutions, CALIBRATION_SEED)
    ]
    whole = [
        ModelSpec("evaluation", m.name, {"family": m.family, **m.params}, build_zoo_model, (m.family, m.name, m.params))
        for m in zoo
    ]
    return kernels, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20, help="prior configs per kernel (default 20)")
    args = parser.parse_args()
    kernels, whole = specs(args.n)
    with tempfile.TemporaryDirectory() as tmp, create_backend("tflite-local") as backend:
        cache = ModelCache(Path(tmp) / "cache")
        for name in ("empty cache", "warm cache"):
            ws = Workspace.create(Path(tmp) / name.replace(" ", "-"), "tflite-local")
            session = ws.session(backend)
            session.cache = cache
            times = []
            for group in (kernels, whole):
                start = time.perf_counter()
                prepared = session.prepare(group, progress=lambda *_: None)
                times.append(time.perf_counter() - start)
                failed = sum(not p.ok for p in prepared)
                assert failed < len(group), "every model failed"
            ws.close()
            print(
                f"{name:12s} {len(kernels)} kernel models {times[0]:6.1f} s, "
                f"{len(whole)} evaluation and calibration models {times[1]:6.1f} s",
                flush=True,
            )
        size = sum(p.stat().st_size for p in cache.root.rglob("*") if p.is_file())
        print(f"cache: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

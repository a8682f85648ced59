"""Kernel models generated + converted per minute, through the path campaigns use.

For each kernel, worker count and writer: a fresh workspace, the ``tflite-local`` backend,
``MeasuringSession.prepare`` on ``-n`` prior-sampled configs (the .tflite written directly
by ``kernel_gen.tflite_writer``, or built in Keras and converted by TensorFlow; recorded in
the store). The worker pool is started first with one warm-up
model per worker (a process pool starts its workers on demand), so the rate is the
steady state; the start-up is printed apart.

    .venv/bin/python bench/generation.py -n 40            # the full figure (both writers)
    .venv/bin/python bench/generation.py -n 6 --workers 1  # a quick look

The ``tflite-local`` backend pins conversion workers to the cores it does not
measure on: on a 2-core machine both workers share one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from nnmeter.backends import create_backend
from nnmeter.builder import Workspace
from nnmeter.kernel_gen import sample_configs
from nnmeter.measurement import kernel_spec

KERNELS = ("conv-bn-relu", "dwconv-bn-relu", "add")


def measure(kernel: str, n: int, workers: int, seed: int, direct: bool) -> tuple[float, float, int]:
    """(pool start-up seconds, models per minute, failures) for ``n`` fresh models of ``kernel``, written directly
    or (``direct`` False) built in Keras and converted by TensorFlow."""
    configs = sample_configs(kernel, n + workers, "prior", seed=seed)
    specs = [
        kernel_spec(kernel, c) if direct else dataclasses.replace(kernel_spec(kernel, c), write=None) for c in configs
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.create(Path(tmp) / "ws", "tflite-local")
        with create_backend("tflite-local", {"convert_workers": workers}) as backend:
            session = ws.session(backend, workers=workers)
            t0 = time.perf_counter()
            session.prepare(specs[:workers])
            startup = time.perf_counter() - t0
            t0 = time.perf_counter()
            prepared = session.prepare(specs[workers:])
            seconds = time.perf_counter() - t0
        ws.close()
    return startup, len(prepared) / seconds * 60, sum(not p.ok for p in prepared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="models per kernel and worker count (default 40)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated kernels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writer", choices=("direct", "tensorflow", "both"), default="both")
    args = parser.parse_args()
    writers = ("direct", "tensorflow") if args.writer == "both" else (args.writer,)
    print(f"{'kernel':16} {'writer':>10} {'workers':>7} {'models':>6} {'start s':>8} {'models/min':>10} {'failed':>6}")
    rates: dict[str, list[float]] = {w: [] for w in writers}
    for kernel in args.kernels.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            for writer in writers:
                startup, rate, failed = measure(kernel, args.n, workers, args.seed, writer == "direct")
                rates[writer].append(rate)
                print(
                    f"{kernel:16} {writer:>10} {workers:>7} {args.n:>6} {startup:>8.1f} {rate:>10.1f} {failed:>6}",
                    flush=True,
                )
    if len(writers) == 2:
        ratios = [d / t for d, t in zip(rates["direct"], rates["tensorflow"])]
        print(f"direct writer / TensorFlow: {min(ratios):.0f}x to {max(ratios):.0f}x (target >= 20x)")


if __name__ == "__main__":
    main()

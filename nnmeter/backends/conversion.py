"""Parallel conversion of models in worker processes.

Workers are spawn-context processes (TensorFlow does not survive fork) pinned to
the cores they are given. Conversion and measurement take turns (a batch is
converted, then measured; see docs/measurement.md), so a local backend gives them
every core, the measuring one included: the workers are idle while it measures.
They stay alive across batches: importing TensorFlow costs seconds. A worker
that dies (TensorFlow can abort on a bad graph) takes its pool down with it; the
jobs that were in flight are retried one at a time in a fresh single-worker
pool, so only the job that kills a worker again fails. A worker whose parent is gone
(``kill -9`` of ``nnmeter-build``) exits by itself: it would otherwise wait forever
on its queue, holding TensorFlow's ~2 GB.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Sequence

from nnmeter.backends import converters
from nnmeter.backends.base import ConversionJob, ConversionResult, ModelFile, ProgressCallback
from nnmeter.errors import NnmeterError


def conversion_cores() -> list[int]:
    """The cores conversions run on: all this process may use (conversion and measurement take turns)."""
    return sorted(os.sched_getaffinity(0))


class ConversionPool:
    """Runs :class:`ConversionJob` batches into one model format on ``workers`` pinned processes."""

    def __init__(self, fmt: str, workers: int, cores: Sequence[int]) -> None:
        if fmt not in converters.SUFFIXES:
            raise ValueError(f"unknown model format {fmt!r}; known: {', '.join(converters.SUFFIXES)}")
        self.fmt = fmt
        self.workers = max(1, workers)
        self.cores = sorted(cores)
        self._executor: ProcessPoolExecutor | None = None

    def run(self, jobs: Sequence[ConversionJob], progress: ProgressCallback | None = None) -> list[ConversionResult]:
        """One result per job, in order. Outputs that already exist are not rebuilt."""
        results: dict[int, ConversionResult] = {}
        pending: list[int] = []
        for i, job in enumerate(jobs):
            out = converters.output_path(job.out_dir, job.id, self.fmt)
            if out.exists():
                results[i] = _existing(job, out, self.fmt)
            elif job.build is None and job.source is None:
                results[i] = ConversionResult(job.id, None, "job has neither a build function nor a source file")
            else:
                pending.append(i)
        total = len(jobs)

        def report() -> None:
            if progress:
                progress(len(results), total)

        report()
        crashed: list[int] = []
        if pending:
            futures: dict[Future, int] = {self._pool().submit(_convert_job, jobs[i], self.fmt): i for i in pending}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except BrokenProcessPool:
                    crashed.append(i)
                    continue
                report()
        if crashed:
            self.close()
            for i in sorted(crashed):  # one at a time, so a job that kills its worker takes only itself down
                try:
                    results[i] = self._pool(workers=1).submit(_convert_job, jobs[i], self.fmt).result()
                except BrokenProcessPool:
                    self.close()
                    results[i] = ConversionResult(
                        jobs[i].id,
                        None,
                        "the conversion worker process died (TensorFlow or the converter crashed on this model)",
                    )
                report()
            self.close()
        return [results[i] for i in range(total)]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self, workers: int | None = None) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=workers or self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.cores, os.getpid()),
            )
        return self._executor


def _init_worker(cores: list[int], parent: int) -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if cores:
        os.sched_setaffinity(0, cores)
    threading.Thread(target=_exit_without_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_without_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _convert_job(job: ConversionJob, fmt: str) -> ConversionResult:
    """Build or read the job's model and write it in ``fmt``; any failure becomes the result's error."""
    t0 = time.perf_counter()
    out = converters.output_path(job.out_dir, job.id, fmt)
    try:
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        if job.source is not None:
            converters.convert_file(Path(job.source), fmt, out)
        elif job.build is not None:
            converters.convert_keras(job.build(*job.build_args), fmt, out)
        else:
            raise ValueError(f"conversion job {job.id} has neither a build function nor a source file")
        model = ModelFile(job.id, out, fmt, converters.input_shapes(out, fmt))
    except NnmeterError as err:
        return ConversionResult(job.id, None, err.message, time.perf_counter() - t0)
    except Exception as err:  # a failed conversion is data: report it with where it came from
        where = traceback.extract_tb(err.__traceback__)[-1]
        message = " ".join(str(err).split())[:500]
        return ConversionResult(
            job.id,
            None,
            f"{type(err).__name__}: {message} ({Path(where.filename).name}:{where.lineno})",
            time.perf_counter() - t0,
        )
    return ConversionResult(job.id, model, "", time.perf_counter() - t0)


def _existing(job: ConversionJob, out: Path, fmt: str) -> ConversionResult:
    try:
        return ConversionResult(job.id, ModelFile(job.id, out, fmt, converters.input_shapes(out, fmt)))
    except Exception as err:  # a damaged file from an older run: say so rather than measure garbage
        return ConversionResult(
            job.id,
            None,
            f"{out} exists but cannot be read ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}); delete it to rebuild",
        )

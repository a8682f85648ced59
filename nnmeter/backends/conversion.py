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

A job that runs longer than the pool's ``timeout_s`` (a converter that hangs) becomes a
failed result: its worker is killed, the pool is replaced, and the jobs that were in
flight with it run again in the new one. Each worker reports when it starts a job, so
a job's time counts from its start, not from when it was queued.

Interrupted (Ctrl-C, SIGTERM), the parent stops its workers with SIGTERM; a worker
aborts its job, removes the temporary file it was writing and exits. Ctrl-C, which
reaches the whole process group, is left to the parent.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence

from nnmeter.backends import converters
from nnmeter.backends.base import ConversionJob, ConversionResult, ModelFile, ProgressCallback
from nnmeter.errors import NnmeterError


def conversion_cores() -> list[int]:
    """The cores conversions run on: all this process may use (conversion and measurement take turns)."""
    return sorted(os.sched_getaffinity(0))


#: Seconds a conversion job may take before it is a failed result (the local backends' ``convert_timeout_s``).
DEFAULT_TIMEOUT_S = 600.0
#: Seconds interrupted workers get to clean up and exit before they are killed.
_STOP_GRACE_S = 5.0


class ConversionPool:
    """Runs :class:`ConversionJob` batches into one model format on ``workers`` pinned processes; a job that
    takes longer than ``timeout_s`` fails and its worker is replaced."""

    def __init__(self, fmt: str, workers: int, cores: Sequence[int], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if fmt not in converters.SUFFIXES:
            raise ValueError(f"unknown model format {fmt!r}; known: {', '.join(converters.SUFFIXES)}")
        if timeout_s <= 0:
            raise ValueError(f"conversion timeout {timeout_s!r}: must be positive")
        self.fmt = fmt
        self.workers = max(1, workers)
        self.cores = sorted(cores)
        self.timeout_s = float(timeout_s)
        self._executor: ProcessPoolExecutor | None = None
        self._starts: Any = None  # the executor's queue of (token, pid, start time) its workers post
        self._round = 0

    def run(self, jobs: Sequence[ConversionJob], progress: ProgressCallback | None = None) -> list[ConversionResult]:
        """One result per job, in order. Outputs that already exist are not rebuilt."""
        results: dict[int, ConversionResult] = {}
        pending: list[int] = []
        for i, job in enumerate(jobs):
            out = converters.output_path(job.out_dir, job.id, self.fmt)
            if out.exists():
                results[i] = _existing(job, out, self.fmt)
            elif job.build is None and job.source is None and job.write is None:
                results[i] = ConversionResult(job.id, None, "job has neither a build function nor a source file")
            else:
                pending.append(i)
        total = len(jobs)

        def report() -> None:
            if progress:
                progress(len(results), total)

        report()
        while pending:
            broken, killed = self._run_round(jobs, pending, results, report)
            if broken or killed:
                self.close()  # a pool that lost a worker takes no more jobs
            if not broken:
                break
            if killed:  # jobs in flight with a job that timed out: innocent, again in a fresh pool
                pending = broken
                continue
            for i in broken:  # a worker died: one at a time, so a job that kills its worker takes only itself down
                died, killed = self._run_round(jobs, [i], results, report, workers=1)
                if died:
                    results[i] = ConversionResult(
                        jobs[i].id,
                        None,
                        "the conversion worker process died (TensorFlow or the converter crashed on this model)",
                    )
                    report()
                if died or killed:
                    self.close()
            self.close()
            break
        return [results[i] for i in range(total)]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._close_starts()

    def _run_round(
        self,
        jobs: Sequence[ConversionJob],
        indices: Sequence[int],
        results: dict[int, ConversionResult],
        report: Callable[[], None],
        workers: int | None = None,
    ) -> tuple[list[int], bool]:
        """Run the jobs at ``indices`` in the pool, their results into ``results``; the jobs whose worker died
        (no result), and whether this round killed a worker over a timeout."""
        self._round += 1
        round_id = self._round
        pool = self._pool(workers)
        futures: dict[Future, int] = {pool.submit(_convert_job, jobs[i], self.fmt, (round_id, i)): i for i in indices}
        started: dict[int, tuple[int, float]] = {}  # job index -> (worker pid, when it started the job)
        broken: list[int] = []
        killed = False
        waiting = set(futures)
        poll = min(1.0, max(0.05, self.timeout_s / 20))
        try:
            while waiting:
                done, waiting = wait(waiting, timeout=poll, return_when=FIRST_COMPLETED)
                for future in done:
                    i = futures[future]
                    if i in results:  # it timed out: its worker was killed
                        continue
                    try:
                        results[i] = future.result()
                    except BrokenProcessPool:
                        broken.append(i)
                        continue
                    report()
                self._read_starts(round_id, started)
                now = time.monotonic()
                for future in waiting:
                    i = futures[future]
                    if i in started and i not in results and now - started[i][1] > self.timeout_s:
                        pid = started[i][0]
                        try:
                            os.kill(pid, signal.SIGKILL)  # hung, maybe in C code: SIGTERM would not reach it
                        except ProcessLookupError:
                            pass
                        killed = True
                        results[i] = ConversionResult(
                            jobs[i].id,
                            None,
                            f"the conversion did not finish within {self.timeout_s:g} s "
                            "(backend.convert_timeout_s); its worker process was killed and replaced",
                            now - started[i][1],
                        )
                        report()
        except BaseException:  # interrupted: stop the workers now rather than wait for their jobs
            self._stop_workers()
            raise
        return [i for i in broken if i not in results], killed

    def _read_starts(self, round_id: int, started: dict[int, tuple[int, float]]) -> None:
        while True:
            try:
                (job_round, i), pid, t0 = self._starts.get_nowait()
            except (queue.Empty, OSError, EOFError, ValueError):
                return
            if job_round == round_id:
                started[i] = (pid, t0)

    def _stop_workers(self) -> None:
        """SIGTERM every worker (each removes the temporary file it was writing and exits), kill the ones still
        there after a grace period, and drop the pool."""
        executor = self._executor
        if executor is None:
            return
        processes = list((executor._processes or {}).values())
        for p in processes:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + _STOP_GRACE_S
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._close_starts()

    def _close_starts(self) -> None:
        if self._starts is not None:
            self._starts.close()
            self._starts = None

    def _pool(self, workers: int | None = None) -> ProcessPoolExecutor:
        if self._executor is not None and getattr(self._executor, "_broken", False):
            self.close()  # a worker died between batches (killed from outside): a new pool
        if self._executor is None:
            context = multiprocessing.get_context("spawn")
            self._starts = context.Queue()  # one per executor: a killed worker takes no later pool's queue down
            self._executor = ProcessPoolExecutor(
                max_workers=workers or self.workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(self.cores, os.getpid(), self._starts),
            )
        return self._executor


# --- in the worker processes ------------------------------------------------------------------------

_STARTS: Any = None  # the pool's queue: (token, pid, start) when a job starts
_IN_JOB = False


class _Terminated(BaseException):
    """SIGTERM during a job: unwinds it (its temporary files are removed on the way), then the worker exits."""


def _init_worker(cores: list[int], parent: int, starts: Any = None) -> None:
    global _STARTS
    _STARTS = starts
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the parent stops the workers
    signal.signal(signal.SIGTERM, _on_sigterm)
    if cores:
        os.sched_setaffinity(0, cores)
    threading.Thread(target=_exit_without_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _on_sigterm(signum: int, frame: Any) -> None:
    if _IN_JOB:
        raise _Terminated()
    os._exit(128 + signum)  # idle: nothing to clean up


def _exit_without_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _convert_job(job: ConversionJob, fmt: str, token: tuple[int, int] | None = None) -> ConversionResult:
    """:func:`_convert`, told to the pool (``token``) when it starts; a SIGTERM ends the worker once the job's
    temporary files are removed."""
    global _IN_JOB
    if _STARTS is not None and token is not None:
        _STARTS.put((token, os.getpid(), time.monotonic()))
    _IN_JOB = True
    try:
        return _convert(job, fmt)
    except _Terminated:
        os._exit(128 + signal.SIGTERM)
    finally:
        _IN_JOB = False


def _convert(job: ConversionJob, fmt: str) -> ConversionResult:
    """Build or read the job's model and write it in ``fmt``; any failure becomes the result's error."""
    t0 = time.perf_counter()
    out = converters.output_path(job.out_dir, job.id, fmt)
    with_tensorflow = False
    try:
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        written = job.write(*job.build_args) if job.write is not None and fmt in converters.FROM_TFLITE else None
        if job.source is not None:
            converters.convert_file(Path(job.source), fmt, out)
        elif written is not None:
            converters.convert_tflite_bytes(written, fmt, out)
        elif job.build is not None:
            with_tensorflow = job.write is not None
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
    return ConversionResult(job.id, model, "", time.perf_counter() - t0, with_tensorflow)


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

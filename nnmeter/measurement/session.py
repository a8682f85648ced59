"""A measuring session: one store, one connected backend, one protocol; the one path from model specs to stored
measurements that the rule tester, the kernel training and the evaluation all use.

* :meth:`MeasuringSession.prepare` builds and converts generated models (specs), reusing a model whose store
  record still has its file; conversions run as one batch on the backend's worker processes, never while it
  measures, and a failed conversion is a result with its error, not an exception.
* :meth:`MeasuringSession.convert` gives stored models (a user's .keras, ...) a file in the backend's format.
* :meth:`MeasuringSession.measure` skips what is already measured under the same device, backend and protocol,
  measures the rest in batches of ``protocol.batch_size`` with the drift anchors in every batch
  (``protocol.anchors``), and stores each batch the moment it returns, so a killed run loses at most the batch
  in flight.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnmeter.backends.base import (
    LATENCY_STATUSES,
    Backend,
    ConversionJob,
    ConversionResult,
    MeasureResult,
    MeasureStatus,
    ModelFile,
    ProgressCallback,
)
from nnmeter.backends.converters import output_path
from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.kernel_gen.cache import model_dir
from nnmeter.measurement.dispatch import BatchDispatcher, BatchDone, BatchJob
from nnmeter.measurement.model_cache import ModelCache
from nnmeter.measurement.models import ModelSpec, PreparedModel, anchor_specs, spec_model_id
from nnmeter.measurement.store import MeasurementRecord, ModelRecord, Store
from nnmeter.progress import SILENT, Reporter

#: Formats a model can be converted from, most faithful first.
SOURCE_FORMATS = ("keras", "savedmodel", "onnx", "tflite")


@dataclass
class MeasuringSession:
    """Measure models on ``backend`` (connected) with ``protocol``, keeping models and measurements in ``store``.

    Model files live under ``root`` (``root/models/...``); the store records their paths relative to it.
    ``workers`` None leaves the number of conversion processes to the backend's config. Long steps report to
    ``reporter`` unless a call passes its own ``progress`` callback. With a ``dispatcher`` (a lab of units,
    :mod:`nnmeter.lab`) the backend only converts, and the batches are measured by the dispatcher's units at
    once, each stored as it arrives with the unit that measured it. ``cache`` (by default the user's model cache,
    :mod:`nnmeter.measurement.model_cache`; None: none) gives :meth:`prepare` the files other workspaces made.
    """

    store: Store
    root: Path
    backend: Backend
    protocol: MeasurementProtocol
    workers: int | None = None
    reporter: Reporter = SILENT
    dispatcher: BatchDispatcher | None = None
    cache: ModelCache | None = field(default_factory=ModelCache.from_env)

    @property
    def device(self) -> str:
        info = self.backend.device_info
        if info is None:
            raise RuntimeError(f"backend {self.backend.name} is not connected")
        return info.device

    # --- models --------------------------------------------------------------------

    def prepare(
        self,
        specs: Sequence[ModelSpec],
        progress: ProgressCallback | None = None,
        description: str = "building and converting models",
    ) -> list[PreparedModel]:
        """One :class:`PreparedModel` per spec, in order: reused from the store, taken from the model cache (a
        file another workspace made, or this one deleted once measured), or built and converted now."""
        root = Path(self.root)
        fmt = self.backend.model_format
        ids = [spec_model_id(self.backend, s) for s in specs]
        done: dict[str, PreparedModel] = {}
        jobs: dict[str, ConversionJob] = {}
        for spec, mid in zip(specs, ids):
            if mid in done or mid in jobs:
                continue
            existing = _existing(root, self.store.get_model(mid), fmt)
            if existing is not None:
                done[mid] = PreparedModel(spec, mid, existing[0], existing[1], reused=True)
            else:
                jobs[mid] = ConversionJob(
                    mid,
                    model_dir(root / "models", spec.kind, spec.name),
                    build=spec.build,
                    build_args=tuple(spec.build_args),
                    write=spec.write,
                )
        cached = self._from_cache(jobs, fmt)
        if jobs or cached:
            with self._task(progress, description, len(done) + len(jobs) + len(cached)) as update:
                start, total = len(done) + len(cached), len(done) + len(cached) + len(jobs)
                update(start, total)
                results = (
                    self.backend.convert(
                        list(jobs.values()),
                        self.workers,  # type: ignore[arg-type]
                        lambda n, _t: update(start + n, total),
                    )
                    if jobs
                    else []
                )
            if self.cache is not None:
                for result in results:
                    if result.model is not None:
                        self.cache.store(result.job_id, fmt, Path(result.model.path))
            results = cached + list(results)
            spec_of = {mid: spec for spec, mid in zip(specs, ids)}
            by_tensorflow = [spec_of[r.job_id] for r in results if r.built_with_tensorflow]
            if by_tensorflow:
                first = by_tensorflow[0]
                self.reporter.note(
                    f"{len(by_tensorflow)} of {len(results)} models built with TensorFlow: the direct .tflite "
                    f"writer does not write them (the first: {first.name} {dict(first.config)})"
                )
            converted = []
            for result in results:
                spec = spec_of[result.job_id]
                if result.model is None:
                    done[result.job_id] = PreparedModel(
                        spec, result.job_id, None, None, result.error or "conversion failed"
                    )
                    continue
                rel = Path(result.model.path).resolve().relative_to(root.resolve()).as_posix()
                converted.append(
                    (
                        spec,
                        result.model,
                        ModelRecord(result.job_id, spec.kind, spec.name, dict(spec.config), files={fmt: rel}),
                    )
                )
            stored = self.store.add_models([r for _, _, r in converted])
            for (spec, file, _), record in zip(converted, stored):
                done[record.id] = PreparedModel(spec, record.id, record, file)
        return [_for_spec(done[mid], spec) for spec, mid in zip(specs, ids)]

    def _from_cache(self, jobs: dict[str, ConversionJob], fmt: str) -> list[ConversionResult]:
        """The jobs whose file the model cache holds, put in place (and taken out of ``jobs``) as results."""
        if self.cache is None or self.cache.path("", fmt) is None:
            return []
        hits = []
        for mid, job in list(jobs.items()):
            dest = output_path(job.out_dir, mid, fmt)
            if self.cache.fetch(mid, fmt, dest):
                hits.append(ConversionResult(mid, ModelFile(mid, dest, fmt)))
                del jobs[mid]
        if hits:
            self.reporter.note(
                f"{len(hits)} of {len(hits) + len(jobs)} models taken from the model cache ({self.cache.root})"
            )
        return hits

    def convert(
        self,
        records: Sequence[ModelRecord],
        progress: ProgressCallback | None = None,
    ) -> tuple[list[ModelRecord], list[MeasurementRecord]]:
        """Give every model of ``records`` a file the backend measures, converting from its other files.

        Converted files go to ``models/<format>/`` and are added to the model's record. Returns the records
        ready to measure and, for models whose conversion failed, a stored measurement with status ``error``
        and the converter's message (failures are data; the next run tries them again).
        """
        backend, root = self.backend, Path(self.root)
        fmt = backend.model_format
        ready = [r for r in records if self._measured_format(r) is not None]
        pending = [r for r in records if self._measured_format(r) is None]
        if not pending:
            return ready, []
        jobs = []
        for r in pending:
            source = next((f for f in SOURCE_FORMATS if f in r.files), None)
            if source is None:
                raise ValueError(f"model {r.id} ({r.name}) has no file to convert from; it has {dict(r.files)}")
            jobs.append(ConversionJob(id=r.id, out_dir=root / "models" / fmt, source=root / r.files[source]))
        with self._task(progress, f"converting to {fmt}", len(jobs)) as update:
            results = {res.job_id: res for res in backend.convert(jobs, self.workers, update)}  # type: ignore[arg-type]
        converted, failed = [], []
        for r in pending:
            res = results[r.id]
            if res.model is not None:
                converted.append(
                    dataclasses.replace(r, files={**r.files, res.model.format: _relative(res.model.path, root)})
                )
            else:
                failed.append(
                    self._record(
                        MeasureResult(r.id, MeasureStatus.ERROR, error=f"conversion to {fmt} failed: {res.error}"),
                        self.protocol,
                    )
                )
        by_id = {r.id: r for r in ready + self.store.add_models(converted)}
        return [by_id[r.id] for r in records if r.id in by_id], self.store.add_measurements(failed)

    # --- measurements --------------------------------------------------------------

    def measure(
        self,
        records: Sequence[ModelRecord],
        *,
        protocol: MeasurementProtocol | None = None,
        remeasure: bool = False,
        series: str = "",
        description: str = "measuring",
        progress: ProgressCallback | None = None,
    ) -> list[MeasurementRecord]:
        """Measure ``records`` (with the session's protocol, or ``protocol``) and store each batch as it returns.

        Returns one record per input model, in order: the new measurement or, for a model whose newest
        measurement under this device/backend/protocol already has a latency (and ``remeasure`` is false),
        that stored one. Models whose earlier measurements failed are measured again. A model without a file
        the backend measures is converted first (:meth:`convert`). ``series`` names an independent measurement
        of the models (see :mod:`nnmeter.measurement.store`): only measurements of that series are reused, and
        the new ones join it.
        """
        protocol = protocol or self.protocol
        device, backend, store = self.device, self.backend, self.store
        unique = list({r.id: r for r in records}.values())  # one measurement per model, even if listed twice
        known = (
            {}
            if remeasure
            else {
                m.model_id: m
                for _, m in store.latest_measurements(
                    device, backend.name, protocol.key(), statuses=LATENCY_STATUSES, series=series
                )
            }
        )
        ready, failed = self.convert([r for r in unique if r.id not in known], progress)
        results: dict[str, MeasurementRecord] = {**known, **{m.model_id: m for m in failed}}
        if self.dispatcher is not None:
            if ready:
                results.update(self._dispatch(self.dispatcher, ready, protocol, series, description, progress))
            return [results[r.id] for r in records]
        anchors = self._anchors() if protocol.anchors and ready else []
        anchor_ids = {a.id for a in anchors}
        with self._task(progress, description, len(ready)) as update:
            for start in range(0, len(ready), protocol.batch_size):
                if start and protocol.cooldown_s:
                    time.sleep(protocol.cooldown_s)
                chunk = ready[start : start + protocol.batch_size]
                batch = [r for r in chunk if r.id not in anchor_ids] + anchors
                files = []
                for r in batch:
                    fmt = self._measured_format(r)
                    files.append(ModelFile(id=r.id, path=Path(self.root) / r.files[fmt], format=fmt))  # type: ignore[index]
                size = len(chunk)
                measured = {
                    res.model_id: res
                    for res in backend.measure(
                        files,
                        dataclasses.replace(protocol, batch_size=len(files)),  # anchors and models in one batch
                        progress=lambda done, _total, start=start, size=size: update(
                            start + min(done, size), len(ready)
                        ),
                    )
                }
                lost = [r.id for r in batch if r.id not in measured]
                if lost:  # a backend must answer for every model; say which one broke the contract
                    raise RuntimeError(f"backend {backend.name} returned no result for {', '.join(lost)}")
                stored = store.add_batch(
                    [self._record(measured[r.id], protocol, series) for r in batch], batch=uuid.uuid4().hex[:16]
                )
                results.update((m.model_id, m) for m in stored)
                update(start + size, len(ready))
        return [results[r.id] for r in records]

    def _dispatch(
        self,
        dispatcher: BatchDispatcher,
        ready: Sequence[ModelRecord],
        protocol: MeasurementProtocol,
        series: str,
        description: str,
        progress: ProgressCallback | None,
    ) -> dict[str, MeasurementRecord]:
        """Measure ``ready`` in batches on the dispatcher's units, storing each batch as it arrives."""
        anchors = self._anchors()  # the units' agreement checks measure them even with protocol.anchors off
        anchor_ids = {a.id for a in anchors}
        in_batches = anchors if protocol.anchors else []
        jobs, sizes = [], []
        for start in range(0, len(ready), protocol.batch_size):
            chunk = ready[start : start + protocol.batch_size]
            batch = [r for r in chunk if r.id not in anchor_ids] + in_batches
            files = tuple(self._file(r) for r in batch)
            jobs.append(BatchJob(len(jobs), files, dataclasses.replace(protocol, batch_size=len(files))))
            sizes.append(len(chunk))
        out: dict[str, MeasurementRecord] = {}
        done = 0
        with self._task(progress, description, len(ready)) as update:
            for finished in dispatcher.dispatch(jobs, [self._file(a) for a in anchors]):
                stored = self.store.add_batch(
                    self._batch_records(jobs[finished.index], finished, protocol, series),
                    batch=uuid.uuid4().hex[:16],
                    unit_scale=finished.scale,
                )
                out.update((m.model_id, m) for m in stored)
                done += sizes[finished.index]
                update(done, len(ready))
        return out

    def _batch_records(
        self, job: BatchJob, finished: BatchDone, protocol: MeasurementProtocol, series: str
    ) -> list[MeasurementRecord]:
        """The records of a batch a unit measured: one per file of its job (a result missing is a broken
        dispatcher: say which model)."""
        measured = {res.model_id: res for res in finished.results}
        lost = [f.id for f in job.files if f.id not in measured]
        if lost:
            raise RuntimeError(f"unit {finished.unit} returned no result for {', '.join(lost)}")
        return [
            MeasurementRecord.from_result(
                measured[f.id],
                device=self.device,
                backend=self.backend.name,
                runtime_versions=finished.runtime_versions,
                protocol=protocol,
                series=series,
                unit=finished.unit,
                host=finished.host,
            )
            for f in job.files
        ]

    def _file(self, record: ModelRecord) -> ModelFile:
        fmt = self._measured_format(record)
        return ModelFile(id=record.id, path=Path(self.root) / record.files[fmt], format=fmt)  # type: ignore[index,arg-type]

    # --- helpers -------------------------------------------------------------------

    def _record(self, result: MeasureResult, protocol: MeasurementProtocol, series: str = "") -> MeasurementRecord:
        info = self.backend.device_info
        assert info is not None
        return MeasurementRecord.from_result(
            result,
            device=info.device,
            backend=self.backend.name,
            runtime_versions=info.runtime_versions,
            protocol=protocol,
            series=series,
        )

    def _anchors(self) -> list[ModelRecord]:
        """The drift anchors' records, converted for the backend (built on first use); an anchor whose conversion
        failed is left out (its batches are then scaled by the others)."""
        return [
            p.record
            for p in self.prepare(anchor_specs(), progress=lambda *_: None)
            if p.record is not None and self._measured_format(p.record) is not None
        ]

    def _measured_format(self, record: ModelRecord) -> str | None:
        return next((f for f in measured_formats(self.backend) if f in record.files), None)

    def _task(self, progress: ProgressCallback | None, description: str, total: int) -> _Updates:
        return _Updates(progress, self.reporter, description, total)


class _Updates:
    """A ``(done, total)`` callback for one step: the caller's, or a task of the session's reporter."""

    def __init__(self, progress: ProgressCallback | None, reporter: Reporter, description: str, total: int) -> None:
        self._progress = progress
        self._task = reporter.task(description, total) if progress is None and total else None
        self._started = time.monotonic()

    def __call__(self, done: int, total: int | None = None) -> None:
        if self._progress is not None:
            self._progress(done, total if total is not None else done)
        elif self._task is not None:
            self._task.update(done, total)

    def __enter__(self) -> _Updates:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.finish(failed=exc[0] is not None)


def measured_formats(backend: Backend) -> tuple[str, ...]:
    """The formats ``backend.measure`` takes as they are, preferred first (its own format when it names none)."""
    return tuple(getattr(backend, "measured_formats", ())) or (backend.model_format,)


def _existing(root: Path, record: ModelRecord | None, fmt: str) -> tuple[ModelRecord, ModelFile] | None:
    """The stored record and its file in ``fmt``, when the file is still on disk."""
    path = record.path(fmt, root) if record is not None else None
    if record is None or path is None or not path.exists():
        return None
    return record, ModelFile(record.id, path, fmt)


def _for_spec(prepared: PreparedModel, spec: ModelSpec) -> PreparedModel:
    """``prepared`` with ``spec`` as its own (two equal specs share one model)."""
    return prepared if prepared.spec is spec else dataclasses.replace(prepared, spec=spec)


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the root when inside it (workspaces can move), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)

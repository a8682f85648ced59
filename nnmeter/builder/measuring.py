"""Measure models of the store on a backend: the one path every part (rules, kernels, evaluation) uses.

:func:`measure_models` skips what is already measured under the same device,
backend and protocol, measures the rest in batches of ``protocol.batch_size``
and stores each batch's results the moment the batch returns, so a killed run
loses at most the batch in flight. Models that only exist in another format
(a user's .keras, ...) are first converted to the backend's with
:func:`convert_models`.

**Drift anchors** (``protocol.anchors``). A device's speed drifts over minutes (here,
a shared host, by +-5 % and more; a phone as it heats up), and a batch measured in a
slow minute would make every model in it slow. Every batch therefore also measures
three fixed kernels (:data:`nnmeter.builder.models.ANCHOR_KERNELS`), and the store
scales each batch's latencies by how far its anchors were from their median over all
batches (:meth:`Store.drift_factors`): ``MeasurementRecord.latency_ms`` is the latency
at the device's typical speed, ``stats`` what was measured. ``bench/drift.py`` (8
sessions of 8 whole models and 56 kernels in batches of 64): the session-to-session
spread of whole models fell from 2.6 % to 1.6 %, of kernels from 2.0 % to 0.8 %
(docs/measurement.md has a noisier hour: 3.9 % to 1.2 %). Where the anchors' drift is
not the other models' (a host whose tenants take memory bandwidth), the full factors
add noise instead; the store weighs them on the models measured more than once in
different batches (:class:`~nnmeter.builder.store.DriftCheck`).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from nnmeter.backends.base import (
    LATENCY_STATUSES, ConversionJob, MeasureResult, MeasureStatus, ModelFile, ProgressCallback,
)
from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.builder.store import MeasurementRecord, ModelRecord, Store, with_drift

if TYPE_CHECKING:
    from nnmeter.backends.base import Backend

#: Formats a model can be converted from, most faithful first.
SOURCE_FORMATS = ("keras", "savedmodel", "onnx", "tflite")


def measure_models(store: Store, backend: "Backend", records: Sequence[ModelRecord], protocol: MeasurementProtocol,
                   *, workspace_root: Path, remeasure: bool = False, progress: ProgressCallback | None = None,
                   description: str = "measuring", series: str = "") -> list[MeasurementRecord]:
    """Measure ``records`` on ``backend`` with ``protocol`` and store each batch's results as it returns.

    Returns one record per input model, in order: the new measurement, or, for a
    model whose newest measurement under this device/backend/protocol already has
    a latency (and ``remeasure`` is false), that stored one. Models whose earlier
    measurements failed are measured again. A model without a file the backend
    measures is converted first (:func:`convert_models`); a failed conversion is an
    ``error`` measurement. ``progress(done, total)`` replaces the rich progress bars
    shown otherwise. ``series`` names an independent measurement of the models (see
    :mod:`nnmeter.builder.store`): only measurements of that series are reused, and the
    new ones join it. A failed conversion is stored in the ordinary series.
    """
    info = backend.device_info
    unique = list({r.id: r for r in records}.values())  # one measurement per model, even if listed twice
    known = {} if remeasure else {
        m.model_id: m for _, m in store.latest_measurements(
            info.device, backend.name, protocol.key(), statuses=LATENCY_STATUSES,
            series=series)}
    ready, failed = convert_models(store, backend, [r for r in unique if r.id not in known], protocol,
                                   workspace_root=workspace_root, progress=progress)
    results: dict[str, MeasurementRecord] = {**known, **{m.model_id: m for m in failed}}
    anchors = _anchors(store, backend, workspace_root) if protocol.anchors and ready else []
    anchor_ids = {a.id for a in anchors}
    with _progress(progress, description, len(ready)) as update:
        for start in range(0, len(ready), protocol.batch_size):
            if start and protocol.cooldown_s:
                time.sleep(protocol.cooldown_s)
            chunk = ready[start:start + protocol.batch_size]
            batch = [r for r in chunk if r.id not in anchor_ids] + anchors
            files = []
            for r in batch:
                fmt = _measured_format(backend, r)
                files.append(ModelFile(id=r.id, path=Path(workspace_root) / r.files[fmt], format=fmt))
            size = len(chunk)
            measured = {res.model_id: res for res in backend.measure(
                files, dataclasses.replace(protocol, batch_size=len(files)),  # anchors and models in one batch
                progress=lambda done, _total, start=start, size=size: update(start + min(done, size)))}
            lost = [r.id for r in batch if r.id not in measured]
            if lost:  # a backend must answer for every model; say which one broke the contract
                raise RuntimeError(f"backend {backend.name} returned no result for {', '.join(lost)}")
            batch_id = uuid.uuid4().hex[:16]
            stored = store.add_measurements([
                MeasurementRecord.from_result(measured[r.id], device=info.device, backend=backend.name,
                                              runtime_versions=info.runtime_versions, protocol=protocol,
                                              series=series, batch=batch_id)
                for r in batch])
            results.update((m.model_id, m) for m in stored)
            update(start + size)
    factors = store.drift_factors(info.device, backend.name, protocol.key())
    return [with_drift(results[r.id], factors) for r in records]


def _anchors(store: Store, backend: "Backend", workspace_root: Path) -> list[ModelRecord]:
    """The drift anchors' records, converted for ``backend`` (built on first use); an anchor whose conversion
    failed is left out (its batches are then scaled by the others)."""
    from nnmeter.builder.models import anchor_specs, prepare_models_in

    return [p.record for p in prepare_models_in(store, Path(workspace_root), backend, anchor_specs(), progress=None)
            if p.ok and p.record is not None and _measured_format(backend, p.record) is not None]


def convert_models(store: Store, backend: "Backend", records: Sequence[ModelRecord], protocol: MeasurementProtocol,
                   *, workspace_root: Path, workers: int | None = None, progress: ProgressCallback | None = None,
                   ) -> tuple[list[ModelRecord], list[MeasurementRecord]]:
    """Give every model of ``records`` a file the backend measures, converting from its other files.

    Converted files (``backend.model_format``) go to ``models/<format>/`` and are added
    to the model's record. ``workers`` None leaves the number of conversion processes
    to the backend's config.
    Returns the records ready to measure, and, for models whose conversion failed, a
    measurement record under ``protocol`` with status ``error`` and the converter's
    message, stored (failures are data; the run goes on with the others, and the next
    run tries the failed ones again).
    """
    fmt = backend.model_format
    root = Path(workspace_root)
    ready = [r for r in records if _measured_format(backend, r) is not None]
    pending = [r for r in records if _measured_format(backend, r) is None]
    if not pending:
        return ready, []
    jobs = []
    for r in pending:
        source = next((f for f in SOURCE_FORMATS if f in r.files), None)
        if source is None:
            raise ValueError(f"model {r.id} ({r.name}) has no file to convert from; it has {dict(r.files)}")
        jobs.append(ConversionJob(id=r.id, out_dir=root / "models" / fmt, source=root / r.files[source]))
    with _progress(progress, f"converting to {fmt}", len(jobs)) as update:
        converted_jobs = (backend.convert(jobs, progress=lambda done, _total: update(done)) if workers is None
                          else backend.convert(jobs, workers=workers, progress=lambda done, _total: update(done)))
        results = {res.job_id: res for res in converted_jobs}
    info = backend.device_info
    converted, failed = [], []
    for r in pending:
        res = results[r.id]
        if res.ok:
            converted.append(dataclasses.replace(
                r, files={**r.files, res.model.format: _relative(res.model.path, root)}))
        else:
            failed.append(MeasurementRecord.from_result(
                MeasureResult(r.id, MeasureStatus.ERROR, error=f"conversion to {fmt} failed: {res.error}"),
                device=info.device, backend=backend.name, runtime_versions=info.runtime_versions,
                protocol=protocol))
    by_id = {r.id: r for r in ready + store.add_models(converted)}
    return [by_id[r.id] for r in records if r.id in by_id], store.add_measurements(failed)


def measured_formats(backend: "Backend") -> tuple[str, ...]:
    """The formats ``backend.measure`` takes as they are, preferred first (its own format when it names none)."""
    return tuple(getattr(backend, "measured_formats", ())) or (backend.model_format,)


def _measured_format(backend: "Backend", record: ModelRecord) -> str | None:
    return next((f for f in measured_formats(backend) if f in record.files), None)


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the workspace when inside it (workspaces can move), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


@contextmanager
def _progress(callback: ProgressCallback | None, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """An ``update(done)`` function feeding ``callback(done, total)``, or a rich bar when there is none."""
    if callback is not None or total == 0:
        yield lambda done: callback(done, total) if callback is not None else None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    started = time.monotonic()
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def update(done: int) -> None:
            per_min = done / max(time.monotonic() - started, 1e-9) * 60
            bar.update(task, completed=done, rate=f"{per_min:.1f} models/min")
        yield update

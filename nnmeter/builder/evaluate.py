"""The evaluate step on a workspace: measure real models, predict them with the packaged predictor, score.

The evaluation set (the campaign's ``evaluation`` section, :mod:`nnmeter.evaluation.zoo`, or a user's folder
of model files) is converted and measured with the campaign's protocol through the store, then predicted
from the same converted files that were measured, and scored with the baselines
(:mod:`nnmeter.evaluation`). Every model is measured ``repeats`` times in independent passes, the second
after the first has finished; ``remeasure`` measures both again (the store keeps the old ones).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nnmeter.backends.base import Backend
from nnmeter.builder import state
from nnmeter.builder.workspace import USER_MODEL_SUFFIXES, Workspace, write_text_atomic
from nnmeter.errors import NnmeterError
from nnmeter.evaluation import (
    NOTES,
    EvaluationResult,
    ModelEvaluation,
    build_zoo_model,
    check_families,
    evaluation_set,
    predict_model,
    with_flops_baseline,
)
from nnmeter.measurement import ModelRecord, ModelSpec
from nnmeter.predictor.artifact import load_artifact
from nnmeter.progress import SILENT, Reporter

EVALUATION_FILE = "evaluation.json"
#: Formats the predictor reads, most faithful to what was measured first.
PREDICTED_FORMATS = ("tflite", "onnx", "keras")


@dataclass(frozen=True)
class EvaluationModel:
    """A model to evaluate: its store record (with a file the backend measures) and its family."""

    record: ModelRecord
    family: str
    error: str = ""  # conversion failure: the model has no file to measure


def evaluate_workspace(
    ws: Workspace,
    backend: Backend,
    models: Sequence[EvaluationModel],
    out: Path | None = None,
    remeasure: bool = False,
    reporter: Reporter = SILENT,
) -> EvaluationResult:
    """Measure ``models`` (``repeats`` passes, resumable through the store), predict them, score every method,
    and write the result to ``out`` (default ``ws/reports/evaluation.json``), holding the workspace's lock."""
    with ws.lock():
        return _evaluate(ws, backend, models, out, remeasure, reporter)


def _evaluate(
    ws: Workspace,
    backend: Backend,
    models: Sequence[EvaluationModel],
    out: Path | None,
    remeasure: bool,
    reporter: Reporter,
) -> EvaluationResult:
    campaign = ws.campaign
    session = ws.session(backend, protocol=campaign.protocol.for_whole_models(), reporter=reporter)
    ready = [m for m in models if not m.error]
    records = [m.record for m in ready]
    first = session.measure(records, remeasure=remeasure, description="measuring evaluation models")
    setup = state.setup_key(session.device, backend.name, session.protocol.key())
    passes = ws.store.get_state(state.EVALUATION_FIRST_PASS, {}) or {}
    first_pass = passes.setdefault(setup, {"measurement_ids": {}, "latency_ms": {}, "device_seconds": 0.0})
    for rec in first:
        if rec.latency_ms is not None and (remeasure or rec.model_id not in first_pass["measurement_ids"]):
            first_pass["measurement_ids"][rec.model_id] = rec.id
            first_pass["latency_ms"][rec.model_id] = rec.latency_ms
            first_pass["device_seconds"] += rec.device_seconds
    ws.store.set_state(state.EVALUATION_FIRST_PASS, passes)
    latest = {rec.model_id: rec for rec in first}
    if campaign.evaluation.repeats > 1:
        again = [r for r in records if latest[r.id].id == first_pass["measurement_ids"].get(r.id)]
        for rec in session.measure(again, remeasure=True, description="measuring again (repeatability)"):
            latest[rec.model_id] = rec

    artifact = load_artifact(ws.predictor_dir)
    rows = []
    for m in models:
        rec = m.record
        if m.error:
            rows.append(ModelEvaluation(rec.name, m.family, rec.id, None, error=m.error))
            continue
        first_ms = first_pass["latency_ms"].get(rec.id)
        newest = latest[rec.id]
        repeat = newest.latency_ms if newest.id != first_pass["measurement_ids"].get(rec.id) else None
        error = "" if first_ms is not None else f"measurement {newest.status.value}: {newest.error}"
        fmt = next((f for f in PREDICTED_FORMATS if f in rec.files), None)
        if fmt is None:
            rows.append(
                ModelEvaluation(
                    rec.name,
                    m.family,
                    rec.id,
                    first_ms,
                    repeat_ms=repeat,
                    error=f"no file the predictor reads ({', '.join(PREDICTED_FORMATS)})",
                )
            )
            continue
        rows.append(
            predict_model(artifact, ws.root / rec.files[fmt], rec.name, rec.id, m.family, first_ms, repeat, error)
        )
    info = backend.device_info
    assert info is not None
    result = EvaluationResult(
        tuple(with_flops_baseline(rows)),
        device={
            "device": info.device,
            "description": info.description,
            "backend": info.backend,
            "runtime": info.runtime,
            **dict(info.runtime_versions),
            **dict(info.facts),
        },
        predictor={
            "path": str(artifact.path),
            "name": artifact.manifest.name,
            "version": artifact.manifest.version,
            "kernels": sorted(artifact.kernels),
        },
        notes=NOTES,
    )
    path = out or ws.reports_dir / EVALUATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # EvaluationResult.save's format, written without leaving a .tmp file behind when interrupted
    write_text_atomic(path, json.dumps(result.to_json(), indent=1, sort_keys=True))
    return result


def zoo_models(
    ws: Workspace, backend: Backend, workers: int | None = None, reporter: Reporter = SILENT
) -> list[EvaluationModel]:
    """The campaign's evaluation set (``evaluation`` section), built and converted through the store."""
    settings = ws.campaign.evaluation
    check_families(settings.families, source=str(ws.campaign_path))
    zoo = evaluation_set(settings.families, settings.models_per_family, settings.resolutions, settings.seed)
    specs = [
        ModelSpec(
            "evaluation", m.name, {"family": m.family, **m.params}, build_zoo_model, (m.family, m.name, dict(m.params))
        )
        for m in zoo
    ]
    session = ws.session(backend, workers=workers, reporter=reporter)
    out = []
    for m, prepared in zip(zoo, session.prepare(specs, description="building and converting evaluation models")):
        if prepared.record is not None and prepared.ok:
            out.append(EvaluationModel(prepared.record, m.family))
        else:
            placeholder = ModelRecord(prepared.id, "evaluation", m.name, {"family": m.family})
            out.append(EvaluationModel(placeholder, m.family, error=f"conversion failed: {prepared.error}"))
    return out


def folder_models(
    ws: Workspace, backend: Backend, folder: Path, workers: int | None = None, reporter: Reporter = SILENT
) -> list[EvaluationModel]:
    """Every model file under ``folder`` (.tflite, .onnx, .keras, .h5, SavedModel folders), converted for the
    backend; a model's family is its subfolder (``folder`` itself: "user")."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NnmeterError(f"{folder}: no such folder", "give a folder of model files (.tflite, .onnx, .keras)")
    paths = sorted(
        p
        for p in folder.rglob("*")
        if (p.is_file() and p.suffix.lower() in USER_MODEL_SUFFIXES)
        or (p.is_dir() and (p / "saved_model.pb").is_file())
    )
    if not paths:
        raise NnmeterError(
            f"{folder}: holds no model files",
            "nnmeter evaluates .tflite, .onnx, .keras, .h5 files and SavedModel folders",
        )
    family_of: dict[str, str] = {}
    records = []
    for r, p in zip(ws.add_user_models(paths), paths):
        if r.id not in family_of:  # the same file twice is one model, in the family where it is met first
            family_of[r.id] = p.parent.relative_to(folder).as_posix() if p.parent != folder else "user"
            records.append(r)
    ready, failed = ws.session(backend, workers=workers, reporter=reporter).convert(records)
    by_id = {r.id: r for r in ready}
    errors = {m.model_id: m.error for m in failed}
    return [EvaluationModel(by_id.get(r.id, r), family_of[r.id], error=errors.get(r.id, "")) for r in records]

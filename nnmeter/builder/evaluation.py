"""Score a predictor on real models: measure them, predict them, compare; and the two baselines.

The evaluation set (see :mod:`nnmeter.builder.zoo`, or a user's folder of model
files) is converted and measured with the campaign's protocol through the store,
then predicted with the packaged predictor from the same converted files that
were measured. Per model: measured, predicted, error; per family and overall:
the share within +-5 % and +-10 %, RMSPE, RMSE and Spearman's rank correlation.

Baselines (nn-Meter's two), scored on the same measured latencies:

* ``flops-linear``: latency = a * FLOPs + b, ordinary least squares on the
  evaluation models' own measured latencies, *leave one family out*: each
  family's models are predicted by a line fitted on the other families' models
  (leave one model out when there is a single family). A model's FLOPs are the
  sum of the FLOPs of the kernels the predictor detected in it.
* ``no-fusion``: the same predictor with fusion disabled: every op is a kernel of
  its own, predicted by the artifact's regressor of that single-op kernel
  (conv -> conv-block, dwconv -> dwconv-block, relu -> relu, ...), summed. Ops
  without a single-op regressor are left out of the sum (and counted): this
  favours the baseline, never nnmeter.

Repeatability of the ground truth: every evaluation model is measured
``repeats`` times in independent passes (the second pass starts after the
first has finished, so the two see different device states); the metrics of
the second pass against the first are reported beside the predictor's. When
they agree within +-10 % for fewer than :data:`REPEATABLE_SHARE` of the models,
the device was too unsteady for the figures to mean much, and the run says so
(:meth:`EvaluationResult.unsteady_ground_truth`); ``remeasure`` measures both
passes again later, the store keeping the old measurements.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

NNMETER = "nnmeter"
FLOPS_LINEAR = "flops-linear"
NO_FUSION = "no-fusion"
METHODS = (NNMETER, FLOPS_LINEAR, NO_FUSION)
#: The share of evaluation models whose two measurements agree within +-10 % below which the ground truth is
#: called unsteady (in quiet hours here 100 % agree; one quickstart run in a busy hour 85.7 %, its first pass
#: with most models and all anchors unstable; a repeatable ground truth does not make the score good, it only
#: lets it be read).
REPEATABLE_SHARE = 0.95


@dataclass(frozen=True)
class Metrics:
    """Accuracy of predictions against measurements. Shares are fractions (0..1); RMSPE is in percent."""

    n: int
    within_5: float
    within_10: float
    rmspe: float
    rmse_ms: float
    spearman: float | None  # None when undefined (fewer than 3 models, or a constant side)
    mean_error: float  # mean signed relative error: > 0 means the method over-predicts

    @classmethod
    def of(cls, measured: Sequence[float], predicted: Sequence[float]) -> "Metrics":
        """Metrics of ``predicted`` against ``measured`` (both ms, same order; pairs with a NaN are dropped)."""
        m = np.asarray(measured, dtype=float)
        p = np.asarray(predicted, dtype=float)
        if m.shape != p.shape:
            raise ValueError(f"{m.size} measured values but {p.size} predicted")
        keep = np.isfinite(m) & np.isfinite(p) & (m > 0)
        m, p = m[keep], p[keep]
        if m.size == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan, None, math.nan)
        err = (p - m) / m
        return cls(
            n=int(m.size),
            within_5=float(np.mean(np.abs(err) <= 0.05)),
            within_10=float(np.mean(np.abs(err) <= 0.10)),
            rmspe=float(np.sqrt(np.mean(err ** 2)) * 100),
            rmse_ms=float(np.sqrt(np.mean((p - m) ** 2))),
            spearman=spearman(m, p),
            mean_error=float(np.mean(err)),
        )


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None when undefined."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size, dtype=float)
    for value in np.unique(x):  # ties: the mean of their ranks
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def flops_linear_predictions(flops: Sequence[float], measured_ms: Sequence[float],
                             groups: Sequence[str]) -> np.ndarray:
    """The FLOPs-linear baseline: each model predicted by a line fitted without its group.

    Leave one group (family) out; with a single group, leave one model out. The line minimises
    relative squared error (weights 1/y^2), the measure every method is judged by; a plain fit
    would spend itself on the slowest models. A model whose held-out fit has fewer than two
    points gets NaN (no line can be fitted).
    """
    from sklearn.linear_model import LinearRegression

    x = np.asarray(flops, dtype=float).reshape(-1, 1)
    y = np.asarray(measured_ms, dtype=float)
    g = np.asarray(groups if len(set(groups)) > 1 else [str(i) for i in range(len(y))])
    out = np.full(y.shape, np.nan)
    for group in np.unique(g):
        train = (g != group) & np.isfinite(y) & np.isfinite(x[:, 0])
        if train.sum() < 2:
            continue
        line = LinearRegression().fit(x[train], y[train], sample_weight=1.0 / y[train] ** 2)
        out[g == group] = line.predict(x[g == group])
    return out


# --- results -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelEvaluation:
    """One evaluation model: its measurements and every method's prediction (ms; None when missing)."""

    name: str
    family: str
    model_id: str
    measured_ms: float | None
    predictions: Mapping[str, float | None] = field(default_factory=dict)  # method -> ms
    repeat_ms: float | None = None  # an independent second measurement, for repeatability
    flops: float = 0.0
    kernels: int = 0
    unsupported: tuple[str, ...] = ()  # ops the predictor has no regressor for (their nodes)
    error: str = ""  # why the model has no measurement or no prediction

    def relative_error(self, method: str = NNMETER) -> float | None:
        p = self.predictions.get(method)
        if p is None or self.measured_ms is None or self.measured_ms <= 0:
            return None
        return (p - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class EvaluationResult:
    """Every model's numbers, and the metrics per method overall and per family."""

    models: tuple[ModelEvaluation, ...]
    device: Mapping[str, Any] = field(default_factory=dict)
    predictor: Mapping[str, Any] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)  # method -> how it was computed

    @property
    def scored(self) -> list[ModelEvaluation]:
        """Models with a measurement and an nnmeter prediction: the ones every metric is over."""
        return [m for m in self.models if m.measured_ms is not None and m.predictions.get(NNMETER) is not None]

    def metrics(self, method: str = NNMETER, family: str | None = None) -> Metrics:
        rows = [m for m in self.scored if family is None or m.family == family]
        return Metrics.of([m.measured_ms for m in rows],
                          [_nan(m.predictions.get(method)) for m in rows])

    def repeatability(self, family: str | None = None) -> Metrics:
        """The second measurement scored against the first, as if it were a prediction."""
        rows = [m for m in self.models if m.measured_ms is not None and m.repeat_ms is not None
                and (family is None or m.family == family)]
        return Metrics.of([m.measured_ms for m in rows], [m.repeat_ms for m in rows])

    def unsteady_ground_truth(self) -> str | None:
        """What to tell the user when the two measurement passes disagree too often to trust the scores."""
        rep = self.repeatability()
        if not rep.n or rep.within_10 >= REPEATABLE_SHARE:
            return None
        return (f"the two measurements of the evaluation models agree within ±10 % for only "
                f"{100 * rep.within_10:.1f} % of them: the device was busy or unsteady while they were measured, "
                f"and the accuracy figures are not to be trusted further than that; `nnmeter-build evaluate "
                f"--remeasure` measures them again")

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(m.family for m in self.models))

    @property
    def methods(self) -> list[str]:
        return [k for k in METHODS if any(m.predictions.get(k) is not None for m in self.models)]

    def to_json(self) -> dict[str, Any]:
        return {"models": [asdict(m) for m in self.models], "device": dict(self.device),
                "predictor": dict(self.predictor), "notes": dict(self.notes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EvaluationResult":
        models = tuple(ModelEvaluation(**{**m, "unsupported": tuple(m.get("unsupported", ()))})
                       for m in data["models"])
        return cls(models, data.get("device", {}), data.get("predictor", {}), data.get("notes", {}))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        tmp.replace(path)  # a kill never leaves half a file

    @classmethod
    def load(cls, path: Path) -> "EvaluationResult":
        return cls.from_json(json.loads(Path(path).read_text()))


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


# --- running an evaluation on a workspace ---------------------------------------------

EVALUATION_FILE = "evaluation.json"
#: Store state key of the first of two measurement passes, per setup (device|backend|protocol key).
FIRST_PASS_STATE = "evaluation/first-pass"
#: Formats the predictor reads, most faithful to what was measured first.
PREDICTED_FORMATS = ("tflite", "onnx", "keras")

NOTES = {
    NNMETER: "kernels detected with the measured fusion rules, each predicted by its kernel regressor, summed",
    FLOPS_LINEAR: "latency = a * FLOPs + b, least squares on the measured evaluation models, leave one family "
                  "out (each family predicted by a line fitted on the others)",
    NO_FUSION: "every op its own kernel (only bn is folded into the conv before it, as converters do), each "
               "predicted by the artifact's single-op regressor, summed",
}


@dataclass(frozen=True)
class EvaluationModel:
    """A model to evaluate: its store record (with a file the backend measures) and its family."""

    record: Any  # nnmeter.builder.store.ModelRecord
    family: str
    error: str = ""  # conversion failure: the model has no file to measure


def evaluate_workspace(ws: Any, backend: Any, models: Sequence[EvaluationModel], out: Path | None = None,
                       progress: Any = None, remeasure: bool = False) -> EvaluationResult:
    """Measure ``models`` (``repeats`` passes, resumable through the store), predict them, score every method.

    With ``remeasure``, both passes are measured again and replace the stored ones in the scores (after a busy
    hour); otherwise stored measurements are reused. The result is also written to ``out`` (default
    ``ws/reports/evaluation.json``).
    """
    from nnmeter.builder.measuring import measure_models
    from nnmeter.builder.packaging import default_artifact_dir
    from nnmeter.predictor.artifact import load_artifact

    campaign = ws.campaign
    protocol = campaign.protocol.for_whole_models()
    ready = [m for m in models if not m.error]
    records = [m.record for m in ready]
    first = measure_models(ws.store, backend, records, protocol, workspace_root=ws.root, progress=progress,
                           remeasure=remeasure, description="measuring evaluation models")
    setup = f"{backend.device_info.device}|{backend.name}|{protocol.key()}"
    passes = ws.store.get_state(FIRST_PASS_STATE, {}) or {}
    first_pass = passes.setdefault(setup, {"measurement_ids": {}, "latency_ms": {}, "device_seconds": 0.0})
    for rec in first:
        if rec.latency_ms is not None and (remeasure or rec.model_id not in first_pass["measurement_ids"]):
            first_pass["measurement_ids"][rec.model_id] = rec.id
            first_pass["latency_ms"][rec.model_id] = rec.latency_ms
            first_pass["device_seconds"] += rec.device_seconds
    ws.store.set_state(FIRST_PASS_STATE, passes)
    latest = {rec.model_id: rec for rec in first}
    if campaign.evaluation.repeats > 1:
        again = [r for r in records if latest[r.id].id == first_pass["measurement_ids"].get(r.id)]
        for rec in measure_models(ws.store, backend, again, protocol, workspace_root=ws.root, remeasure=True,
                                  progress=progress, description="measuring again (repeatability)"):
            latest[rec.model_id] = rec

    artifact = load_artifact(default_artifact_dir(ws))
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
        rows.append(_predict_one(artifact, ws.root, rec, m.family, first_ms, repeat, error))
    rows = _with_flops_baseline(rows)
    info = backend.device_info
    result = EvaluationResult(
        tuple(rows),
        device={"device": info.device, "description": info.description, "backend": info.backend,
                "runtime": info.runtime, **dict(info.runtime_versions), **dict(info.facts)},
        predictor={"path": str(artifact.path), "name": artifact.manifest.name,
                   "version": artifact.manifest.version, "kernels": sorted(artifact.kernels)},
        notes=NOTES,
    )
    result.save(out or ws.reports_dir / EVALUATION_FILE)
    return result


def _predict_one(artifact: Any, root: Path, rec: Any, family: str, measured: float | None, repeat: float | None,
                 error: str) -> ModelEvaluation:
    """nnmeter's and the no-fusion baseline's predictions of one model; a method that cannot predict
    every part of the model gets no prediction (a partial sum would look better than it is)."""
    from nnmeter.predictor.engine import Predictor

    fmt = next((f for f in PREDICTED_FORMATS if f in rec.files), None)
    if fmt is None:
        return ModelEvaluation(rec.name, family, rec.id, measured, repeat_ms=repeat,
                               error=f"no file the predictor reads ({', '.join(PREDICTED_FORMATS)})")
    path = Path(root) / rec.files[fmt]
    predictions: dict[str, float | None] = {}
    try:
        result = Predictor(artifact).predict(str(path), strict=False)
        baseline = Predictor(_NoFusion(artifact)).predict(str(path), strict=False)
    except Exception as err:  # a converter failing on one model is a result of the evaluation, not its end
        return ModelEvaluation(rec.name, family, rec.id, measured, repeat_ms=repeat,
                               error=f"prediction failed: {type(err).__name__}: {err}".splitlines()[0])
    predictions[NNMETER] = None if result.unsupported else result.latency_ms
    predictions[NO_FUSION] = None if baseline.unsupported else baseline.latency_ms
    flops = sum(k.features[_flops_index(k.kernel)] for k in result.kernels)
    counts = Counter(f"{u.ops} ({u.reason})" for u in result.unsupported)
    unsupported = tuple(f"{n} x {what}" if n > 1 else what for what, n in counts.items())
    return ModelEvaluation(rec.name, family, rec.id, measured, predictions, repeat_ms=repeat, flops=flops,
                           kernels=len(result.kernels), unsupported=unsupported, error=error)


def _flops_index(kernel: str) -> int:
    from nnmeter.predictor.features import feature_names

    return feature_names(kernel).index("FLOPS")


def _with_flops_baseline(rows: list[ModelEvaluation]) -> list[ModelEvaluation]:
    """Rows with the FLOPs-linear prediction added, fitted on the measured and fully detected models."""
    usable = [i for i, r in enumerate(rows) if r.measured_ms is not None and r.predictions.get(NNMETER) is not None]
    if not usable:
        return rows
    pred = flops_linear_predictions([rows[i].flops for i in usable], [rows[i].measured_ms for i in usable],
                                    [rows[i].family for i in usable])
    out = list(rows)
    for i, p in zip(usable, pred):
        out[i] = dataclasses.replace(rows[i], predictions={**rows[i].predictions,
                                                           FLOPS_LINEAR: None if math.isnan(p) else float(p)})
    return out


class _NoFusion:
    """An artifact seen with fusion turned off: the engine then detects one kernel per op."""

    def __init__(self, artifact: Any) -> None:
        from nnmeter import ops
        from nnmeter.predictor.rules import MON_NONE, FusionRules, MonRule, PairRule

        self._artifact = artifact
        folded = {(op, ops.BN): PairRule(op, ops.BN, True) for op in (ops.CONV, ops.DWCONV)}
        self.rules = FusionRules(pairs=folded, mon=MonRule(MON_NONE), source="no-fusion baseline")

    @property
    def kernels(self) -> frozenset[str]:
        return self._artifact.kernels

    @property
    def invoke_overhead_ms(self) -> float:
        return float(getattr(self._artifact, "invoke_overhead_ms", 0.0))

    @property
    def model_correction(self) -> Any:
        return getattr(self._artifact, "model_correction", None)

    def predict(self, kernel: str, X: np.ndarray) -> np.ndarray:
        return self._artifact.predict(kernel, X)


def zoo_models(ws: Any, backend: Any, workers: int | None = None, progress: Any = None) -> list[EvaluationModel]:
    """The campaign's evaluation set (``evaluation`` section), built and converted through the store."""
    from nnmeter.builder.models import ModelSpec, prepare_models
    from nnmeter.builder.store import ModelRecord
    from nnmeter.builder.zoo import build_zoo_model, check_families, evaluation_set

    settings = ws.campaign.evaluation
    check_families(settings.families, source=str(ws.campaign_path))
    zoo = evaluation_set(settings.families, settings.models_per_family, settings.resolutions, settings.seed)
    specs = [ModelSpec("evaluation", m.name, {"family": m.family, **m.params}, build_zoo_model,
                       (m.family, m.name, dict(m.params))) for m in zoo]
    out = []
    for m, prepared in zip(zoo, prepare_models(ws, backend, specs, workers, progress)):
        if prepared.ok:
            out.append(EvaluationModel(prepared.record, m.family))
        else:
            placeholder = ModelRecord(prepared.id, "evaluation", m.name, {"family": m.family})
            out.append(EvaluationModel(placeholder, m.family, error=f"conversion failed: {prepared.error}"))
    return out


def folder_models(ws: Any, backend: Any, folder: Path, workers: int | None = None) -> list[EvaluationModel]:
    """Every model file under ``folder`` (.tflite, .onnx, .keras, .h5, SavedModel folders), converted for the
    backend; a model's family is its subfolder (``folder`` itself: "user")."""
    from nnmeter.builder.measuring import convert_models
    from nnmeter.builder.workspace import USER_MODEL_SUFFIXES
    from nnmeter.errors import NnmeterError

    folder = Path(folder)
    if not folder.is_dir():
        raise NnmeterError(f"{folder}: no such folder", "give a folder of model files (.tflite, .onnx, .keras)")
    paths = sorted(p for p in folder.rglob("*") if (p.is_file() and p.suffix.lower() in USER_MODEL_SUFFIXES)
                   or (p.is_dir() and (p / "saved_model.pb").is_file()))
    if not paths:
        raise NnmeterError(f"{folder}: holds no model files", "nnmeter evaluates .tflite, .onnx, .keras, .h5 "
                                                              "files and SavedModel folders")
    family_of: dict[str, str] = {}
    unique = []
    for r, p in zip(ws.add_user_models(paths), paths):
        if r.id not in family_of:  # the same file twice is one model, in the family where it is met first
            family_of[r.id] = p.parent.relative_to(folder).as_posix() if p.parent != folder else "user"
            unique.append(r)
    records = unique
    ready, failed = convert_models(ws.store, backend, records, ws.campaign.protocol, workspace_root=ws.root,
                                   workers=workers)
    by_id = {r.id: r for r in ready}
    errors = {m.model_id: m.error for m in failed}
    return [EvaluationModel(by_id.get(r.id, r), family_of[r.id], error=errors.get(r.id, "")) for r in records]


def metrics_table(result: EvaluationResult) -> Any:
    """A rich table: per method (and the second measurement), overall and per family: +-10 %, RMSPE, Spearman."""
    from rich.table import Table

    table = Table(title=f"evaluation: {len(result.scored)} of {len(result.models)} models measured and predicted")
    for col in ("scope", "method", "models", "±5 %", "±10 %", "RMSPE %", "RMSE ms", "Spearman"):
        table.add_column(col, justify="left" if col in ("scope", "method") else "right")

    def row(scope: str, method: str, m: Metrics) -> None:
        if m.n:
            table.add_row(scope, method, str(m.n), f"{100 * m.within_5:.1f}", f"{100 * m.within_10:.1f}",
                          f"{m.rmspe:.1f}", f"{m.rmse_ms:.3f}", "-" if m.spearman is None else f"{m.spearman:.3f}")

    for scope in (None, *result.families):
        for method in result.methods:
            row(scope or "all", method, result.metrics(method, scope))
        row(scope or "all", "2nd measurement", result.repeatability(scope))
        if scope is None:
            table.add_section()
    return table

"""``nnmeter-build package``: a workspace's trained kernel regressors and fusion rules as a predictor artifact.

Reads what :mod:`nnmeter.builder.kernels` recorded for the latest training setup
(device, backend, protocol), checks each regressor file against the checksum
recorded when it was trained, and writes the folder of
:mod:`nnmeter.predictor.artifact` (by default ``ws/predictor``).
The device is connected once for two calibrations: the fixed cost of an invocation
(:func:`invoke_overhead_ms`), then the whole-model correction
(:func:`calibrate_model_correction`): a few calibration models, drawn from the NAS-style
families with a seed of their own (never the evaluation set), are measured whole and
as the sum of their kernels measured standalone (the kernels the packaged fusion
rules detect; the invoke overhead paid once), and the correction that predicts the
first from the second best -- none, a factor on the kernels, a term on the weight
bytes above a threshold, or both; with the device's private cache size known, also the
factor and a term on the weights small kernels refetch inside a model, with or without the
weight term; chosen by leave-one-out error -- is fitted on relative error
(:func:`fit_model_correction`). Measured kernels, not the regressors'
predictions: the correction is the device's non-additivity, not the regressors' errors on
these few models. When the device cannot be reached, the
artifact records an overhead of 0 and no model correction, and the result says so.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import nnls

from nnmeter.builder.kernels import kernels_to_train, trained_kernels
from nnmeter.builder.workspace import Workspace
from nnmeter.errors import NnmeterError
from nnmeter.evaluation import build_zoo_model, evaluation_set
from nnmeter.measurement import MeasuringSession, ModelSpec, kernel_spec
from nnmeter.predictor.artifact import KernelPayload, ModelCorrection, sha256_file, write_artifact
from nnmeter.predictor.converters import to_graph
from nnmeter.predictor.detection import detect
from nnmeter.predictor.engine import Predictor, refetched_weight_bytes, weight_bytes
from nnmeter.predictor.features import FEATURE_SCHEMA_VERSION
from nnmeter.predictor.regressor_format import TreeEnsemble, load_ensemble
from nnmeter.predictor.rules import FusionRules, default_rules, load_rules
from nnmeter.progress import SILENT, Reporter
from nnmeter.training.metrics import INTERVAL_COVERAGE, conformal_quantile


@dataclass(frozen=True)
class PackageResult:
    path: Path
    kernels: tuple[str, ...]
    rules_source: str  # the rules file packaged, or "default" when the workspace has none
    skipped: tuple[str, ...]  # campaign kernels the device forms without a trained regressor
    invoke_overhead_ms: float = 0.0
    overhead_error: str = ""  # why the overhead could not be measured (then it is 0)
    model_correction: ModelCorrection | None = None
    correction_error: str = ""  # why the model correction could not be fitted (then there is none)

    def calibration_summary(self) -> str:
        """The device calibrations the artifact holds, or why one is missing, in one line."""
        overhead = (
            f"invoke overhead {1000 * self.invoke_overhead_ms:.1f} us"
            if not self.overhead_error
            else f"invoke overhead not measured ({self.overhead_error})"
        )
        mc = self.model_correction
        correction = (
            f"model correction: {mc.describe()}" if mc is not None else f"no model correction ({self.correction_error})"
        )
        return f"{overhead}; {correction}"


#: The trivial model whose latency is the device's fixed cost of one invocation: a one-element add.
OVERHEAD_KERNEL = ("add", {"HW": 1, "CIN": 1})


def invoke_overhead_ms(session: MeasuringSession) -> float:
    """The fixed cost of one invocation on the session's device and protocol: the latency of
    :data:`OVERHEAD_KERNEL`, converted and measured through the store like every kernel (a stored
    measurement is reused). Raises NnmeterError when the device cannot measure it."""
    prepared = session.prepare([kernel_spec(*OVERHEAD_KERNEL)], progress=lambda *_: None)[0]
    if prepared.record is None or not prepared.ok:
        raise NnmeterError(
            f"the trivial model ({OVERHEAD_KERNEL[0]} {OVERHEAD_KERNEL[1]}) does not convert: {prepared.error}"
        )
    record = session.measure([prepared.record], progress=lambda *_: None)[0]
    if record.latency_ms is None:
        raise NnmeterError(f"the trivial model could not be measured: {record.status.value}: {record.error}")
    return record.latency_ms


#: The calibration models of the model correction, as (families, resolutions): NAS-style models drawn with a
#: seed of their own, so never the evaluation set's; 0.6-14 MB of weights at small resolutions, and wide ResNets
#: whose weights climb in even steps (15, 36, 80, 183 MB) at 64 px, where their weights, not their work, set their
#: latency.
CALIBRATION_SETS = (
    (("nas-mbv2", "nas-resnet", "nas-shuffle", "nas-inception"), (96, 128)),
    (("nas-resnet-wide",), (64,)),
)
CALIBRATION_PER_FAMILY = 4
CALIBRATION_SEED = 7919
#: Fewer calibration models than this with a measurement and a full prediction: no correction is fitted.
MIN_CALIBRATION_MODELS = 4


def fit_model_correction(
    weight_mb: Sequence[float],
    whole_ms: Sequence[float],
    kernel_sum_ms: Sequence[float],
    refetched_mb: Sequence[float] | None = None,
    private_cache_mb: float = 0.0,
    predicted_kernel_sum_ms: Sequence[float] | None = None,
) -> ModelCorrection:
    """The correction (:class:`ModelCorrection`) that predicts ``whole_ms`` from ``kernel_sum_ms``, ``weight_mb``
    and ``refetched_mb`` best, each form fitted on relative error by non-negative least squares: none; a factor
    on the kernels (``scale``); a term on the weights above a threshold (``ms_per_mb * max(0, weight_mb - t)``,
    each candidate threshold -- 0 and every model's weight size -- tried); both; and, when the refetched
    weights are given (they need the device's ``private_cache_mb``), the factor and a term on them, with and
    without the weight term. The form is chosen by its leave-one-out error, so that one does not win by
    fitting a few models' noise (the threshold search can).

    With ``predicted_kernel_sum_ms`` (the kernels' sum as the regressors predict it), the correction also states
    its interval: the :func:`~nnmeter.training.metrics.conformal_quantile` of each model's |log ratio| of the
    predicted sum, corrected by the form fitted without that model, to its whole latency (kernels' errors inside
    one model are not independent: whole models calibrate them together)."""
    w, m, p = (np.asarray(a, dtype=float) for a in (weight_mb, whole_ms, kernel_sum_ms))
    r = np.zeros_like(w) if refetched_mb is None else np.asarray(refetched_mb, dtype=float)
    if not (w.shape == m.shape == p.shape == r.shape) or w.size == 0 or np.any(m <= 0) or np.any(p <= 0):
        raise ValueError(
            "fit_model_correction: needs equally many weights, whole (> 0) and kernel-sum (> 0) "
            "latencies (and refetched weights, when given)"
        )
    forms = [(False, False, False), (True, False, False), (False, False, True), (True, False, True)]
    if refetched_mb is not None and private_cache_mb > 0 and np.any(r > 0):
        forms += [(True, True, False), (True, True, True)]

    def fit(form: tuple[bool, bool, bool], keep: Any = slice(None)) -> ModelCorrection:
        return _fitted_correction(w[keep], m[keep], p[keep], r[keep], *form, private_cache_mb=private_cache_mb)

    def loo_error(form: tuple[bool, bool, bool]) -> float:
        errors = (
            [fit(form, np.arange(w.size) != i).apply(p[i], 1e6 * w[i], 1e6 * r[i]) / m[i] - 1 for i in range(w.size)]
            if w.size > 1
            else [0.0]
        )
        return float(np.mean(np.square(errors)))

    form = min(forms, key=loo_error)
    best = fit(form)
    residual = float(np.sqrt(np.mean((best.apply(p, 1e6 * w, 1e6 * r) / m - 1) ** 2)))
    interval = None
    if predicted_kernel_sum_ms is not None and w.size > 1:
        q = np.asarray(predicted_kernel_sum_ms, dtype=float)
        if q.shape != m.shape or np.any(q <= 0):
            raise ValueError("fit_model_correction: needs one predicted kernel sum (> 0) per model")
        loo = [fit(form, np.arange(w.size) != i).apply(q[i], 1e6 * w[i], 1e6 * r[i]) for i in range(w.size)]
        interval = conformal_quantile(np.abs(np.log(np.maximum(np.asarray(loo, dtype=float), 1e-9) / m)))
    return dataclasses.replace(best, fitted_on=int(w.size), residual=residual, interval_log_ratio=interval)


def _fitted_correction(
    w: np.ndarray,
    m: np.ndarray,
    p: np.ndarray,
    r: np.ndarray,
    scale: bool,
    refetch: bool,
    weight: bool,
    private_cache_mb: float,
) -> ModelCorrection:
    """One form of :func:`fit_model_correction`: the factor (else 1), the refetch term and the weight term (each
    else 0) that fit best on relative error, for the weight term at the best of the candidate thresholds."""
    if not (scale or refetch or weight):
        return ModelCorrection(0.0, 0.0)
    best: tuple[float, np.ndarray, float] | None = None
    for threshold in np.unique(np.concatenate([[0.0], w])) if weight else [0.0]:
        terms = [p] * scale + [r] * refetch + [np.maximum(0.0, w - threshold)] * weight
        design = np.column_stack(terms) / m[:, None]
        # with no factor, the terms fit what the model pays beyond its kernels, relative to its latency
        coef, norm = nnls(design, np.ones(len(m)) if scale else (m - p) / m)
        if (not scale or coef[0] > 0) and (best is None or norm < best[0] - 1e-12):
            best = (norm, coef, float(threshold))
    if best is None:  # no threshold leaves the kernels a positive factor
        return _fitted_correction(w, m, p, r, True, False, False, private_cache_mb)
    _, coef, threshold = best
    values = iter(coef)
    factor = float(next(values)) if scale else 1.0
    refetch_slope = float(next(values)) if refetch else 0.0
    slope = float(next(values)) if weight else 0.0
    return ModelCorrection(
        slope,
        threshold if slope > 0 else 0.0,
        scale=factor,
        ms_per_refetched_mb=refetch_slope,
        private_cache_mb=private_cache_mb if refetch else 0.0,
    )


@dataclass(frozen=True)
class CalibrationModel:
    """A calibration model measured whole and as the sum of its standalone kernels (the overhead paid once)."""

    name: str
    weight_mb: float
    whole_ms: float
    kernels_ms: float
    refetched_mb: float = 0.0  # see :func:`nnmeter.predictor.engine.refetched_weight_bytes`
    predicted_kernels_ms: float | None = None  # the kernels' sum as the trained regressors predict it


def calibrate_model_correction(
    session: MeasuringSession,
    kernel_types: Sequence[str],
    rules: FusionRules,
    overhead_ms: float,
    kernels_predictor: Predictor | None = None,
) -> ModelCorrection:
    """The model correction fitted on :func:`calibration_models`, with its interval when ``kernels_predictor``
    (the trained regressors, uncorrected) is given; NnmeterError when too few models can be used."""
    info = session.backend.device_info
    private_cache_mb = private_cache_bytes(info.facts if info is not None else {}) / 1e6
    rows = calibration_models(session, kernel_types, rules, overhead_ms, private_cache_mb, kernels_predictor)
    if len(rows) < MIN_CALIBRATION_MODELS:
        planned = CALIBRATION_PER_FAMILY * sum(len(families) for families, _ in CALIBRATION_SETS)
        raise NnmeterError(
            f"only {len(rows)} of {planned} calibration "
            f"models could be measured whole and kernel by kernel (at least "
            f"{MIN_CALIBRATION_MODELS} are needed)"
        )
    return fit_model_correction(
        [r.weight_mb for r in rows],
        [r.whole_ms for r in rows],
        [r.kernels_ms for r in rows],
        [r.refetched_mb for r in rows],
        private_cache_mb,
        _all_predicted(rows),
    )


def _all_predicted(rows: Sequence[CalibrationModel]) -> list[float] | None:
    """Every row's predicted kernel sum, or None when a row has none."""
    predicted = [r.predicted_kernels_ms for r in rows if r.predicted_kernels_ms is not None]
    return predicted if len(predicted) == len(rows) else None


def private_cache_bytes(facts: Mapping[str, str]) -> float:
    """The measuring core's private cache in bytes from a device's facts (``private_cache_kb``); 0 when they do
    not say (then the model correction has no refetch term)."""
    try:
        return max(0.0, 1024.0 * float(facts.get("private_cache_kb", 0)))
    except ValueError:
        return 0.0


def calibration_models(
    session: MeasuringSession,
    kernel_types: Sequence[str],
    rules: FusionRules,
    overhead_ms: float,
    private_cache_mb: float = 0.0,
    kernels_predictor: Predictor | None = None,
) -> list[CalibrationModel]:
    """Measure the calibration models whole and kernel by kernel, each model next to its kernels (through the
    store: stored measurements are reused); the models that could be, with their numbers (and their kernels'
    sum as ``kernels_predictor`` predicts it, when given)."""
    zoo = [
        m
        for families, resolutions in CALIBRATION_SETS
        for m in evaluation_set(families, CALIBRATION_PER_FAMILY, resolutions, CALIBRATION_SEED)
    ]
    specs = [
        ModelSpec(
            "evaluation",
            f"calibration-{m.name}",
            {"family": m.family, "purpose": "calibration", **m.params},
            build_zoo_model,
            (m.family, f"calibration-{m.name}", dict(m.params)),
        )
        for m in zoo
    ]
    prepared = [p for p in session.prepare(specs, description="converting calibration models") if p.ok]
    detected = []  # the models the packaged kernels predict entirely, with their graphs and kernels
    for p in prepared:
        try:
            graph = to_graph(str(p.file.path))  # type: ignore[union-attr]
            detection = detect(graph, rules, frozenset(kernel_types))
        except Exception:  # a format the engine does not read: the model cannot calibrate, the others can
            continue
        if detection.kernels and not detection.unsupported:
            detected.append((p, graph, detection.kernels))
    kernel_specs = [[kernel_spec(k.kernel, k.config) for k in kernels] for _, _, kernels in detected]
    prepared_kernels = iter(
        session.prepare([s for specs in kernel_specs for s in specs], description="converting their kernels")
    )
    kernels_of = [[next(prepared_kernels) for _ in specs] for specs in kernel_specs]
    # each model is measured next to its kernels, in their batch or the one that follows seconds later: the
    # correction is the ratio of the two, and a batch of the models alone can sit in a slow period of the host
    order = [r for (p, _, _), ks in zip(detected, kernels_of) for r in [p.record, *(k.record for k in ks if k.ok)]]
    measured = session.measure(order, description="measuring calibration models with their kernels") if order else []
    latency = {m.model_id: m.latency_ms for m in measured}
    rows = []
    for (p, graph, kernels), ks in zip(detected, kernels_of):
        whole_ms = latency.get(p.record.id)
        times = [latency.get(k.id) if k.ok else None for k in ks]
        if whole_ms is not None and all(t is not None for t in times):
            # each kernel measured alone paid the invoke overhead the model pays once
            kernels_ms = sum(times) - (len(times) - 1) * overhead_ms  # type: ignore[arg-type]
            rows.append(
                CalibrationModel(
                    p.spec.name,
                    weight_bytes(kernels) / 1e6,
                    whole_ms,
                    kernels_ms,
                    refetched_weight_bytes(kernels, 1e6 * private_cache_mb) / 1e6,
                    kernels_predictor.predict(graph).latency_ms if kernels_predictor is not None else None,
                )
            )
    return rows


def package_workspace(
    ws: Workspace,
    out_dir: Path | None = None,
    *,
    name: str | None = None,
    version: str = "1.0",
    kernels: Sequence[str] | None = None,
    overwrite: bool = False,
    reporter: Reporter = SILENT,
) -> PackageResult:
    """Write the predictor artifact of ``ws``; NnmeterError when nothing (valid) is trained."""
    setup, results = trained_kernels(ws)
    if setup is None or not results:
        raise NnmeterError(
            f"{ws.root}: no trained kernel regressors", f"train them first: nnmeter-build train {ws.root}"
        )
    wanted = list(kernels) if kernels else list(ws.campaign.kernels.kernels)
    unformed = kernels_to_train(ws)[1]  # left out on purpose, not missing (packaged if trained anyway)
    by_kernel = {r.kernel: r for r in results}
    missing = [k for k in (kernels or []) if k not in by_kernel]
    if missing:
        raise NnmeterError(
            f"no trained regressor for {', '.join(missing)} (trained: {', '.join(by_kernel)})",
            f"nnmeter-build train {ws.root} --kernel {missing[0]}",
        )
    payloads = {}
    for kernel in wanted:
        result = by_kernel.get(kernel)
        if result is None:
            continue
        path = ws.root / result.file
        if result.feature_schema_version != FEATURE_SCHEMA_VERSION:
            raise NnmeterError(
                f"kernel {kernel} was trained with feature schema {result.feature_schema_version}, "
                f"this nnmeter computes {FEATURE_SCHEMA_VERSION}",
                f"train it again: nnmeter-build train {ws.root} --kernel {kernel}",
            )
        if not path.is_file() or sha256_file(path) != result.sha256:
            raise NnmeterError(
                f"{path}: missing or changed since kernel {kernel} was trained",
                f"train it again: nnmeter-build train {ws.root} --kernel {kernel}",
            )
        payloads[kernel] = KernelPayload(load_ensemble(path), samples=result.samples, metrics=result.metrics.to_dict())
    rules_path = ws.rules_file
    rules = load_rules(rules_path) if rules_path.is_file() else default_rules()
    device = setup["device"]
    out = Path(out_dir) if out_dir is not None else ws.predictor_dir
    overhead, overhead_error, correction, correction_error = 0.0, "", None, ""
    try:
        with ws.connect() as backend:
            session = ws.session(backend, reporter=reporter)
            overhead = invoke_overhead_ms(session)
            trained = _TrainedKernels(rules, {k: p.ensemble for k, p in payloads.items()}, overhead)
            try:
                correction = calibrate_model_correction(session, list(payloads), rules, overhead, Predictor(trained))
            except NnmeterError as err:
                correction_error = str(err)
    except NnmeterError as err:  # a phone that is not plugged in: the predictor is still usable, a bit off
        overhead_error = correction_error = str(err)
    written = write_artifact(
        out,
        name=name or _default_name(setup["backend"], device.get("id", "")),
        version=version,
        device=device,
        backend=setup["backend"],
        protocol={"key": setup["protocol_key"], **setup["protocol"]},
        rules=rules,
        kernels=payloads,
        overwrite=overwrite,
        invoke_overhead_ms=overhead,
        model_correction=correction,
        interval_coverage=INTERVAL_COVERAGE,
        description=f"kernel regressors of {ws.root.resolve().name}; fusion rules: "
        f"{'measured' if rules_path.is_file() else 'defaults (no measured rules in the workspace)'}",
    )
    return PackageResult(
        written,
        tuple(payloads),
        str(rules_path) if rules_path.is_file() else "default",
        tuple(k for k in wanted if k not in payloads and k not in unformed),
        overhead,
        overhead_error,
        correction,
        correction_error,
    )


@dataclass(frozen=True)
class _TrainedKernels:
    """Trained regressors not yet packaged, as the engine reads an artifact (no model correction)."""

    rules: FusionRules
    ensembles: Mapping[str, TreeEnsemble]
    invoke_overhead_ms: float

    @property
    def kernels(self) -> frozenset[str]:
        return frozenset(self.ensembles)

    def predict(self, kernel: str, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.ensembles[kernel].predict(X))


def _default_name(backend: str, device: str) -> str:
    """``<backend>-<device>`` made safe as a folder and registry name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{backend}-{device}").strip("-")

"""The campaign report: ``ws/reports/index.html``, one self-contained file (inline CSS and SVG, no script).

:func:`write_report` gathers what the workspace holds (the evaluation, the
packaged predictor's kernel metrics, the fusion rules, the store's measurements
and the device facts) and renders ``templates/report.html.j2``. Every section
says plainly when its step has not run yet, so the report can be written at
any point of a campaign.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2

from nnmeter import __version__
from nnmeter.builder import state, svg
from nnmeter.builder.evaluate import EVALUATION_FILE
from nnmeter.builder.workspace import Workspace, write_text_atomic
from nnmeter.evaluation import METHODS, NNMETER, EvaluationResult
from nnmeter.predictor.artifact import MANIFEST, read_manifest
from nnmeter.predictor.rules import MON_NAMES, FusionRules, load_rules

REPORT_FILE = "index.html"

#: Model kind in the store -> the campaign step that measured it.
STEP_OF_KIND = {"rule-case": "rules", "kernel": "kernels", "evaluation": "evaluation", "user": "user models"}


@dataclass(frozen=True)
class KernelRow:
    """A kernel regressor's held-out scores, as the report shows them."""

    kernel: str
    samples: int
    rmse_ms: float | None
    rmspe: float | None  # percent
    within_5: float | None
    within_10: float | None
    regressor: str


@dataclass(frozen=True)
class StepCost:
    """Device time one campaign step took: models measured, their measurements, failures."""

    step: str
    models: int
    measurements: int
    failed: int
    device_minutes: float


@dataclass(frozen=True)
class KernelSamples:
    kernel: str
    samples: int
    device_minutes: float


def render_report(
    *,
    title: str,
    workspace: str,
    evaluation: EvaluationResult | None,
    kernels: Sequence[KernelRow] = (),
    rules: FusionRules | None = None,
    steps: Sequence[StepCost] = (),
    samples: Sequence[KernelSamples] = (),
    device: Mapping[str, Any] | None = None,
    generated_at: str | None = None,
) -> str:
    """The report's HTML from plain values (no workspace needed: tests render synthetic data)."""
    template = resources.files("nnmeter.builder").joinpath("templates/report.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    total = sum(s.device_minutes for s in steps)
    cost = {
        "steps": list(steps),
        "samples": list(samples),
        "total_minutes": total,
        "total_models": sum(s.models for s in steps),
        "total_measurements": sum(s.measurements for s in steps),
        "total_failed": sum(s.failed for s in steps),
        "plot": svg.hbars([(s.step, s.device_minutes) for s in steps], title="device minutes per step"),
    }
    return env.from_string(template).render(
        title=title,
        workspace=workspace,
        version=__version__,
        generated_at=generated_at or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        evaluation=_evaluation_context(evaluation) if evaluation is not None and evaluation.models else None,
        kernels=list(kernels),
        rules=_rules_context(rules) if rules is not None and rules.pairs else None,
        cost=cost,
        device=dict(device or {}),
    )


def _evaluation_context(result: EvaluationResult) -> dict[str, Any]:
    methods = [m for m in METHODS if m in result.methods] or [NNMETER]
    scored = result.scored
    by_family: dict[str, list[tuple[float, float, str]]] = {}
    for m in scored:
        by_family.setdefault(m.family, []).append(
            (
                m.measured_ms,
                m.predictions[NNMETER],
                f"{m.name}: measured {m.measured_ms:.3f} ms, predicted {m.predictions[NNMETER]:.3f} ms",
            )
        )
    histograms = []
    for i, method in enumerate(methods):
        errors = [100 * e for e in (m.relative_error(method) for m in scored) if e is not None]
        histograms.append(
            svg.histogram(errors, title=f"{method}: predicted vs measured", colour=svg.PALETTE[i % len(svg.PALETTE)])
        )
    return {
        "overall": {method: result.metrics(method) for method in methods},
        "repeatability": result.repeatability(),
        "unsteady": result.unsteady_ground_truth(),
        "methods": methods,
        "notes": dict(result.notes),
        "per_family": [
            {
                "family": f,
                "metrics": {method: result.metrics(method, f) for method in methods},
                "repeatability": result.repeatability(f),
            }
            for f in result.families
        ],
        "models": list(result.models),
        "scatter_all": svg.scatter_log(by_family, title="nnmeter: all models", width=560, height=480),
        "scatter_families": [
            svg.scatter_log({f: pts}, title=f, width=300, height=270, first_colour=i)
            for i, (f, pts) in enumerate(by_family.items())
        ],
        "histograms": histograms,
    }


def _rules_context(rules: FusionRules) -> dict[str, Any]:
    rows = []
    for rule in sorted(rules.pairs.values(), key=lambda r: (r.op1, r.op2)):
        fused = "undecided" if rule.obey is None else ("fused" if rule.obey else "separate")
        notes = "; ".join(x for x in ("inside the noise" if rule.uncertain else "", rule.error) if x)
        rows.append(
            {
                "op1": rule.op1,
                "op2": rule.op2,
                "fused": fused,
                "margin": rule.margin,
                "confidence": rule.confidence,
                "notes": notes,
                "t1": rule.t1.median_ms if rule.t1 else None,
                "t2": rule.t2.median_ms if rule.t2 else None,
                "t12": rule.t12.median_ms if rule.t12 else None,
            }
        )
    mon = rules.mon.value if rules.mon is not None else None
    return {
        "pairs": rows,
        "alpha": rules.alpha,
        "mon": "undecided" if mon is None else f"{mon} (fuse with {MON_NAMES[mon]} consumers)",
    }


# --- gathering from a workspace ----------------------------------------------


def campaign_cost(ws: Workspace) -> tuple[list[StepCost], list[KernelSamples]]:
    """Device minutes per step and samples per kernel, from the newest measurement of each model.

    Counts every device/backend/protocol setup the store holds; an evaluation model measured
    twice for repeatability also counts its first pass (recorded by the evaluation).
    """
    store = ws.store
    per_step: dict[str, list[float]] = {}  # step -> [models, measurements, failed, seconds]
    per_kernel: dict[str, list[float]] = {}
    for setup in store.summary().setups:
        for model, meas in store.latest_measurements(setup.device, setup.backend, setup.protocol_key):
            step = STEP_OF_KIND.get(model.kind, model.kind)
            row = per_step.setdefault(step, [0, 0, 0, 0.0])
            row[0] += 1
            row[1] += 1
            row[2] += 0 if meas.status.has_latency else 1
            row[3] += meas.device_seconds
            if model.kind == "kernel":
                k = per_kernel.setdefault(str(model.config.get("kernel", model.name)), [0, 0.0])
                k[0] += 1 if meas.status.has_latency else 0
                k[1] += meas.device_seconds
    if "evaluation" in per_step:  # the first of the evaluation's two passes, per setup
        for first_pass in (store.get_state(state.EVALUATION_FIRST_PASS, {}) or {}).values():
            per_step["evaluation"][1] += len(first_pass.get("latency_ms", {}))
            per_step["evaluation"][3] += float(first_pass.get("device_seconds", 0.0))
    order = list(STEP_OF_KIND.values())
    steps = [
        StepCost(step, int(v[0]), int(v[1]), int(v[2]), v[3] / 60)
        for step, v in sorted(per_step.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    ]
    samples = [KernelSamples(k, int(v[0]), v[1] / 60) for k, v in sorted(per_kernel.items())]
    return steps, samples


def write_report(ws: Workspace, evaluation_path: Path | None = None, out: Path | None = None) -> Path:
    """Render ``out`` (default ``ws/reports/index.html``) from what the workspace holds, with the evaluation
    at ``evaluation_path`` (default ``ws/reports/evaluation.json``); its path."""
    evaluation_path = evaluation_path or ws.reports_dir / EVALUATION_FILE
    evaluation = EvaluationResult.load(evaluation_path) if evaluation_path.is_file() else None
    rules_path = ws.rules_file
    rules = load_rules(rules_path) if rules_path.is_file() else None
    kernels, device = _predictor_facts(ws)
    if evaluation is not None:
        device = {**device, **{k: v for k, v in evaluation.device.items() if k not in device}}
    steps, samples = campaign_cost(ws)
    html = render_report(
        title=f"{ws.campaign.backend_name} on {device.get('device', 'this device')}",
        workspace=str(ws.root),
        evaluation=evaluation,
        kernels=kernels,
        rules=rules,
        steps=steps,
        samples=samples,
        device=device,
    )
    out = out or ws.reports_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    with ws.lock():
        return write_text_atomic(out, html)


def _predictor_facts(ws: Workspace) -> tuple[list[KernelRow], dict[str, Any]]:
    """Kernel rows and device facts from the packaged predictor's manifest (none before packaging).

    The kernel metrics are the builder's held-out scores (``LatencyMetrics``: rmse_ms, rmspe, acc5, acc10).
    """
    folder = ws.predictor_dir
    if not (folder / MANIFEST).is_file():
        return [], {}
    manifest = read_manifest(folder)
    rows = [
        KernelRow(
            name,
            entry.samples,
            _opt(entry.metrics.get("rmse_ms")),
            _opt(entry.metrics.get("rmspe")),
            _opt(entry.metrics.get("acc5")),
            _opt(entry.metrics.get("acc10")),
            entry.regressor,
        )
        for name, entry in sorted(manifest.kernels.items())
    ]
    device = dict(manifest.device)
    facts = {
        "device": device.pop("id", ""),
        "backend": manifest.backend,
        "predictor": f"{manifest.name} {manifest.version} (built {manifest.created})",
    }
    for key in ("description", "runtime"):
        if key in device:
            facts[key] = device.pop(key)
    for key in ("runtime_versions", "facts"):
        facts.update({str(k): v for k, v in (device.pop(key, None) or {}).items()})
    facts.update({str(k): v for k, v in device.items()})
    facts["protocol"] = ", ".join(f"{k}={v}" for k, v in manifest.protocol.items() if not isinstance(v, dict))
    facts["invoke overhead"] = f"{1000 * manifest.invoke_overhead_ms:.1f} us"
    mc = manifest.model_correction
    facts["model correction"] = mc.describe() if mc else "none"
    facts["drift correction"] = ws.store.drift_check(
        facts["device"], manifest.backend, ws.campaign.protocol.key()
    ).describe()
    facts.update({f"library {k}": v for k, v in manifest.libraries.items()})
    return rows, facts


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)

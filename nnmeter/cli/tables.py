"""The tables of ``nnmeter-build``, as plain cells (:class:`~nnmeter.cli.render.Table`); render draws them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Mapping, Sequence

from nnmeter import ops
from nnmeter.cli.render import Table
from nnmeter.predictor.rules import MON_NAMES, FusionRules, Measured, PairRule

if TYPE_CHECKING:  # the types of what is shown; their modules load scikit-learn and TensorFlow's kin
    from nnmeter.backends import BackendEntry
    from nnmeter.builder.kernels import KernelResult
    from nnmeter.builder.steps import StepResult
    from nnmeter.evaluation import EvaluationResult, Metrics
    from nnmeter.measurement import MeasurementRecord, ModelRecord, StoreSummary
    from nnmeter.predictor.engine import PredictionResult
    from nnmeter.predictor.registry import InstalledPredictor


def measurements(records: Sequence[ModelRecord], results: Sequence[MeasurementRecord]) -> Table:
    """One row per model: the statistics of its measurement, or its status."""
    by_id = {m.model_id: m for m in results}
    table = Table(
        "latency in ms (median: over rounds of each round's median)",
        ("model", "median", "mean", "std", "min", "p90", "runs", "rounds", "spread", "status"),
        right=("median", "mean", "std", "min", "p90", "runs", "rounds", "spread"),
    )
    for rec in records:
        m = by_id[rec.id]
        s = m.stats if m.status.has_latency else None
        numbers = (
            [
                *map(ms, (s.median_ms, s.mean_ms, s.std_ms, s.min_ms, s.p90_ms)),
                str(s.runs),
                str(s.rounds),
                f"{s.spread:.1%}",
            ]
            if s
            else ["-"] * 8
        )
        table.add(rec.name, *numbers, m.status.value)
    return table


def ms(value: float) -> str:
    """Milliseconds with about four significant digits, in at most 7 characters."""
    return f"{value:.1f}" if value >= 100 else f"{value:.3f}" if value >= 1 else f"{value:.4f}"


def store_kinds(summary: StoreSummary) -> Table:
    statuses = sorted({s for counts in summary.statuses.values() for s in counts})
    table = Table(
        "models, by the status of their newest measurement", ("kind", "models", *statuses), right=("models", *statuses)
    )
    for kind, n in summary.models.items():
        table.add(kind, n, *[summary.statuses[kind].get(s, 0) for s in statuses])
    return table


def store_setups(summary: StoreSummary, current: tuple[str, str]) -> Table:
    table = Table(
        "measurement setups (* = the campaign's backend and protocol; rows: measurements stored; "
        "statuses: of each model's newest)",
        ("device", "backend", "protocol", "models", "rows", "device s", "statuses"),
        right=("models", "rows", "device s"),
    )
    for g in summary.setups:
        mark = "*" if (g.backend, g.protocol_key) == current else ""
        table.add(
            g.device,
            g.backend,
            g.protocol_key + mark,
            g.models,
            g.measurements,
            f"{g.device_seconds:.1f}",
            ", ".join(f"{k} {v}" for k, v in g.statuses.items()),
        )
    return table


def store_units(summary: StoreSummary) -> Table:
    """A lab's units: what the store holds of each (measurements with a unit)."""
    table = Table(
        "lab units (measurements stored per unit)",
        ("unit", "host", "rows", "models", "device s", "last"),
        right=("rows", "models", "device s"),
    )
    for u in summary.units:
        table.add(
            u.unit,
            u.host,
            u.measurements,
            u.models,
            f"{u.device_seconds:.1f}",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(u.last_at)),
        )
    return table


def backends(entries: Sequence[BackendEntry]) -> Table:
    table = Table(
        "backends (entry-point group nnmeter.backends)", ("name", "usable", "device and runtime / why not usable here")
    )
    for b in entries:
        table.add(b.name, "yes" if b.usable else "no", b.description if b.usable else b.reason)
    return table


def kernel_types() -> Table:
    table = Table("kernels", ("kernel", "ops", "inputs", "config keys", "what it is"))
    for k in ops.KERNELS.values():
        table.add(k.name, " -> ".join(k.ops), "2-4" if ops.CINS in k.keys else k.inputs, " ".join(k.keys), k.doc)
    return table


def config_keys() -> Table:
    table = Table("config keys", ("key", "valid values"))
    for key in dict.fromkeys(key for k in ops.KERNELS.values() for key in k.keys):
        table.add(key, ops.describe_range(key))
    return table


def installed_predictors(found: Sequence[InstalledPredictor]) -> Table:
    """One row per predictor folder; an unreadable one shows its error. ``origin``: built by nnmeter, or where
    it was imported from (nn-Meter). ``digest`` (the sha256 of its manifest) is what
    ``load_predictor(..., sha256=...)`` and ``predictors --verify`` pin."""
    table = Table(
        "installed predictors",
        ("name", "version", "device", "backend", "origin", "kernels", "±10 % median / worst", "digest", "path"),
    )
    for p in found:
        if p.error:
            table.add("unreadable", "", "", "", "", "", p.error, "", p.path)
            continue
        m = p.metrics
        acc = f"{100 * m['acc10_median']:.1f} % / {100 * m['acc10_worst']:.1f} % ({m['worst_kernel']})" if m else "-"
        origin = p.origin or "built by nnmeter"
        table.add(
            p.name, p.version, p.device_description or p.device, p.backend, origin, p.kernels, acc, p.digest, p.path
        )
    return table


def predictions(name: str, results: Sequence[PredictionResult], interval_coverage: float = 0.0) -> Table:
    """Model, latency, its interval at ``interval_coverage`` (when the predictor states one), kernels, coverage."""
    interval = f"{100 * interval_coverage:.0f} % interval ms"
    table = Table(
        f"predicted latency on {name}",
        ("model", "latency ms", interval, "kernels", "coverage", "left out"),
        right=("latency ms", interval, "kernels", "coverage"),
    )
    for r in results:
        left = ", ".join(sorted({u.ops for u in r.unsupported})) or "-"
        span = "-" if r.interval_ms is None else f"{r.interval_ms[0]:.3f} - {r.interval_ms[1]:.3f}"
        table.add(r.model, f"{r.latency_ms:.3f}", span, len(r.kernels), f"{100 * r.coverage:.1f} %", left)
    return table


def kernel_results(results: Sequence[KernelResult], errors: Mapping[str, str]) -> Table:
    """Kernel, samples, RMSE, RMSPE, +-5 %, +-10 % on its held-out configs, device minutes, regressor."""
    table = Table(
        "kernel regressors (scores on held-out prior configs)",
        ("kernel", "samples", "RMSE ms", "RMSPE %", "±5 %", "±10 %", "±10 % <0.05 ms", "device min", "regressor"),
        right=("samples", "RMSE ms", "RMSPE %", "±5 %", "±10 %", "±10 % <0.05 ms", "device min"),
    )
    for r in results:
        m = r.metrics
        fast = "-" if m.acc10_fast is None else f"{100 * m.acc10_fast:.0f} % of {m.fast}"
        samples = (
            f"{r.samples}"
            + (f" ({r.failed} failed)" if r.failed else "")
            + (f" + {r.family_samples} family" if r.family_samples else "")
        )
        table.add(
            r.kernel,
            samples,
            f"{m.rmse_ms:.4f}",
            f"{m.rmspe:.1f}",
            f"{100 * m.acc5:.1f}",
            f"{100 * m.acc10:.1f}",
            fast,
            f"{r.device_seconds / 60:.1f}",
            r.regressor,
        )
    for kernel, message in errors.items():
        table.add(kernel, "-", "-", "-", "-", "-", "-", "-", "failed: " + message.splitlines()[0])
    return table


def steps(results: Sequence[StepResult]) -> Table:
    table = Table("campaign steps", ("step", "status", "time", "result"), right=("time",))
    for r in results:
        table.add(r.step, r.status.value, "-" if r.status.value == "up to date" else f"{r.seconds:.0f} s", r.detail)
    return table


def evaluation(result: EvaluationResult) -> Table:
    """Per method (and the second measurement), overall and per family: +-5 %, +-10 %, RMSPE, Spearman."""
    table = Table(
        f"evaluation: {len(result.scored)} of {len(result.models)} models measured and predicted",
        ("scope", "method", "models", "±5 %", "±10 %", "RMSPE %", "RMSE ms", "Spearman"),
        right=("models", "±5 %", "±10 %", "RMSPE %", "RMSE ms", "Spearman"),
    )

    def row(scope: str, method: str, m: Metrics) -> None:
        if m.n:
            table.add(
                scope,
                method,
                m.n,
                f"{100 * m.within_5:.1f}",
                f"{100 * m.within_10:.1f}",
                f"{m.rmspe:.1f}",
                f"{m.rmse_ms:.3f}",
                "-" if m.spearman is None else f"{m.spearman:.3f}",
            )

    for scope in (None, *result.families):
        for method in result.methods:
            row(scope or "all", method, result.metrics(method, scope))
        row(scope or "all", "2nd measurement", result.repeatability(scope))
        if scope is None:
            table.section()
    return table


def fusion_rules(rules: FusionRules, *, undecided: bool = False) -> Table:
    """The decided pairs (and, with ``undecided``, the others too), then MON."""
    table = Table(
        f"fusion rules: {rules.backend or '?'} on {rules.device or '?'} (alpha {rules.alpha:g})",
        ("op pair", "T1 ms", "T2 ms", "T12 ms", "margin [95% CI]", "fused?", "confidence", "passes"),
        right=("T1 ms", "T2 ms", "T12 ms", "margin [95% CI]", "confidence", "passes"),
    )
    for rule in rules.pairs.values():
        if rule.obey is None and not undecided:
            continue
        table.add(
            f"{rule.op1} -> {rule.op2}",
            _measured(rule.t1),
            _measured(rule.t2),
            _measured(rule.t12),
            _margin(rule),
            _fused(rule),
            _confidence(rule.confidence),
            rule.passes or "",
        )
    if rules.mon is not None:
        mon = rules.mon
        what = "?" if mon.value is None else f"{mon.value} ({MON_NAMES[mon.value]})"
        block = mon.latencies_ms.get("block")
        table.add(
            "MON (op with several consumers)",
            "",
            "",
            f"{block:.4g}" if block is not None else "",
            "",
            what,
            _confidence(mon.confidence),
            mon.passes or "",
        )
    return table


def fusion_summary(rules: FusionRules) -> list[str]:
    """Counts, the uncertain decisions, and what could not be decided grouped by reason."""
    decided = [r for r in rules.pairs.values() if r.obey is not None]
    fused = [r for r in decided if r.obey]
    lines = [f"{len(decided)} pairs decided: {len(fused)} fused, {len(decided) - len(fused)} not fused"]
    empty = next((r.t0 for r in decided if r.t0 is not None), None)
    if empty is not None:
        lines.append(f"cost of one inference (empty model), taken off every margin: {empty.median_ms:.4g} ms")
    uncertain = rules.uncertain()
    if uncertain:
        lines.append(
            f"uncertain (margin inside the noise between passes after re-measuring; decided by the "
            f"mean margin, may differ between runs): {', '.join(uncertain)}"
        )
    groups: dict[str, list[str]] = {}
    for rule in rules.pairs.values():
        if rule.obey is None:
            groups.setdefault(_reason(rule), []).append(rule.key)
    if rules.mon is not None and rules.mon.value is None:
        groups.setdefault(rules.mon.error or "not decided", []).append("MON")
    for reason, keys in groups.items():
        lines.append(f"not decided ({len(keys)}): {reason}: {', '.join(keys)}")
    return lines


def _reason(rule: PairRule) -> str:
    """The error with the pair-specific part dropped where many pairs share it."""
    if "cannot be connected" in rule.error:
        return "the ops cannot be connected (a vector op next to a feature-map op)"
    if rule.error.startswith("unknown op"):
        return rule.error.split(";")[0]
    return rule.error or "not decided"


def _measured(m: Measured | None) -> str:
    return "" if m is None else f"{m.median_ms:.4g} ±{100 * m.median_ci:.0f}%"


def _margin(rule: PairRule) -> str:
    if rule.margin is None:
        return ""
    if rule.margin_low is None or rule.margin_high is None:
        return f"{rule.margin:+.2f}"
    return f"{rule.margin:+.2f} [{rule.margin_low:+.2f}, {rule.margin_high:+.2f}]"


def _fused(rule: PairRule) -> str:
    if rule.obey is None:
        return f"? ({rule.error})" if rule.error else "?"
    return ("yes" if rule.obey else "no") + (" (uncertain)" if rule.uncertain else "")


def _confidence(confidence: float | None) -> str:
    return "" if confidence is None else f"{100 * confidence:.0f}%"

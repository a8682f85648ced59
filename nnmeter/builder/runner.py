"""``nnmeter-build run``: a campaign's steps in order, each skipped when it is up to date.

Steps: ``rules`` (fusion test) -> ``kernels`` (sample, measure, train) ->
``package`` (the predictor artifact) -> ``evaluate`` (real models measured and
predicted) -> ``report`` (``reports/index.html``).

Up to date means: the step finished before with the same *fingerprint* (a hash
of the campaign settings it depends on and of the fingerprints of the steps it
consumes) and its output is still there. The fingerprint is stored in the store's
state only when a step finishes without failures, so a step that was killed, or
that left some kernel untrained, runs again; running again is cheap because every
measurement it already took is in the store and is reused.

Interrupting (Ctrl-C or ``kill -9``) at any point loses at most the batch of
measurements in flight; sampling and training are seeded, so the resumed
campaign ends with the same predictor as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from nnmeter.builder.store import LATENCY_READING_VERSION
from nnmeter.errors import NnmeterError
from nnmeter.schema import section_to_dict

if TYPE_CHECKING:
    from nnmeter.builder.workspace import Workspace

STEPS = ("rules", "kernels", "package", "evaluate", "report")
_STATE = "campaign/step/"


@dataclass(frozen=True)
class StepResult:
    """What one step did in this run."""

    step: str
    status: str  # "ran", "up to date", "incomplete" (ran, some parts failed: runs again next time)
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class _Step:
    name: str
    doc: str
    depends: tuple[str, ...]  # steps whose outputs it consumes
    settings: Callable[["Workspace"], Any]  # the campaign settings its output depends on
    output_exists: Callable[["Workspace"], bool]
    run: Callable[["Workspace", Any, "RunOptions"], tuple[str, bool]]  # -> (detail, complete)


@dataclass(frozen=True)
class RunOptions:
    workers: int | None = None
    console: Any = None


def _setup(ws: "Workspace") -> dict[str, Any]:
    """What every measuring step depends on: the backend and its options, the protocol, and how the store reads
    a latency from a measurement (a new reading runs the steps again on the stored measurements)."""
    c = ws.campaign
    return {"backend": c.backend_name, "options": section_to_dict(c.backend_options), "protocol": c.protocol.key(),
            "latency_reading": LATENCY_READING_VERSION}


def _run_rules(ws: "Workspace", _backend: Any, opts: RunOptions) -> tuple[str, bool]:
    from nnmeter.rule_tester.runner import run_rule_test

    report = run_rule_test(ws, workers=opts.workers, console=opts.console)
    rules = report.rules
    undecided = rules.undecided()
    detail = f"{len(rules.pairs)} pairs, {len(rules.fused_pairs())} fused"
    if undecided:
        detail += f", {len(undecided)} undecided ({', '.join(undecided[:4])}{', ...' if len(undecided) > 4 else ''})"
    # undecided cases are data (the predictor reads them as not fused), not a reason to run again
    return detail, True


def _run_kernels(ws: "Workspace", _backend: Any, opts: RunOptions) -> tuple[str, bool]:
    from nnmeter.builder.training import kernels_to_train, results_table, train_workspace_kernels

    results, errors = train_workspace_kernels(ws, console=opts.console)
    if opts.console is not None:
        opts.console.print(results_table(results, errors))
    if not results:
        raise NnmeterError(f"no kernel could be trained ({len(errors)} failed)",
                           "see the table above; check the device with `nnmeter-build connect WS`")
    detail = f"{len(results)} kernels, {sum(r.samples for r in results)} samples"
    unformed = kernels_to_train(ws)[1]
    if unformed:
        detail += f"; not formed by the device's rules, not trained: {', '.join(unformed)}"
    if errors:
        detail += f"; failed: {', '.join(errors)}"
    return detail, not errors


def _run_package(ws: "Workspace", _backend: Any, opts: RunOptions) -> tuple[str, bool]:
    from nnmeter.builder.packaging import package_workspace

    result = package_workspace(ws, overwrite=True)
    detail = f"{result.path}: {len(result.kernels)} kernels, rules: {result.rules_source}"
    detail += f"; {result.calibration_summary()}"
    if result.skipped:
        detail += f"; not trained: {', '.join(result.skipped)}"
    return detail, True


def _run_evaluate(ws: "Workspace", backend: Any, opts: RunOptions) -> tuple[str, bool]:
    from nnmeter.builder.evaluation import NNMETER, evaluate_workspace, zoo_models

    models = zoo_models(ws, backend, opts.workers)
    result = evaluate_workspace(ws, backend, models)
    m = result.metrics(NNMETER)
    rep = result.repeatability()
    detail = (f"{m.n} of {len(result.models)} models scored: ±10 % {_pct(m.within_10)}, RMSPE {m.rmspe:.1f} %"
              + (f"; repeatability ±10 % {_pct(rep.within_10)}" if rep.n else ""))
    unsteady = result.unsteady_ground_truth()
    if unsteady:
        detail += f"; {unsteady}"
    # a model that fails to convert, measure or predict is a result (the report lists it), not a reason to
    # run the step again
    return detail, True


def _run_report(ws: "Workspace", _backend: Any, opts: RunOptions) -> tuple[str, bool]:
    from nnmeter.builder.report import write_report

    return str(write_report(ws)), True


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _kernels_settings(ws: "Workspace") -> dict[str, Any]:
    """The kernels step's settings, and the trainer's version: a new nnmeter whose features, tree format or
    regressor changed trains again (from the store, measuring nothing again)."""
    from nnmeter.builder.training import trainer_version

    return {**_setup(ws), "kernels": section_to_dict(ws.campaign.kernels),
            "trainer": trainer_version(ws.campaign.kernels)}


def _has_rules(ws: "Workspace") -> bool:
    return ws.rules_file.is_file()


def _has_kernels(ws: "Workspace") -> bool:
    from nnmeter.builder.training import trained_kernels

    return bool(trained_kernels(ws)[1])


def _has_predictor(ws: "Workspace") -> bool:
    from nnmeter.builder.packaging import default_artifact_dir
    from nnmeter.predictor.artifact import MANIFEST

    return (default_artifact_dir(ws) / MANIFEST).is_file()


def _has_evaluation(ws: "Workspace") -> bool:
    from nnmeter.builder.report import EVALUATION_FILE

    return (ws.reports_dir / EVALUATION_FILE).is_file()


_STEP_LIST = (
    _Step("rules", "fusion test: which op pairs run fused", (),
          lambda ws: {**_setup(ws), "rules": section_to_dict(ws.campaign.rules)}, _has_rules, _run_rules),
    # the kernels step consumes the rules: it trains only the kernel types they form (kernels_to_train)
    _Step("kernels", "sample, measure and train one regressor per kernel", ("rules",), _kernels_settings,
          _has_kernels, _run_kernels),
    _Step("package", "write the predictor artifact", ("rules", "kernels"), lambda ws: {}, _has_predictor,
          _run_package),
    _Step("evaluate", "measure and predict the evaluation models; baselines", ("package",),
          lambda ws: {**_setup(ws), "evaluation": section_to_dict(ws.campaign.evaluation)}, _has_evaluation,
          _run_evaluate),
    _Step("report", "write reports/index.html", (), lambda ws: None, lambda ws: False, _run_report),
)
assert tuple(s.name for s in _STEP_LIST) == STEPS


def fingerprints(ws: "Workspace") -> dict[str, str]:
    """Each step's fingerprint for the campaign as it is now (settings, then upstream fingerprints)."""
    out: dict[str, str] = {}
    for step in _STEP_LIST:
        data = {"settings": step.settings(ws), "upstream": {d: out[d] for d in step.depends}}
        out[step.name] = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return out


def step_status(ws: "Workspace") -> dict[str, str]:
    """'up to date' or 'to run' per step, without running anything."""
    prints = fingerprints(ws)
    out = {}
    for step in _STEP_LIST:
        done = ws.store.get_state(_STATE + step.name) or {}
        fresh = done.get("fingerprint") == prints[step.name] and step.output_exists(ws)
        out[step.name] = "up to date" if fresh else "to run"
    return out


def run_campaign(ws: "Workspace", *, only: Sequence[str] | None = None, force: Sequence[str] = (),
                 workers: int | None = None, console: Any = None) -> list[StepResult]:
    """Run the campaign's steps (or ``only`` those), skipping the up-to-date ones unless named in ``force``.

    ``console`` (a rich Console) shows a header per step and the steps' own progress bars.
    """
    unknown = [s for s in (*(only or ()), *force) if s not in STEPS]
    if unknown:
        raise NnmeterError(f"{unknown[0]!r} is not a campaign step; steps: {', '.join(STEPS)}")
    selected = [s for s in _STEP_LIST if only is None or s.name in only]
    status = step_status(ws)
    prints = fingerprints(ws)
    opts = RunOptions(workers=workers, console=console)
    results: list[StepResult] = []
    stale: set[str] = set()  # steps that ran now or are not up to date: whatever consumes them runs too
    backend = None
    try:
        for i, step in enumerate(selected, 1):
            upstream_stale = any(d in stale or status[d] != "up to date" for d in step.depends)
            if status[step.name] == "up to date" and step.name not in force and not upstream_stale:
                results.append(StepResult(step.name, "up to date", 0.0,
                                          (ws.store.get_state(_STATE + step.name) or {}).get("detail", "")))
                _say(console, f"step {i}/{len(selected)} [bold]{step.name}[/bold]: up to date, skipped")
                continue
            if console is not None:
                console.rule(f"step {i}/{len(selected)}: {step.name} — {step.doc}")
            if step.name == "evaluate" and backend is None:
                backend = ws.connect()  # the other steps connect on their own
            stale.add(step.name)
            started = time.monotonic()
            detail, complete = step.run(ws, backend, opts)
            seconds = time.monotonic() - started
            if complete:
                ws.store.set_state(_STATE + step.name, {"fingerprint": prints[step.name], "detail": detail,
                                                        "seconds": seconds, "finished_at": time.time()})
            results.append(StepResult(step.name, "ran" if complete else "incomplete", seconds, detail))
            _say(console, f"{step.name}: {detail} ({seconds:.0f} s)")
    finally:
        if backend is not None:
            backend.close()
    return results


def results_table(results: Sequence[StepResult]) -> Any:
    from rich.table import Table

    table = Table(title="campaign steps")
    for col in ("step", "status", "time", "result"):
        table.add_column(col, justify="right" if col == "time" else "left")
    for r in results:
        style = {"incomplete": "yellow", "up to date": "dim"}.get(r.status, "")
        table.add_row(r.step, f"[{style}]{r.status}[/{style}]" if style else r.status,
                      f"{r.seconds:.0f} s" if r.status != "up to date" else "-", r.detail)
    return table


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text)



# --- the quickstart ------------------------------------------------------------------

QUICKSTART_CAMPAIGN = "quickstart.yaml"


def quickstart_workspace(root: "str | Path", console: Any = None) -> "Workspace":
    """The quickstart workspace at ``root``: made with the packaged quickstart campaign, or reopened to resume.

    A folder that is already a workspace is reopened as it is (its campaign.yaml is not replaced).
    """
    from importlib import resources

    from nnmeter.builder.workspace import CAMPAIGN_FILE, Workspace

    root = Path(root)
    if (root / CAMPAIGN_FILE).is_file():
        _say(console, f"resuming the campaign in {root}")
        return Workspace.open(root)
    ws = Workspace.create(root, "tflite-local")
    text = resources.files("nnmeter.configs").joinpath(QUICKSTART_CAMPAIGN).read_text(encoding="utf-8")
    tmp = ws.campaign_path.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(ws.campaign_path)
    _say(console, f"made the quickstart workspace {root} (campaign: {ws.campaign_path})")
    return Workspace.open(root)


def usage_text(ws: "Workspace") -> str:
    """Where the predictor and the report are, and how to use the predictor from Python."""
    from nnmeter.builder.packaging import default_artifact_dir
    from nnmeter.builder.report import REPORT_FILE

    artifact = default_artifact_dir(ws).resolve()
    report = (ws.reports_dir / REPORT_FILE).resolve()
    return f"""
predictor: {artifact}
report:    {report}

Use the predictor from Python:

    import nnmeter
    p = nnmeter.load_predictor("{artifact}")
    r = p.predict("model.tflite")          # or .onnx, .keras, a keras.Model, an nn-Meter IR .json
    print(r.latency_ms)                    # predicted latency on this device, in ms
    for k in r.kernels:                    # per-kernel breakdown
        print(k.kernel, k.config, round(k.ms, 3))

or from the shell:

    nnmeter-build predict --predictor {artifact} model.tflite
"""

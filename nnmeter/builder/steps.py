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

Interrupting (Ctrl-C, SIGTERM or ``kill -9``) at any point loses at most the batch of
measurements in flight; sampling and training are seeded and measurements never
change once stored, so the resumed campaign ends with the same predictor as an
uninterrupted one.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from nnmeter.backends.base import Backend
from nnmeter.builder import state
from nnmeter.builder.evaluate import EVALUATION_FILE, evaluate_workspace, zoo_models
from nnmeter.builder.kernels import train_workspace_kernels, trained_kernels, trainer_version
from nnmeter.builder.packaging import package_workspace
from nnmeter.builder.report import write_report
from nnmeter.builder.rules import run_workspace_rules
from nnmeter.builder.workspace import Workspace
from nnmeter.errors import NnmeterError
from nnmeter.evaluation import NNMETER
from nnmeter.measurement import LATENCY_READING_VERSION
from nnmeter.predictor.artifact import MANIFEST
from nnmeter.progress import SILENT, Reporter, Task
from nnmeter.schema import section_to_dict

STEPS = ("rules", "kernels", "package", "evaluate", "report")


class StepStatus(str, enum.Enum):
    """What became of a step in a run, or what would (:func:`step_status`)."""

    RAN = "ran"
    UP_TO_DATE = "up to date"
    INCOMPLETE = "incomplete"  # ran, and some parts failed: it runs again next time
    TO_RUN = "to run"


@dataclass(frozen=True)
class StepResult:
    """What one step did in this run."""

    step: str
    status: StepStatus
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class _Step:
    name: str
    doc: str
    depends: tuple[str, ...]  # steps whose outputs it consumes
    settings: Callable[[Workspace], Any]  # the campaign settings its output depends on
    output_exists: Callable[[Workspace], bool]
    run: Callable[[Workspace, Backend | None, _Options], tuple[str, bool]]  # -> (detail, complete)


@dataclass(frozen=True)
class _Options:
    workers: int | None
    reporter: Reporter


def _setup(ws: Workspace) -> dict[str, Any]:
    """What every measuring step depends on: the backend and its options, the protocol, and how a latency is read
    from a stored measurement (a new reading runs the steps again on the stored measurements)."""
    c = ws.campaign
    options = section_to_dict(c.backend_options)
    # how long a conversion may take changes no measurement (and a workspace from before the setting stays up to date)
    options.pop("convert_timeout_s", None)
    return {
        "backend": c.backend_name,
        "options": options,
        "protocol": c.protocol.key(),
        "latency_reading": LATENCY_READING_VERSION,
    }


def _run_rules(ws: Workspace, _backend: Backend | None, opts: _Options) -> tuple[str, bool]:
    rules = run_workspace_rules(ws, workers=opts.workers, reporter=opts.reporter).rules
    undecided = rules.undecided()
    detail = f"{len(rules.pairs)} pairs, {len(rules.fused_pairs())} fused"
    if undecided:
        detail += f", {len(undecided)} undecided ({', '.join(undecided[:4])}{', ...' if len(undecided) > 4 else ''})"
    # undecided cases are data (the predictor reads them as not fused), not a reason to run again
    return detail, True


def _run_kernels(ws: Workspace, _backend: Backend | None, opts: _Options) -> tuple[str, bool]:
    training = train_workspace_kernels(ws, workers=opts.workers, reporter=opts.reporter)
    if not training.results:
        raise NnmeterError(
            f"no kernel could be trained ({len(training.errors)} failed: "
            f"{'; '.join(f'{k}: {e}' for k, e in training.errors.items())})",
            "check the device with `nnmeter-build connect WS`",
        )
    detail = f"{len(training.results)} kernels, {sum(r.samples for r in training.results)} samples"
    if training.unformed:
        detail += f"; not formed by the device's rules, not trained: {', '.join(training.unformed)}"
    if training.errors:
        detail += f"; failed: {', '.join(training.errors)}"
    return detail, not training.errors


def _run_package(ws: Workspace, _backend: Backend | None, opts: _Options) -> tuple[str, bool]:
    result = package_workspace(ws, overwrite=True, reporter=opts.reporter)
    detail = f"{result.path}: {len(result.kernels)} kernels, rules: {result.rules_source}"
    detail += f"; {result.calibration_summary()}"
    if result.skipped:
        detail += f"; not trained: {', '.join(result.skipped)}"
    return detail, True


def _run_evaluate(ws: Workspace, backend: Backend | None, opts: _Options) -> tuple[str, bool]:
    assert backend is not None
    models = zoo_models(ws, backend, opts.workers, reporter=opts.reporter)
    result = evaluate_workspace(ws, backend, models, reporter=opts.reporter)
    m = result.metrics(NNMETER)
    rep = result.repeatability()
    detail = f"{m.n} of {len(result.models)} models scored: ±10 % {_pct(m.within_10)}, RMSPE {m.rmspe:.1f} %" + (
        f"; repeatability ±10 % {_pct(rep.within_10)}" if rep.n else ""
    )
    coverage = result.interval_coverage()
    if coverage is not None:
        n, inside, width = coverage
        detail += f"; {_pct(inside)} of {n} inside their interval (median width {_pct(width)})"
    unsteady = result.unsteady_ground_truth()
    if unsteady:
        detail += f"; {unsteady}"
    # a model that fails to convert, measure or predict is a result (the report lists it), not a reason to
    # run the step again
    return detail, True


def _run_report(ws: Workspace, _backend: Backend | None, opts: _Options) -> tuple[str, bool]:
    return str(write_report(ws)), True


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _kernels_settings(ws: Workspace) -> dict[str, Any]:
    """The kernels step's settings, and the trainer's version: a new nnmeter whose features, tree format or
    regressor changed trains again (from the store, measuring nothing again)."""
    return {
        **_setup(ws),
        "kernels": section_to_dict(ws.campaign.kernels),
        "trainer": trainer_version(ws.campaign.kernels),
    }


_STEP_LIST = (
    _Step(
        "rules",
        "fusion test: which op pairs run fused",
        (),
        lambda ws: {**_setup(ws), "rules": section_to_dict(ws.campaign.rules)},
        lambda ws: ws.rules_file.is_file(),
        _run_rules,
    ),
    # the kernels step consumes the rules: it trains only the kernel types they form (kernels_to_train)
    _Step(
        "kernels",
        "sample, measure and train one regressor per kernel",
        ("rules",),
        _kernels_settings,
        lambda ws: bool(trained_kernels(ws)[1]),
        _run_kernels,
    ),
    _Step(
        "package",
        "write the predictor artifact",
        ("rules", "kernels"),
        lambda ws: {},
        lambda ws: (ws.predictor_dir / MANIFEST).is_file(),
        _run_package,
    ),
    _Step(
        "evaluate",
        "measure and predict the evaluation models; baselines",
        ("package",),
        lambda ws: {**_setup(ws), "evaluation": section_to_dict(ws.campaign.evaluation)},
        lambda ws: (ws.reports_dir / EVALUATION_FILE).is_file(),
        _run_evaluate,
    ),
    _Step("report", "write reports/index.html", (), lambda ws: None, lambda ws: False, _run_report),
)
assert tuple(s.name for s in _STEP_LIST) == STEPS


def fingerprints(ws: Workspace) -> dict[str, str]:
    """Each step's fingerprint for the campaign as it is now (settings, then upstream fingerprints)."""
    out: dict[str, str] = {}
    for step in _STEP_LIST:
        data = {"settings": step.settings(ws), "upstream": {d: out[d] for d in step.depends}}
        out[step.name] = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return out


def step_status(ws: Workspace) -> dict[str, StepStatus]:
    """Up to date or to run, per step, without running anything."""
    prints = fingerprints(ws)
    out = {}
    for step in _STEP_LIST:
        done = ws.store.get_state(state.step_key(step.name)) or {}
        fresh = done.get("fingerprint") == prints[step.name] and step.output_exists(ws)
        out[step.name] = StepStatus.UP_TO_DATE if fresh else StepStatus.TO_RUN
    return out


def run_campaign(
    ws: Workspace,
    *,
    only: Sequence[str] | None = None,
    force: Sequence[str] = (),
    workers: int | None = None,
    reporter: Reporter = SILENT,
) -> list[StepResult]:
    """Run the campaign's steps (or ``only`` those), skipping the up-to-date ones unless named in ``force``,
    holding the workspace's lock (:meth:`Workspace.lock`) throughout."""
    unknown = [s for s in (*(only or ()), *force) if s not in STEPS]
    if unknown:
        raise NnmeterError(f"{unknown[0]!r} is not a campaign step; steps: {', '.join(STEPS)}")
    with ws.lock(), ws.open_lab(reporter):  # a lab is checked before the store is touched
        return _run_steps(ws, only, force, workers, reporter)


def run_campaigns(
    workspaces: Sequence[Workspace],
    *,
    only: Sequence[str] | None = None,
    force: Sequence[str] = (),
    workers: int | None = None,
    reporter: Reporter = SILENT,
) -> list[list[StepResult] | BaseException]:
    """Run the campaigns of several workspaces at once, each in a thread of its own: one lab (one Ray cluster)
    measures them all, each device type's units serving its own campaign only. Every workspace's lock is taken
    and every lab checked (a unit in two campaigns, Ray, the cluster, the units advertised) before anything is
    measured. One result per workspace, in order: its steps, or the error that ended it."""
    names = _names(workspaces)
    owner: dict[str, str] = {}
    for ws in workspaces:
        for unit in ws.campaign.units:
            if unit.id in owner:
                raise NnmeterError(
                    f"{ws.campaign_path}: {unit.key_path}: unit {unit.id!r} is in the campaign of {owner[unit.id]} "
                    "too; a unit serves one campaign",
                    "give each campaign units of its own device type",
                )
            owner[unit.id] = str(ws.root)
    with ExitStack() as held:
        for ws, name in zip(workspaces, names):
            held.enter_context(ws.lock())
            held.enter_context(ws.open_lab(_Prefixed(reporter, name)))

        def run(ws: Workspace, name: str) -> list[StepResult] | BaseException:
            try:
                return run_campaign(ws, only=only, force=force, workers=workers, reporter=_Prefixed(reporter, name))
            except Exception as err:  # one campaign's failure does not stop the others
                return err
            finally:
                ws.close_store()

        with ThreadPoolExecutor(len(workspaces), thread_name_prefix="nnmeter-campaign") as pool:
            return list(pool.map(run, workspaces, names))


def _names(workspaces: Sequence[Workspace]) -> list[str]:
    """Short names of the workspaces (their folder names; the paths when two share a name)."""
    names = [ws.root.name for ws in workspaces]
    return names if len(set(names)) == len(names) else [str(ws.root) for ws in workspaces]


class _Prefixed(Reporter):
    """A reporter shared by campaigns run at once: each line and task says which campaign it is about."""

    _lock = threading.Lock()

    def __init__(self, inner: Reporter, name: str) -> None:
        self.inner, self.name = inner, name

    def task(self, description: str, total: int | None = None, *, label: str = "") -> Task:
        with self._lock:
            return self.inner.task(description, total, label=f"{self.name}: {label}" if label else self.name)

    def note(self, text: str, *, warning: bool = False) -> None:
        with self._lock:
            self.inner.note(f"{self.name}: {text}", warning=warning)

    def section(self, title: str) -> None:
        with self._lock:
            self.inner.section(f"{self.name}: {title}")


def _run_steps(
    ws: Workspace, only: Sequence[str] | None, force: Sequence[str], workers: int | None, reporter: Reporter
) -> list[StepResult]:
    selected = [s for s in _STEP_LIST if only is None or s.name in only]
    status = step_status(ws)
    prints = fingerprints(ws)
    opts = _Options(workers, reporter)
    results: list[StepResult] = []
    stale: set[str] = set()  # steps that ran now or are not up to date: whatever consumes them runs too
    backend = None
    try:
        for i, step in enumerate(selected, 1):
            upstream_stale = any(d in stale or status[d] != StepStatus.UP_TO_DATE for d in step.depends)
            if status[step.name] == StepStatus.UP_TO_DATE and step.name not in force and not upstream_stale:
                results.append(
                    StepResult(
                        step.name,
                        StepStatus.UP_TO_DATE,
                        0.0,
                        (ws.store.get_state(state.step_key(step.name)) or {}).get("detail", ""),
                    )
                )
                reporter.note(f"step {i}/{len(selected)} {step.name}: up to date, skipped")
                continue
            reporter.section(f"step {i}/{len(selected)}: {step.name} — {step.doc}")
            if step.name == "evaluate" and backend is None:
                backend = ws.connect()  # the other steps connect on their own
            stale.add(step.name)
            started = time.monotonic()
            detail, complete = step.run(ws, backend, opts)
            seconds = time.monotonic() - started
            if complete:
                ws.store.set_state(
                    state.step_key(step.name),
                    {
                        "fingerprint": prints[step.name],
                        "detail": detail,
                        "seconds": seconds,
                        "finished_at": time.time(),
                    },
                )
            results.append(
                StepResult(step.name, StepStatus.RAN if complete else StepStatus.INCOMPLETE, seconds, detail)
            )
            reporter.note(f"{step.name}: {detail} ({seconds:.0f} s)")
    finally:
        if backend is not None:
            backend.close()
    return results

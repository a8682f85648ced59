"""Run the fusion test on a workspace: plan the cases, build and measure their models, decide, write the rules.

Everything measured goes through the workspace store (:func:`~nnmeter.builder.models.prepare_models`
and :func:`~nnmeter.builder.measuring.measure_models`), so a killed run resumes
where it stopped and a second run reuses the measurements (``remeasure=True``
takes new ones). The first pass measures every model once; a case decided on it
assumes the campaign's ``rules.drift`` between its models (they may sit in
different batches). Decisions whose margin lies inside the noise are measured
again, each case's models together (interleaved in one batch), up to
``rules.max_remeasures`` times; such a case is then decided on its joint passes
only, pooled, where a common slowdown of the host cancels.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from nnmeter.predictor.rules import FusionRules, MonRule, PairRule, save_rules
from nnmeter.rule_tester.cases import MON_DEPENDENCY, CasePlan, MonCase, PairCase, describe_plan, plan_cases
from nnmeter.rule_tester.detection import decide_mon, decide_pair

if TYPE_CHECKING:
    from nnmeter.builder.workspace import Workspace

#: The rules file of a workspace, relative to its ``rules/`` folder.
RULES_FILE = "fusion_rules.json"
#: Models converted per call of prepare_models: what a killed run can lose of its conversion work.
CONVERSION_CHUNK = 48
#: Store model kind of the test-case models.
KIND = "rule-case"


@dataclass
class Measurements:
    """Round medians (ms) per model name, pooled over passes, and the error of models without latency."""

    rounds: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, round_medians: Sequence[float] | None, error: str = "") -> None:
        if round_medians:
            self.rounds.setdefault(name, []).extend(round_medians)
            self.errors.pop(name, None)
        elif name not in self.rounds:
            self.errors[name] = error or "no latency"


@dataclass(frozen=True)
class RuleTestReport:
    rules: FusionRules
    path: Path
    plan: CasePlan
    remeasure_passes: int
    seconds: float


#: The key of the MON case among the pair keys (op1, op2).
MON = ("MON", "")


@dataclass
class Evidence:
    """What has been measured: the first pass (every model once, in batches), and per case the passes that
    measured the case's models together."""

    first: Measurements = field(default_factory=Measurements)
    together: dict[tuple[str, str], Measurements] = field(default_factory=dict)

    def for_case(self, key: tuple[str, str], models: Sequence[str], drift: float) -> tuple[Measurements, float]:
        """The rounds to decide a case on (``models`` include the empty model), and the drift to assume."""
        joint = self.together.get(key)
        if joint is not None and all(m in joint.rounds for m in models):
            return joint, 0.0  # measured together: a common slowdown cancels in the margin
        return self.first, drift


def decide(plan: CasePlan, evidence: Evidence, alpha: float, drift: float
           ) -> tuple[dict[tuple[str, str], PairRule], MonRule | None]:
    """Every case's decision from what has been measured so far (pure: no measuring)."""
    pairs = {}
    for c in plan.pairs:
        measured, case_drift = evidence.for_case((c.op1, c.op2), c.models + (plan.empty,), drift)
        pairs[(c.op1, c.op2)] = decide_case(c, measured, alpha, case_drift, measured.rounds.get(plan.empty, ()))
    mon = None
    if plan.mon is not None:
        measured, case_drift = evidence.for_case(MON, plan.mon.models + (plan.empty,), drift)
        mon = decide_mon_case(plan.mon, measured, pairs.get(MON_DEPENDENCY), case_drift,
                              measured.rounds.get(plan.empty, ()))
    return pairs, mon


def decide_case(case: PairCase, measured: Measurements, alpha: float, drift: float = 0.0,
                empty: Sequence[float] = ()) -> PairRule:
    """``empty``: round medians of the empty model (the runtime's cost of an inference), when measured."""
    if case.error:
        return PairRule(case.op1, case.op2, None, error=case.error)
    failed = [(m, measured.errors.get(m, "not measured")) for m in case.models if m not in measured.rounds]
    if failed:
        name, error = failed[0]
        return PairRule(case.op1, case.op2, None, error=f"model {name}: {error}")
    r = measured.rounds
    return decide_pair(case.op1, case.op2, r[case.single1], r[case.single2], r[case.pair], alpha, drift, empty)


def decide_mon_case(case: MonCase, measured: Measurements, dependency: PairRule | None,
                    drift: float = 0.0, empty: Sequence[float] = ()) -> MonRule:
    if dependency is None or dependency.obey is None:
        return MonRule(None, error="not decided: the dwconv -> relu case it depends on was not decided")
    if not dependency.obey:
        # nothing in the block can fuse, so its partitions cannot be told apart (nn-Meter skips it too)
        return MonRule(None, error="not tested: dwconv -> relu does not fuse on this device")
    failed = [m for m in case.models if m not in measured.rounds]
    if failed:
        return MonRule(None, error=f"model {failed[0]}: {measured.errors.get(failed[0], 'not measured')}")
    r = measured.rounds
    return decide_mon(r[case.block], {p: [r[m] for m in ms] for p, ms in case.partitions.items()}, drift, empty)


def run_rule_test(workspace: "Workspace", *, workers: int | None = None, remeasure: bool = False,
                  console=None) -> RuleTestReport:
    """Measure the campaign's fusion test cases on its backend and write ``rules/fusion_rules.json``."""
    from nnmeter.builder.measuring import measure_models

    started = time.monotonic()
    campaign = workspace.campaign
    settings, protocol = campaign.rules, campaign.protocol
    plan = plan_cases(settings)
    _say(console, f"fusion test: {describe_plan(plan)}")
    backend = workspace.connect()
    try:
        prepared = _prepare(workspace, backend, plan, workers)
        evidence = Evidence()
        # a case's models must fit one batch to be measured together (batch_size does not change the protocol key)
        largest = 1 + max([len(c.models) for c in plan.pairs] + ([len(plan.mon.models)] if plan.mon else []))
        batch_protocol = dataclasses.replace(protocol, batch_size=max(protocol.batch_size, largest))
        for name, error in prepared.errors.items():
            evidence.first.add(name, None, error)

        def measure(names: Sequence[str], again: bool, description: str) -> dict[str, tuple]:
            """name -> (round medians or None, error) of each model of ``names`` that could be built."""
            records = [prepared.records[n] for n in names if n in prepared.records]
            results = measure_models(workspace.store, backend, records, batch_protocol, workspace_root=workspace.root,
                                     remeasure=again, description=description)
            out = {}
            for record, result in zip(records, results):
                ok = result.stats is not None and result.status.has_latency
                out[record.name] = (result.stats.round_medians_ms if ok else None,
                                    result.error or f"measurement {result.status.value}")
            return out

        for name, (rounds, error) in measure(list(plan.models), remeasure, "measuring rule cases").items():
            evidence.first.add(name, rounds, error)
        pairs, mon = decide(plan, evidence, settings.alpha, settings.drift)
        passes = 0
        while passes < settings.max_remeasures:
            cases = _uncertain_cases(plan, pairs, mon)
            if not cases:
                break
            passes += 1
            _say(console, f"re-measuring {len(cases)} cases inside the noise, each case's models together "
                          f"(pass {passes} of at most {settings.max_remeasures})")
            for pack in _packs(cases, batch_protocol.batch_size):
                results = measure(list(dict.fromkeys(m for _, models in pack for m in models)), True,
                                  f"re-measuring ({passes})")
                for key, models in pack:
                    joint = evidence.together.setdefault(key, Measurements())
                    for m in models:
                        joint.add(m, *results.get(m, (None, "not built")))
            pairs, mon = decide(plan, evidence, settings.alpha, settings.drift)
        info = backend.device_info
        rules = FusionRules(
            pairs=pairs, mon=mon, device=info.device, backend=backend.name, runtime=info.runtime,
            protocol={"key": protocol.key(), **dataclasses.asdict(protocol)}, alpha=settings.alpha,
            source="measured",
        )
    finally:
        backend.close()
    path = save_rules(rules, workspace.rules_dir / RULES_FILE)
    return RuleTestReport(rules, path, plan, passes, time.monotonic() - started)


@dataclass
class _Prepared:
    records: dict = field(default_factory=dict)  # model name -> ModelRecord
    errors: dict[str, str] = field(default_factory=dict)  # model name -> conversion error


def _prepare(workspace: "Workspace", backend, plan: CasePlan, workers: int | None) -> _Prepared:
    """Build and convert every model of the plan (reusing what the store has), in chunks so a kill loses little."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nnmeter.builder.models import ModelSpec, prepare_models

    specs = [ModelSpec(KIND, m.name, m.config, m.build, m.build_args) for m in plan.models.values()]
    out = _Prepared()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("building and converting rule cases", total=len(specs))
        for start in range(0, len(specs), CONVERSION_CHUNK):
            chunk = specs[start:start + CONVERSION_CHUNK]
            for p in prepare_models(workspace, backend, chunk, workers,
                                    progress=lambda done, _t: bar.update(task, completed=start + done)):
                if p.ok:
                    out.records[p.spec.name] = p.record
                else:
                    out.errors[p.spec.name] = f"conversion failed: {p.error}"
            bar.update(task, completed=start + len(chunk))
    return out


def _uncertain_cases(plan: CasePlan, pairs: Mapping[tuple[str, str], PairRule], mon: MonRule | None
                     ) -> list[tuple[tuple[str, str], tuple[str, ...]]]:
    """(key, models) of every case whose decision is inside the noise; each with the empty model."""
    cases = [((c.op1, c.op2), c.models + (plan.empty,)) for c in plan.pairs
             if pairs[(c.op1, c.op2)].obey is not None and pairs[(c.op1, c.op2)].uncertain]
    if plan.mon is not None and mon is not None and mon.value is not None and mon.uncertain:
        cases.append((MON, plan.mon.models + (plan.empty,)))
    return cases


def _packs(cases: list[tuple[tuple[str, str], tuple[str, ...]]], batch_size: int):
    """Cases grouped so that each group's models fit one measuring batch."""
    pack: list = []
    models: set[str] = set()
    for key, case_models in cases:
        if pack and len(models | set(case_models)) > batch_size:
            yield pack
            pack, models = [], set()
        pack.append((key, case_models))
        models |= set(case_models)
    if pack:
        yield pack


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)

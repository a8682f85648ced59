"""Run the fusion test in a measuring session: plan the cases, build and measure their models, decide the rules.

Every case is measured in ``rules.passes`` independent passes: in each pass the
cases are packed into batches (a case's models always together, their rounds
interleaved, so a slow period of the host hits them alike), every batch loads its
models anew, and consecutive passes run the batches in opposite orders. A pass of a
case is stored as its own measurement series (``rules:pass<N>:<batch digest>``, see
:mod:`nnmeter.measurement.store`), so a killed run resumes where it stopped and a second
run reuses every pass (``remeasure=True`` takes new ones). The decision's interval
covers the spread between passes (:mod:`nnmeter.rule_tester.detection`); a case
whose interval contains 0 gets one more pass at a time, up to
``rules.max_remeasures``, and is then reported uncertain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.measurement import MeasuringSession, ModelRecord, ModelSpec
from nnmeter.predictor.rules import FusionRules, MonRule, PairRule
from nnmeter.rule_tester.cases import MON_DEPENDENCY, CasePlan, MonCase, PairCase, describe_plan, plan_cases
from nnmeter.rule_tester.detection import MonPass, PairPass, decide_mon, decide_pair
from nnmeter.rule_tester.settings import RuleTestSettings

#: Models converted per call of prepare_models: what a killed run can lose of its conversion work.
CONVERSION_CHUNK = 48
#: Store model kind of the test-case models.
KIND = "rule-case"


@dataclass(frozen=True)
class RuleTestReport:
    """The decided rules and how they were reached."""

    rules: FusionRules
    plan: CasePlan
    remeasure_passes: int  # extra passes measured for cases inside the noise
    seconds: float


#: The key of the MON case among the pair keys (op1, op2).
MON = ("MON", "")

#: A case to measure: its key and its models (the empty model included).
CaseModels = tuple[tuple[str, str], tuple[str, ...]]


@dataclass
class Evidence:
    """What has been measured: per case, its passes (model name -> round medians (ms), the models of one pass
    measured together), and the last error of each model that gave no latency."""

    passes: dict[tuple[str, str], list[dict[str, list[float]]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def complete(self, key: tuple[str, str], models: Sequence[str]) -> list[dict[str, list[float]]]:
        """The passes of a case in which every one of ``models`` has a latency."""
        return [p for p in self.passes.get(key, []) if all(m in p for m in models)]

    def why_missing(self, models: Sequence[str]) -> str:
        name = next((m for m in models if m in self.errors), models[0])
        return f"model {name}: {self.errors.get(name, 'not measured')}"


def decide(plan: CasePlan, evidence: Evidence, alpha: float) -> tuple[dict[tuple[str, str], PairRule], MonRule | None]:
    """Every case's decision from what has been measured so far (pure: no measuring)."""
    pairs = {(c.op1, c.op2): decide_case(c, evidence, plan.empty, alpha) for c in plan.pairs}
    mon = None if plan.mon is None else decide_mon_case(plan.mon, evidence, plan.empty, pairs.get(MON_DEPENDENCY))
    return pairs, mon


def decide_case(case: PairCase, evidence: Evidence, empty: str, alpha: float) -> PairRule:
    """A pair's decision on its complete passes; ``empty`` names the empty model (the cost of an inference)."""
    if case.error:
        return PairRule(case.op1, case.op2, None, error=case.error)
    passes = evidence.complete((case.op1, case.op2), case.models + (empty,))
    if not passes:
        return PairRule(case.op1, case.op2, None, error=evidence.why_missing(case.models + (empty,)))
    return decide_pair(
        case.op1, case.op2, [PairPass(p[case.single1], p[case.single2], p[case.pair], p[empty]) for p in passes], alpha
    )


def decide_mon_case(case: MonCase, evidence: Evidence, empty: str, dependency: PairRule | None) -> MonRule:
    if dependency is None or dependency.obey is None:
        return MonRule(None, error="not decided: the dwconv -> relu case it depends on was not decided")
    if not dependency.obey:
        # nothing in the block can fuse, so its partitions cannot be told apart (nn-Meter skips it too)
        return MonRule(None, error="not tested: dwconv -> relu does not fuse on this device")
    passes = evidence.complete(MON, case.models + (empty,))
    if not passes:
        return MonRule(None, error=evidence.why_missing(case.models + (empty,)))
    return decide_mon(
        [MonPass(p[case.block], {c: [p[m] for m in ms] for c, ms in case.partitions.items()}, p[empty]) for p in passes]
    )


def run_rule_test(
    session: MeasuringSession,
    settings: RuleTestSettings,
    *,
    remeasure: bool = False,
) -> RuleTestReport:
    """Measure the fusion test cases of ``settings`` in ``session`` (its store, backend and protocol) and decide
    the rules; ``remeasure`` takes new passes instead of reusing the store's."""
    started = time.monotonic()
    reporter, protocol = session.reporter, session.protocol
    plan = plan_cases(settings)
    reporter.note(f"fusion test: {describe_plan(plan)}, {settings.passes} passes each")
    prepared = _prepare(session, plan)
    evidence = Evidence(errors=dict(prepared.errors))
    cases = [((c.op1, c.op2), c.models + (plan.empty,)) for c in plan.pairs if not c.error]
    if plan.mon is not None:
        cases.append((MON, plan.mon.models + (plan.empty,)))
    # a case's models must fit one batch (batch_size does not change the protocol key)
    largest = max([len(models) for _, models in cases], default=1)
    batch_protocol = dataclasses.replace(protocol, batch_size=max(protocol.batch_size, largest))

    def measure_pass(index: int, cases: list[CaseModels], description: str) -> None:
        _measure_pass(session, prepared, evidence, batch_protocol, index, cases, remeasure, description)

    for index in range(1, settings.passes + 1):
        measure_pass(index, cases, f"pass {index} of {settings.passes}")
    pairs, mon = decide(plan, evidence, settings.alpha)
    extra = 0
    while extra < settings.max_remeasures:
        uncertain = _uncertain_cases(plan, pairs, mon)
        if not uncertain:
            break
        extra += 1
        reporter.note(
            f"{len(uncertain)} cases inside the noise: one more pass ({extra} of at most {settings.max_remeasures})"
        )
        measure_pass(settings.passes + extra, uncertain, f"extra pass {extra}")
        pairs, mon = decide(plan, evidence, settings.alpha)
    info = session.backend.device_info
    assert info is not None
    rules = FusionRules(
        pairs=pairs,
        mon=mon,
        device=info.device,
        backend=session.backend.name,
        runtime=info.runtime,
        protocol={"key": protocol.key(), **dataclasses.asdict(protocol)},
        alpha=settings.alpha,
        source="measured",
    )
    return RuleTestReport(rules, plan, extra, time.monotonic() - started)


def _measure_pass(
    session: MeasuringSession,
    prepared: _Prepared,
    evidence: Evidence,
    protocol: MeasurementProtocol,
    index: int,
    cases: list[CaseModels],
    remeasure: bool,
    description: str,
) -> None:
    """Measure pass ``index`` of ``cases``: one batch per pack of cases, each stored as its own series."""
    packs = list(_packs(cases, protocol.batch_size))
    backwards = index % 2 == 0  # even passes run the batches, and the models in them, in the opposite order
    if backwards:
        packs.reverse()
    sizes = [len({m for _, models in pack for m in models}) for pack in packs]
    with session.reporter.task(f"measuring rule cases, {description}", sum(sizes)) as task:
        for done, pack in zip([sum(sizes[:i]) for i in range(len(sizes))], packs):
            names = list(dict.fromkeys(m for _, models in pack for m in models))
            if backwards:
                names.reverse()
            records = [prepared.records[n] for n in names if n in prepared.records]
            series = f"rules:pass{index}:" + hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:12]
            results = session.measure(
                records,
                protocol=protocol,
                remeasure=remeasure,
                series=series,
                progress=lambda n, _t, done=done: task.update(done + n),
            )
            measured: dict[str, list[float]] = {}
            for record, result in zip(records, results):
                if result.stats is not None and result.status.has_latency:
                    measured[record.name] = list(result.stats.round_medians_ms)
                else:
                    evidence.errors[record.name] = result.error or f"measurement {result.status.value}"
            for key, models in pack:
                evidence.passes.setdefault(key, []).append({m: measured[m] for m in models if m in measured})


@dataclass
class _Prepared:
    records: dict[str, ModelRecord] = field(default_factory=dict)  # model name -> its record
    errors: dict[str, str] = field(default_factory=dict)  # model name -> conversion error


def _prepare(session: MeasuringSession, plan: CasePlan) -> _Prepared:
    """Build and convert every model of the plan (reusing what the store has), in chunks so a kill loses little."""
    specs = [ModelSpec(KIND, m.name, m.config, m.build, m.build_args) for m in plan.models.values()]
    out = _Prepared()
    with session.reporter.task("building and converting rule cases", len(specs)) as task:
        for start in range(0, len(specs), CONVERSION_CHUNK):
            chunk = specs[start : start + CONVERSION_CHUNK]
            for p in session.prepare(chunk, progress=lambda done, _t, start=start: task.update(start + done)):
                if p.record is not None and p.ok:
                    out.records[p.spec.name] = p.record
                else:
                    out.errors[p.spec.name] = f"conversion failed: {p.error}"
            task.update(start + len(chunk))
    return out


def _uncertain_cases(
    plan: CasePlan, pairs: Mapping[tuple[str, str], PairRule], mon: MonRule | None
) -> list[CaseModels]:
    """(key, models) of every case whose decision is inside the noise; each with the empty model."""
    cases = [
        ((c.op1, c.op2), c.models + (plan.empty,))
        for c in plan.pairs
        if pairs[(c.op1, c.op2)].obey is not None and pairs[(c.op1, c.op2)].uncertain
    ]
    if plan.mon is not None and mon is not None and mon.value is not None and mon.uncertain:
        cases.append((MON, plan.mon.models + (plan.empty,)))
    return cases


def _packs(cases: list[CaseModels], batch_size: int):
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

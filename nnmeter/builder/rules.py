"""The rules step on a workspace: the fusion test on the campaign's device, written to ``rules/``."""

from __future__ import annotations

from nnmeter.builder.workspace import Workspace
from nnmeter.predictor.rules import save_rules
from nnmeter.progress import SILENT, Reporter
from nnmeter.rule_tester import RuleTestReport, run_rule_test


def run_workspace_rules(
    ws: Workspace, *, workers: int | None = None, remeasure: bool = False, reporter: Reporter = SILENT
) -> RuleTestReport:
    """Measure the campaign's fusion test cases on its backend (reusing the store's passes unless
    ``remeasure``) and write ``ws.rules_file``."""
    with ws.connect() as backend:
        report = run_rule_test(
            ws.session(backend, workers=workers, reporter=reporter), ws.campaign.rules, remeasure=remeasure
        )
    save_rules(report.rules, ws.rules_file)
    return report

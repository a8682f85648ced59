"""The fusion-rule tester: test cases of op pairs, their measurement in a measuring session, the decisions.

``run_rule_test(session, settings)`` measures the cases of a campaign's ``rules`` section and
returns the decided :class:`~nnmeter.predictor.rules.FusionRules`. Names load on first use.
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("CasePlan", "plan_cases"), "cases"),
        **dict.fromkeys(("RuleTestReport", "run_rule_test"), "runner"),
        "RuleTestSettings": "settings",
    },
)

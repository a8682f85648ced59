"""Show fusion rules: the table (op pair, T1, T2, T12, fused?, confidence, passes) and the summary of what is
undecided.

Works from a :class:`~nnmeter.predictor.rules.FusionRules` alone, so the same
output comes after a run and from a saved rules file (``nnmeter-build rules WS --show``).
"""

from __future__ import annotations

from rich.table import Table

from nnmeter.predictor.rules import MON_NAMES, FusionRules, Measured, PairRule


def rules_table(rules: FusionRules, *, undecided: bool = False) -> Table:
    """The decided pairs (and, with ``undecided``, the others too), then MON."""
    title = f"fusion rules: {rules.backend or '?'} on {rules.device or '?'} (alpha {rules.alpha:g})"
    table = Table(title=title, title_justify="left", box=None, padding=(0, 1, 0, 0), pad_edge=False,
                  header_style="bold")
    for col, justify in (("op pair", "left"), ("T1 ms", "right"), ("T2 ms", "right"), ("T12 ms", "right"),
                         ("margin [95% CI]", "right"), ("fused?", "left"), ("confidence", "right"),
                         ("passes", "right")):
        table.add_column(col, justify=justify, no_wrap=col in ("op pair", "fused?"))
    for rule in rules.pairs.values():
        if rule.obey is None and not undecided:
            continue
        table.add_row(f"{rule.op1} -> {rule.op2}", _ms(rule.t1), _ms(rule.t2), _ms(rule.t12),
                      _margin(rule), _fused(rule), _confidence(rule.confidence), _passes(rule.passes))
    if rules.mon is not None:
        mon = rules.mon
        what = "?" if mon.value is None else f"{mon.value} ({MON_NAMES[mon.value]})"
        block = mon.latencies_ms.get("block")
        table.add_row("MON (op with several consumers)", "", "", f"{block:.4g}" if block is not None else "",
                      "", what, _confidence(mon.confidence), _passes(mon.passes))
    return table


def summary_lines(rules: FusionRules) -> list[str]:
    """Counts, the uncertain decisions, and what could not be decided grouped by reason."""
    decided = [r for r in rules.pairs.values() if r.obey is not None]
    fused = [r for r in decided if r.obey]
    lines = [f"{len(decided)} pairs decided: {len(fused)} fused, {len(decided) - len(fused)} not fused"]
    empty = next((r.t0 for r in decided if r.t0 is not None), None)
    if empty is not None:
        lines.append(f"cost of one inference (empty model), taken off every margin: {empty.median_ms:.4g} ms")
    uncertain = rules.uncertain()
    if uncertain:
        lines.append(f"uncertain (margin inside the noise between passes after re-measuring; decided by the "
                     f"mean margin, may differ between runs): {', '.join(uncertain)}")
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


def _ms(m: Measured | None) -> str:
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


def _passes(passes: int) -> str:
    return str(passes) if passes else ""


def _confidence(confidence: float | None) -> str:
    return "" if confidence is None else f"{100 * confidence:.0f}%"

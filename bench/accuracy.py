"""Accuracy of nnmeter's predictors on real models, against nn-Meter's two baselines.

Runs the quickstart campaign and (without --quick) the default campaign on
tflite-local, each in its own workspace under --dir (resumable: run it again after
an interruption), then prints for each: +-10 % accuracy, RMSPE and Spearman of
nnmeter, of the FLOPs-linear baseline and of the no-fusion baseline, the
repeatability of the evaluation measurements (a second, independent measurement
scored like a prediction), and the campaign's device minutes per step.

    .venv/bin/python bench/accuracy.py --quick        # the quickstart only (~20 min here)
    .venv/bin/python bench/accuracy.py                # + the default campaign (hours)

Targets on this machine, default campaign: +-10 % accuracy >= 95 % of the evaluation
models and RMSPE <= 5 %; the quickstart within 10 points of the default campaign.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nnmeter.builder import (
    CAMPAIGN_FILE,
    EVALUATION_FILE,
    Workspace,
    campaign_cost,
    quickstart_workspace,
    run_campaign,
)
from nnmeter.cli.render import ConsoleReporter, Output
from nnmeter.evaluation import NNMETER, EvaluationResult
from nnmeter.training.metrics import INTERVAL_COVERAGE


def _default_workspace(root: Path) -> Workspace:
    if (root / CAMPAIGN_FILE).is_file():
        return Workspace.open(root)
    Workspace.create(root, "tflite-local")
    return Workspace.open(root)


def _campaign(name: str, ws: Workspace, reporter: ConsoleReporter) -> dict:
    started = time.monotonic()
    with reporter:
        run_campaign(ws, reporter=reporter)
    wall = time.monotonic() - started
    result = EvaluationResult.load(ws.reports_dir / EVALUATION_FILE)
    steps, _ = campaign_cost(ws)
    return {"name": name, "result": result, "steps": steps, "wall_minutes": wall / 60}


def _print(rows: list[dict], console: Console) -> None:
    table = Table(title="accuracy on the evaluation models (tflite-local)")
    for col in ("campaign", "method", "models", "±10 %", "RMSPE %", "Spearman"):
        table.add_column(col, justify="left" if col in ("campaign", "method") else "right")
    for row in rows:
        result: EvaluationResult = row["result"]
        for method in result.methods:
            m = result.metrics(method)
            table.add_row(
                row["name"],
                method,
                str(m.n),
                f"{100 * m.within_10:.1f}",
                f"{m.rmspe:.1f}",
                "-" if m.spearman is None else f"{m.spearman:.3f}",
            )
        rep = result.repeatability()
        if rep.n:
            table.add_row(
                row["name"],
                "2nd measurement",
                str(rep.n),
                f"{100 * rep.within_10:.1f}",
                f"{rep.rmspe:.1f}",
                "-" if rep.spearman is None else f"{rep.spearman:.3f}",
            )
        table.add_section()
    console.print(table)
    for row in rows:
        coverage = row["result"].interval_coverage()
        if coverage is not None:
            n, inside, width = coverage
            console.print(
                f"{row['name']}: {100 * inside:.1f} % of {n} models inside their interval "
                f"(nominal {100 * INTERVAL_COVERAGE:.0f} %), median width {100 * width:.1f} % of the prediction"
            )
    cost = Table(title="campaign cost")
    for col in ("campaign", "step", "models", "device minutes"):
        cost.add_column(col, justify="left" if col in ("campaign", "step") else "right")
    for row in rows:
        for step in row["steps"]:
            cost.add_row(row["name"], step.step, str(step.models), f"{step.device_minutes:.1f}")
        cost.add_row(
            row["name"],
            "total (wall minutes of this run)",
            "",
            f"{sum(s.device_minutes for s in row['steps']):.1f} ({row['wall_minutes']:.1f})",
        )
        cost.add_section()
    console.print(cost)
    if len(rows) == 2:
        quick, full = (r["result"].metrics(NNMETER).within_10 for r in rows)
        console.print(
            f"quickstart vs default campaign, ±10 % accuracy: {100 * quick:.1f} % vs {100 * full:.1f} % "
            f"({100 * (full - quick):+.1f} points)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quickstart campaign only")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("bench-accuracy"),
        help="where the workspaces live (default ./bench-accuracy; reused to resume)",
    )
    args = parser.parse_args(argv)
    console = Console()
    reporter = Output().reporter()
    rows = []
    with quickstart_workspace(args.dir / "quickstart", reporter) as ws:
        rows.append(_campaign("quickstart", ws, reporter))
    if not args.quick:
        with _default_workspace(args.dir / "default") as ws:
            rows.append(_campaign("default", ws, reporter))
    _print(rows, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())

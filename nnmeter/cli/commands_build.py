"""Commands that build a predictor: rules, train, package, run, evaluate, report, quickstart."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnmeter.cli import tables
from nnmeter.cli.main import command, json_argument, positive, workers_argument, workspace_argument
from nnmeter.cli.render import Output
from nnmeter.errors import EXIT_FAILED, EXIT_OK, NnmeterError


def _rules_arguments(p: argparse.ArgumentParser) -> None:
    workspace_argument(p)
    p.add_argument(
        "--show", action="store_true", help="only show the saved rules (rules/fusion_rules.json); measure nothing"
    )
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="measure every test case again instead of reusing the store's measurements (an independent second run)",
    )
    workers_argument(p)
    p.add_argument("--json", action="store_true", help="print the rules file's JSON instead of a table")


@command(
    "rules",
    "detect which op pairs the device runs fused: build, measure and compare the test cases; "
    "writes rules/fusion_rules.json",
    _rules_arguments,
)
def _cmd_rules(args: argparse.Namespace) -> int:
    from nnmeter.builder.rules import run_workspace_rules
    from nnmeter.builder.workspace import Workspace
    from nnmeter.predictor.rules import load_rules

    positive("--workers", args.workers)
    out = Output(stderr=args.json)
    report = None
    with Workspace.open(args.workspace) as ws:
        path = ws.rules_file
        if args.show:
            if not path.is_file():
                raise NnmeterError(f"{path}: no rules yet", f"measure them with: nnmeter-build rules {ws.root}")
            rules = load_rules(path)
        else:
            with ws.lock(), out.reporter() as reporter:
                report = run_workspace_rules(ws, workers=args.workers, remeasure=args.remeasure, reporter=reporter)
            rules = report.rules
    if args.json:
        print(path.read_text(encoding="utf-8"))
        return EXIT_OK
    out.table(tables.fusion_rules(rules))
    for line in tables.fusion_summary(rules):
        out.line(line)
    if report is not None:
        out.line(
            f"wrote {path} ({report.seconds:.0f} s, {report.remeasure_passes} extra passes of cases inside the noise)"
        )
    return EXIT_OK


def _train_arguments(p: argparse.ArgumentParser) -> None:
    workspace_argument(p)
    p.add_argument(
        "--kernel",
        action="append",
        metavar="K",
        dest="kernels",
        help="train only this kernel (repeat for several), whether the device's fusion rules form it "
        "or not; default: those of the campaign's kernels.kernels that the rules form",
    )
    p.add_argument(
        "--init",
        type=int,
        metavar="N",
        help="prior samples per kernel, family members' too (overrides kernels.init_samples and "
        "kernels.member_samples)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help="adaptive fine-grained rounds per kernel, family members' too (overrides kernels.iterations "
        "and kernels.member_samples)",
    )
    workers_argument(p)


@command(
    "train", "sample, measure and train one latency regressor per kernel, refining where it errs", _train_arguments
)
def _cmd_train(args: argparse.Namespace) -> int:
    from nnmeter.builder.kernels import train_workspace_kernels
    from nnmeter.builder.workspace import Workspace

    positive("--init", args.init)
    positive("--iterations", args.iterations, 0)
    positive("--workers", args.workers)
    out = Output()
    with Workspace.open(args.workspace) as ws, ws.lock():
        with out.reporter() as reporter:
            training = train_workspace_kernels(
                ws, args.kernels, init=args.init, iterations=args.iterations, workers=args.workers, reporter=reporter
            )
        out.table(tables.kernel_results(training.results, training.errors))
        for kernel, message in training.errors.items():
            out.error(f"{kernel}: {message}")
        for kernel, reason in training.unformed.items():
            out.line(
                f"{kernel}: not trained, the device's fusion rules never form it ({reason}; "
                f"train it anyway with --kernel {kernel})"
            )
        if training.results:
            out.line(f"next: nnmeter-build package {ws.root} -o DIR [--install]")
    return EXIT_FAILED if training.errors else EXIT_OK


def _package_arguments(p: argparse.ArgumentParser) -> None:
    workspace_argument(p)
    p.add_argument("-o", "--output", metavar="DIR", help="the predictor folder to write (default: WS/predictor)")
    p.add_argument("--name", help="predictor name (default: <backend>-<device>)")
    p.add_argument("--version", dest="predictor_version", default="1.0", help="predictor version (default 1.0)")
    p.add_argument(
        "--kernel",
        action="append",
        metavar="K",
        dest="kernels",
        help="package only this kernel (repeat for several); default: every trained campaign kernel",
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="also copy it into the user predictor folder, where `predictors` lists it",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder or installed version")


@command(
    "package", "write the predictor artifact: manifest, fusion rules and one regressor per kernel", _package_arguments
)
def _cmd_package(args: argparse.Namespace) -> int:
    from nnmeter.builder.packaging import package_workspace
    from nnmeter.builder.workspace import Workspace
    from nnmeter.predictor.artifact import artifact_digest
    from nnmeter.predictor.registry import install_predictor

    out = Output()
    with Workspace.open(args.workspace) as ws, ws.lock(), out.reporter() as reporter:
        result = package_workspace(
            ws,
            Path(args.output) if args.output else None,
            name=args.name,
            version=args.predictor_version,
            kernels=args.kernels,
            overwrite=args.force,
            reporter=reporter,
        )
    out.line(f"wrote {result.path}: {len(result.kernels)} kernel regressors, rules: {result.rules_source}")
    out.line(f"digest (sha256 of its manifest; pin it with --sha256): {artifact_digest(result.path)}")
    out.line(result.calibration_summary())
    if result.skipped:
        shown = ", ".join(result.skipped[:6]) + (
            f" and {len(result.skipped) - 6} more" if len(result.skipped) > 6 else ""
        )
        out.line(f"{len(result.skipped)} campaign kernels not trained, left out: {shown}")
    if args.install:
        out.line(f"installed as {install_predictor(result.path, overwrite=args.force)}")
    return EXIT_OK


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "workspace",
        metavar="WS_OR_CAMPAIGN_YAML",
        nargs="+",
        help="a workspace folder or its campaign.yaml; several: their campaigns run at once, each on its own "
        "units of one lab (docs/devices/lab.md)",
    )
    p.add_argument(
        "--only", nargs="+", metavar="STEP", help="run only these steps (rules, kernels, package, evaluate, report)"
    )
    p.add_argument(
        "--force",
        nargs="+",
        default=[],
        metavar="STEP",
        help="run these steps even when up to date (measurements in the store are still reused)",
    )
    workers_argument(p)


@command(
    "run",
    "run the campaign: rules -> kernels -> package -> evaluate -> report; each step is skipped "
    "when up to date, and a killed run resumes where it stopped",
    _run_arguments,
)
def _cmd_run(args: argparse.Namespace) -> int:
    from nnmeter.builder.steps import run_campaign
    from nnmeter.builder.workspace import Workspace

    positive("--workers", args.workers)
    out = Output()
    if len(args.workspace) > 1:
        return _run_several(args, out)
    with Workspace.open(args.workspace[0]) as ws, ws.lock():
        with out.reporter() as reporter:
            results = run_campaign(ws, only=args.only, force=args.force, workers=args.workers, reporter=reporter)
        out.table(tables.steps(results))
    return _steps_exit(results)


def _run_several(args: argparse.Namespace, out: Output) -> int:
    """``run ws1 ws2 ...``: the campaigns at once; exit with the worst of their exit codes."""
    from nnmeter.builder.steps import run_campaigns
    from nnmeter.builder.workspace import Workspace

    workspaces = [Workspace.open(path) for path in args.workspace]  # every campaign checked before any runs
    try:
        with out.reporter() as reporter:
            outcomes = run_campaigns(
                workspaces, only=args.only, force=args.force, workers=args.workers, reporter=reporter
            )
    finally:
        for ws in workspaces:
            ws.close()
    code = EXIT_OK
    for ws, outcome in zip(workspaces, outcomes):
        if isinstance(outcome, BaseException):
            out.error(f"{ws.root}: {outcome}")
            code = max(code, getattr(outcome, "exit_code", EXIT_FAILED))
        else:
            out.table(tables.steps(outcome))
            code = max(code, _steps_exit(outcome))
    return code


def _steps_exit(results) -> int:
    return EXIT_FAILED if any(r.status.value == "incomplete" for r in results) else EXIT_OK


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "workspace", metavar="WS", help="a workspace folder (or its campaign.yaml) with a packaged predictor"
    )
    p.add_argument(
        "--models",
        metavar="DIR",
        help="evaluate the model files in DIR (.tflite, .onnx, .keras, "
        ".h5, SavedModel folders; subfolders are families) instead of the campaign's evaluation set; "
        "writes reports/evaluation-<DIR>.json and reports/<DIR>.html",
    )
    workers_argument(p)
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="measure the models again (both passes) instead of "
        "reusing stored measurements, e.g. when the device was busy during the last evaluation; the "
        "store keeps the old ones",
    )
    json_argument(p)


@command(
    "evaluate",
    "measure and predict real models on the workspace's device; accuracy of the predictor "
    "and of the FLOPs-linear and no-fusion baselines",
    _evaluate_arguments,
)
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nnmeter.builder.evaluate import evaluate_workspace, folder_models, zoo_models
    from nnmeter.builder.report import write_report
    from nnmeter.builder.workspace import Workspace

    positive("--workers", args.workers)
    out = Output(stderr=args.json)
    with Workspace.open(args.workspace) as ws, ws.lock(), ws.connect() as backend:
        with out.reporter() as reporter:
            if args.models:
                folder = Path(args.models)
                models = folder_models(ws, backend, folder, args.workers, reporter=reporter)
                path = ws.reports_dir / f"evaluation-{folder.resolve().name}.json"
                result = evaluate_workspace(ws, backend, models, out=path, remeasure=args.remeasure, reporter=reporter)
                page = write_report(ws, evaluation_path=path, out=ws.reports_dir / f"{folder.resolve().name}.html")
            else:
                models = zoo_models(ws, backend, args.workers, reporter=reporter)
                result = evaluate_workspace(ws, backend, models, remeasure=args.remeasure, reporter=reporter)
                page = write_report(ws)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    out.table(tables.evaluation(result))
    for m in result.models:
        if m.error or m.unsupported:
            out.line(f"{m.name}: {m.error or 'not predicted: ' + ', '.join(m.unsupported)}", warning=True)
    unsteady = result.unsteady_ground_truth()
    if unsteady:
        out.line(unsteady, warning=True)
    out.line(f"report: {page}")
    return EXIT_OK


@command(
    "report",
    "write reports/index.html: accuracy plots, kernel and fusion-rule tables, campaign cost (one self-contained file)",
    workspace_argument,
)
def _cmd_report(args: argparse.Namespace) -> int:
    from nnmeter.builder.report import write_report
    from nnmeter.builder.workspace import Workspace

    with Workspace.open(args.workspace) as ws, ws.lock():
        Output().line(str(write_report(ws)))
    return EXIT_OK


def _quickstart_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "workspace",
        metavar="DIR",
        nargs="?",
        default="nnmeter-quickstart",
        help="the workspace to make (or resume) (default: ./nnmeter-quickstart)",
    )
    workers_argument(p)


@command(
    "quickstart",
    "build a predictor for this machine's CPU (tflite-local) with a small real campaign, "
    "evaluate it and write the report (about 20 minutes on 2 cores; resumable)",
    _quickstart_arguments,
)
def _cmd_quickstart(args: argparse.Namespace) -> int:
    from nnmeter.builder.quickstart import quickstart_workspace, usage_text
    from nnmeter.builder.steps import run_campaign

    positive("--workers", args.workers)
    out = Output()
    with out.reporter() as reporter, quickstart_workspace(args.workspace, reporter) as ws, ws.lock():
        results = run_campaign(ws, workers=args.workers, reporter=reporter)
        reporter.close()
        out.table(tables.steps(results))
        out.line(usage_text(ws))
    return _steps_exit(results)

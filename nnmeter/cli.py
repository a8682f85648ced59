"""``nnmeter-build``: build latency predictors for a device, and use them.

Each subcommand is one ``_cmd_<name>`` handler plus its arguments, registered in
``_COMMANDS``. Handlers import the parts they use lazily, so ``--help`` is fast and
``predict`` on a .tflite file does not load TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from nnmeter import __version__
from nnmeter.errors import NnmeterError

_EPILOG = """\
A typical session:
  nnmeter-build init ws --backend tflite-local   # a workspace with campaign.yaml
  nnmeter-build connect ws                       # check the device, one real measurement
  nnmeter-build run ws/campaign.yaml             # rules -> kernels -> predictor -> evaluation
Every command that measures stores each result as soon as it is taken; run it again to resume.
"""

# name -> (one-line help, add arguments, handler)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated function as the handler of ``nnmeter-build NAME``."""
    def register(handler: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (help, arguments, handler)
        return handler
    return register


# --- commands ----------------------------------------------------------------
# (each part's commands are added below, in the order a user meets them)


# --- foundation: workspace, device, profiling, store --------------------------


def _init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="folder of the new workspace (created if missing)")
    p.add_argument("--backend", default="tflite-local", metavar="NAME",
                   help="the device + runtime to build for (default: tflite-local; see `nnmeter-build backends`)")
    p.add_argument("--force", action="store_true",
                   help="rewrite campaign.yaml of an existing workspace (its store and models are kept)")


@command("init", "make a workspace: a commented campaign.yaml, an empty store and its folders", _init_arguments)
def _cmd_init(args: argparse.Namespace) -> int:
    from nnmeter.builder.workspace import Workspace
    from nnmeter.errors import ConfigError

    ws = Workspace.create(args.dir, args.backend, overwrite=args.force)
    print(f"workspace {ws.root}: {ws.campaign_path.name} ({args.backend}), {ws.store_path.name}, "
          "models/, rules/, predictor/, reports/")
    try:
        ws.campaign
    except ConfigError as err:  # e.g. a backend that needs a device address: the user fills it in
        print(f"before connecting, edit {ws.campaign_path}: {err}")
        return 0
    print(f"next: edit {ws.campaign_path} if needed, then: nnmeter-build connect {ws.root}")
    return 0


def _workspace_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml)")


@command("connect", "check the device: its facts, and one real measurement of a tiny bundled model",
         _workspace_argument)
def _cmd_connect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nnmeter.builder.measuring import measure_models
    from nnmeter.builder.workspace import Workspace, tiny_model_path

    console = Console()
    with Workspace.open(args.workspace) as ws:
        with ws.connect() as backend:
            info = backend.device_info
            table = Table(title=f"{info.backend} on {info.device}", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            for key, value in [("device", info.description), ("runtime", info.runtime),
                               *[(f"version: {k}", v) for k, v in info.runtime_versions.items()],
                               *info.facts.items()]:
                table.add_row(key, str(value))
            console.print(table)
            records = ws.add_user_models([tiny_model_path()])
            results = measure_models(ws.store, backend, records, ws.campaign.protocol, workspace_root=ws.root,
                                     remeasure=True, description="measuring the tiny model")
    _print_measurements(console, records, results)
    return 0 if all(m.status.has_latency for m in results) else 1


def _profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml)")
    p.add_argument("models", metavar="MODEL", nargs="+",
                   help="model files: .tflite, .keras, .h5, .onnx, or a SavedModel folder")
    p.add_argument("--runs", type=int, metavar="N",
                   help="timed runs per model, about: sets the protocol's rounds x runs_per_round (a round "
                        "still lasts at least min_round_ms); default: the campaign's protocol")
    p.add_argument("--remeasure", action="store_true",
                   help="measure again models already measured with this device, backend and protocol")


@command("profile", "measure the latency of your model files on the workspace's device", _profile_arguments)
def _cmd_profile(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from rich.console import Console

    from nnmeter.builder.measuring import measure_models
    from nnmeter.builder.workspace import Workspace, model_file_format

    for path in args.models:  # every file is checked before the device or the store is touched
        model_file_format(Path(path))
    if args.runs is not None and args.runs < 1:
        raise NnmeterError(f"--runs {args.runs}: must be at least 1")
    console = Console()
    with Workspace.open(args.workspace) as ws:
        protocol = ws.campaign.protocol.for_whole_models()
        if args.runs is not None:
            per_round = min(protocol.runs_per_round, args.runs)
            protocol = dataclasses.replace(protocol, runs_per_round=per_round,
                                           rounds=max(1, round(args.runs / per_round)))
        records = ws.add_user_models(args.models)
        with ws.connect() as backend:
            results = measure_models(ws.store, backend, records, protocol, workspace_root=ws.root,
                                     remeasure=args.remeasure)
    _print_measurements(console, records, results)
    return 0 if all(m.status.has_latency for m in results) else 1


def _print_measurements(console, records, results) -> None:
    """One row per model: the statistics of its measurement, or its status and error."""
    from rich.table import Table

    by_id = {m.model_id: m for m in results}
    table = Table(title="latency in ms (median: over rounds of each round's median)", box=None,
                  padding=(0, 1, 0, 0), pad_edge=False, title_justify="left", header_style="bold")
    for name in ("model", "median", "mean", "std", "min", "p90", "runs", "rounds", "spread", "status"):
        table.add_column(name, justify="left" if name in ("model", "status") else "right",
                         overflow="fold", min_width=12 if name == "model" else None)
    errors = []
    for rec in records:
        m = by_id[rec.id]
        s = m.stats if m.status.has_latency else None
        numbers = ([*map(_ms, (s.median_ms, s.mean_ms, s.std_ms, s.min_ms, s.p90_ms)), str(s.runs), str(s.rounds),
                    f"{s.spread:.1%}"] if s else ["-"] * 8)
        table.add_row(rec.name, *numbers, m.status.value)
        if m.error:
            errors.append(f"{rec.name}: {m.status.value}: {m.error}")
    console.print(table)
    for line in errors:
        console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)


def _ms(value: float) -> str:
    """Milliseconds with about four significant digits, in at most 7 characters."""
    return f"{value:.1f}" if value >= 100 else f"{value:.3f}" if value >= 1 else f"{value:.4f}"


@command("status", "what the workspace's store holds: models per kind and status, measurement setups",
         _workspace_argument)
def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nnmeter.builder.workspace import Workspace

    console = Console()
    with Workspace.open(args.workspace) as ws:
        summary = ws.store.summary()
        current = (ws.campaign.backend_name, ws.campaign.protocol.key())
    if not summary.models:
        console.print(f"{ws.store_path}: no models yet")
        return 0
    statuses = sorted({s for counts in summary.statuses.values() for s in counts})
    console.print(f"{ws.store_path}: models, by the status of their newest measurement")
    kinds = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold")
    for name in ("kind", "models", *statuses):
        kinds.add_column(name, justify="left" if name == "kind" else "right")
    for kind, n in summary.models.items():
        kinds.add_row(kind, str(n), *[str(summary.statuses[kind].get(s, 0)) for s in statuses])
    console.print(kinds)
    if summary.setups:
        console.print()
        console.print("measurement setups (* = the campaign's backend and protocol; rows: measurements stored; "
                      "statuses: of each model's newest)")
        setups = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold")
        for name in ("device", "backend", "protocol", "models", "rows", "device s", "statuses"):
            setups.add_column(name, justify="right" if name in ("models", "rows", "device s") else "left")
        for g in summary.setups:
            mark = "*" if (g.backend, g.protocol_key) == current else ""
            setups.add_row(g.device, g.backend, g.protocol_key + mark, str(g.models), str(g.measurements),
                           f"{g.device_seconds:.1f}", ", ".join(f"{k} {v}" for k, v in g.statuses.items()))
        console.print(setups)
    return 0


@command("backends", "the registered backends, and whether each is usable on this machine", lambda p: None)
def _cmd_backends(args: argparse.Namespace) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from nnmeter.backends import list_backends

    table = Table(title="backends (entry-point group nnmeter.backends)", box=box.SIMPLE_HEAD)
    for name in ("name", "usable", "device and runtime / why not usable here"):
        table.add_column(name, no_wrap=name != "device and runtime / why not usable here")
    for b in list_backends():
        table.add_row(b.name, "yes" if b.usable else "no", b.description if b.usable else b.reason)
    Console().print(table)
    return 0


# --- kernel generator: kernel types, sampled kernel models ---------------------------


@command("kernels", "every kernel type: its ops, config keys and their valid ranges", lambda p: None)
def _cmd_kernels(args: argparse.Namespace) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from nnmeter import ops

    console = Console()
    table = Table(title="kernels", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("kernel", "ops", "inputs", "config keys", "what it is"):
        table.add_column(name, no_wrap=name != "what it is")
    for k in ops.KERNELS.values():
        inputs = "2-4" if ops.CINS in k.keys else str(k.inputs)
        table.add_row(k.name, " -> ".join(k.ops), inputs, " ".join(k.keys), k.doc)
    console.print(table)
    keys = Table(title="config keys", box=box.SIMPLE_HEAD, title_justify="left")
    keys.add_column("key", no_wrap=True)
    keys.add_column("valid values")
    for key in dict.fromkeys(key for k in ops.KERNELS.values() for key in k.keys):
        keys.add_row(key, ops.describe_range(key))
    console.print(keys)
    return 0


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml)")
    p.add_argument("--kernel", required=True, metavar="K", help="kernel type (see `nnmeter-build kernels`)")
    p.add_argument("-n", type=int, default=100, metavar="N", help="number of configs (default 100)")
    p.add_argument("--sampler", default="prior", choices=("prior", "finegrained", "uniform"),
                   help="prior: real-model layers with jittered channels (default); uniform: the valid sets; "
                        "finegrained: around --around")
    p.add_argument("--around", metavar="JSON", help='finegrained only: the config to sample around, e.g. '
                   '\'{"HW": 28, "CIN": 64, "COUT": 128, "KERNEL_SIZE": 3, "STRIDES": 1}\'')
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0): same seed, same configs")
    p.add_argument("--workers", type=int, metavar="W",
                   help="conversion processes (default: the campaign's backend setting)")


@command("sample", "sample kernel configs, build and convert their models into the workspace store",
         _sample_arguments)
def _cmd_sample(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nnmeter.backends import backend_class
    from nnmeter.builder.models import kernel_spec, prepare_models
    from nnmeter.builder.workspace import Workspace
    from nnmeter.kernel_gen.samplers import sample_configs

    if args.n < 1:
        raise NnmeterError(f"-n {args.n}: must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise NnmeterError(f"--workers {args.workers}: must be at least 1")
    try:
        around = json.loads(args.around) if args.around else None
        configs = sample_configs(args.kernel, args.n, args.sampler, seed=args.seed, around=around)
    except json.JSONDecodeError as err:
        raise NnmeterError(f"--around: not JSON ({err})", 'give a JSON object, e.g. \'{"HW": 28, "CIN": 64}\'')
    except ValueError as err:
        raise NnmeterError(str(err), "see `nnmeter-build kernels` for kernel types and valid values")
    console = Console()
    with Workspace.open(args.workspace) as ws, \
            backend_class(ws.campaign.backend_name)(ws.campaign.backend_options) as backend:  # no device needed
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task(f"{args.kernel}: building and converting", total=len(configs))
            prepared = prepare_models(ws, backend, [kernel_spec(args.kernel, c) for c in configs], args.workers,
                                      lambda done, total: bar.update(task, completed=done, total=total))
    reused = sum(p.reused for p in prepared)
    failed = [p for p in prepared if not p.ok]
    console.print(f"{args.kernel}: {len(configs)} configs ({args.sampler}, seed {args.seed}): "
                  f"{len(prepared) - reused - len(failed)} converted, {reused} already in the store, "
                  f"{len(failed)} failed; models in {ws.models_dir}")
    for p in failed:
        console.print(f"{json.dumps(dict(p.spec.config))}: {p.error}", style="red", markup=False, highlight=False)
    return 1 if failed else 0


# --- fusion rules ----------------------------------------------------------------


def _rules_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml)")
    p.add_argument("--show", action="store_true",
                   help="only show the saved rules (rules/fusion_rules.json) as a table; measure nothing")
    p.add_argument("--remeasure", action="store_true",
                   help="measure every test case again instead of reusing the store's measurements "
                        "(an independent second run)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="model conversion processes (default: the backend's setting)")


@command("rules", "detect which op pairs the device runs fused: build, measure and compare the test cases; "
                  "writes rules/fusion_rules.json", _rules_arguments)
def _cmd_rules(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nnmeter.builder.workspace import Workspace
    from nnmeter.predictor.rules import load_rules
    from nnmeter.rule_tester.table import rules_table, summary_lines

    console = Console()
    with Workspace.open(args.workspace) as ws:
        path = ws.rules_file
        if args.show:
            if not path.is_file():
                raise NnmeterError(f"{path}: no rules yet", f"measure them with: nnmeter-build rules {ws.root}")
            rules = load_rules(path)
        else:
            from nnmeter.rule_tester.runner import run_rule_test

            report = run_rule_test(ws, workers=args.workers, remeasure=args.remeasure, console=console)
            rules = report.rules
    console.print(rules_table(rules))
    for line in summary_lines(rules):
        console.print(line, markup=False, highlight=False)
    if not args.show:
        console.print(f"wrote {path} ({report.seconds:.0f} s, {report.remeasure_passes} extra passes of cases "
                      f"inside the noise)", markup=False, highlight=False)
    return 0


# --- kernel regressors, predictor artifacts -------------------------------------------


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml)")
    p.add_argument("--kernel", action="append", metavar="K", dest="kernels",
                   help="train only this kernel (repeat for several), whether the device's fusion rules form it "
                        "or not; default: those of the campaign's kernels.kernels that the rules form")
    p.add_argument("--init", type=int, metavar="N",
                   help="prior samples per kernel, family members' too (overrides kernels.init_samples and "
                        "kernels.member_samples)")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="adaptive fine-grained rounds per kernel, family members' too (overrides kernels.iterations "
                        "and kernels.member_samples)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="model conversion processes (default: the backend's setting)")


@command("train", "sample, measure and train one latency regressor per kernel, refining where it errs",
         _train_arguments)
def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nnmeter.builder.training import kernels_to_train, results_table, train_workspace_kernels
    from nnmeter.builder.workspace import Workspace

    for flag, value in (("--init", args.init), ("--iterations", args.iterations), ("--workers", args.workers)):
        if value is not None and value < (1 if flag != "--iterations" else 0):
            raise NnmeterError(f"{flag} {value}: must be at least {1 if flag != '--iterations' else 0}")
    console = Console()
    with Workspace.open(args.workspace) as ws:
        results, errors = train_workspace_kernels(ws, args.kernels, init=args.init, iterations=args.iterations,
                                                  workers=args.workers, console=console)
        console.print(results_table(results, errors))
        for kernel, message in errors.items():
            console.print(f"{kernel}: {message}", markup=False, highlight=False)
        for kernel, reason in ({} if args.kernels else kernels_to_train(ws)[1]).items():
            console.print(f"{kernel}: not trained, the device's fusion rules never form it ({reason}; "
                          f"train it anyway with --kernel {kernel})", markup=False, highlight=False)
        if results:
            console.print(f"next: nnmeter-build package {ws.root} -o DIR [--install]", markup=False,
                          highlight=False)
    return 2 if errors else 0


def _package_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml)")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="the predictor folder to write (default: WS/predictor)")
    p.add_argument("--name", help="predictor name (default: <backend>-<device>)")
    p.add_argument("--version", dest="predictor_version", default="1.0", help="predictor version (default 1.0)")
    p.add_argument("--kernel", action="append", metavar="K", dest="kernels",
                   help="package only this kernel (repeat for several); default: every trained campaign kernel")
    p.add_argument("--install", action="store_true",
                   help="also copy it into the user predictor folder, where `predictors` lists it")
    p.add_argument("--force", action="store_true", help="replace an existing output folder or installed version")


@command("package", "write the predictor artifact: manifest, fusion rules and one regressor per kernel",
         _package_arguments)
def _cmd_package(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nnmeter.builder.packaging import package_workspace
    from nnmeter.builder.workspace import Workspace
    from nnmeter.predictor.registry import install_predictor

    with Workspace.open(args.workspace) as ws:
        result = package_workspace(ws, Path(args.output) if args.output else None, name=args.name,
                                   version=args.predictor_version, kernels=args.kernels, overwrite=args.force)
    print(f"wrote {result.path}: {len(result.kernels)} kernel regressors, rules: {result.rules_source}")
    print(result.calibration_summary())
    if result.skipped:
        shown = ", ".join(result.skipped[:6]) + (f" and {len(result.skipped) - 6} more" if len(result.skipped) > 6 else "")
        print(f"{len(result.skipped)} campaign kernels not trained, left out: {shown}")
    if args.install:
        print(f"installed as {install_predictor(result.path, overwrite=args.force)}")
    return 0


@command("predictors", "the installed predictors: name, version, device and accuracy", lambda p: None)
def _cmd_predictors(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nnmeter.predictor.registry import ENV_VAR, installed_predictors, search_paths

    console = Console()
    found = installed_predictors()
    table = Table(title="installed predictors")
    for col in ("name", "version", "device", "backend", "kernels", "±10 % median / worst", "path"):
        table.add_column(col)
    for p in found:
        if p.error:
            table.add_row("[red]unreadable[/red]", "", "", "", "", p.error, str(p.path))
            continue
        m = p.metrics
        acc = (f"{100 * m['acc10_median']:.1f} % / {100 * m['acc10_worst']:.1f} % ({m['worst_kernel']})"
               if m else "-")
        table.add_row(p.name, p.version, p.device_description or p.device, p.backend, str(p.kernels), acc,
                      str(p.path))
    console.print(table)
    console.print(f"searched: {', '.join(str(p) for p in search_paths())} (add folders with {ENV_VAR})",
                  markup=False, highlight=False)
    return 0


# --- predictor engine: predict model latency, export the IR -------------------------


def _input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise NnmeterError(f"--input-shape {text!r}: expected comma-separated integers, e.g. 1,224,224,3") from None
    if not dims or any(d <= 0 for d in dims):
        raise NnmeterError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return dims


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictor", required=True, metavar="NAME_OR_PATH",
                   help="an installed predictor (name or name@version) or a predictor folder")
    p.add_argument("models", nargs="+", metavar="MODEL_OR_DIR",
                   help="model files (.tflite, .onnx, .keras, .h5, .pb, IR .json), SavedModel folders, or "
                   "folders of model files")
    p.add_argument("--json", action="store_true", help="print one JSON object per model with the per-kernel rows")
    p.add_argument("--input-shape", metavar="DIMS", help="fix a dynamic input shape, in the model's own layout, "
                   "e.g. 1,224,224,3")
    p.add_argument("--no-strict", action="store_true",
                   help="predict what is supported and list the rest, instead of failing on unsupported ops")


def _model_paths(items: list[str]) -> list[str]:
    from pathlib import Path

    from nnmeter.predictor.converters import MODEL_SUFFIXES

    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir() and not (path / "saved_model.pb").is_file():
            found = sorted(str(f) for f in path.iterdir() if f.suffix.lower() in MODEL_SUFFIXES
                           or (f.is_dir() and (f / "saved_model.pb").is_file()))
            if not found:
                raise NnmeterError(f"{path}: a folder with no model files",
                                   "model files end in " + ", ".join(MODEL_SUFFIXES))
            paths += found
        else:
            paths.append(item)
    return paths


@command("predict", "predict the latency of model files on a predictor's device, kernel by kernel",
         _predict_arguments)
def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from nnmeter.predictor.engine import load_predictor

    predictor = load_predictor(args.predictor)
    shape = _input_shape(args.input_shape)
    results = [predictor.predict(path, shape, strict=not args.no_strict) for path in _model_paths(args.models)]
    if args.json:
        for result in results:
            print(json.dumps(result.to_dict()))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"predicted latency on {predictor.name}")
    for col in ("model", "latency ms", "kernels", "coverage", "left out"):
        table.add_column(col)
    for r in results:
        left = ", ".join(sorted({u.ops for u in r.unsupported})) or "-"
        table.add_row(r.model, f"{r.latency_ms:.3f}", str(len(r.kernels)), f"{100 * r.coverage:.1f} %", left)
    console = Console()
    console.print(table)
    for r in results:
        stand_ins = sorted({k.stand_in for k in r.kernels if k.stand_in})
        if stand_ins:
            console.print(f"{r.model}: {len(stand_ins)} kernel shape(s) predicted by a stand-in, e.g. {stand_ins[0]}")
    return 0


def _ir_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model file or SavedModel folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json", help="where to write the IR graph")
    p.add_argument("--input-shape", metavar="DIMS", help="fix a dynamic input shape, e.g. 1,224,224,3")


@command("ir", "export a model's IR graph (the ops, shapes and edges the predictor sees) as JSON", _ir_arguments)
def _cmd_ir(args: argparse.Namespace) -> int:
    from nnmeter.predictor.converters import to_graph

    graph = to_graph(args.model, _input_shape(args.input_shape))
    out = graph.save(args.output)
    counts = ", ".join(f"{op} {n}" for op, n in sorted(graph.op_counts().items()))
    print(f"{out}: {len(graph.nodes)} nodes ({counts})")
    return 0


# --- campaign: run, evaluate, report, quickstart ---------------------------------------


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS_OR_CAMPAIGN_YAML", help="a workspace folder or its campaign.yaml")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (rules, kernels, package, "
                   "evaluate, report)")
    p.add_argument("--force", nargs="+", default=[], metavar="STEP",
                   help="run these steps even when up to date (measurements in the store are still reused)")
    p.add_argument("--workers", type=int, metavar="N", help="model conversion processes (default: the backend's)")


@command("run", "run the campaign: rules -> kernels -> package -> evaluate -> report; each step is skipped "
                "when up to date, and a killed run resumes where it stopped", _run_arguments)
def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nnmeter.builder.runner import results_table, run_campaign
    from nnmeter.builder.workspace import Workspace

    console = Console()
    with Workspace.open(args.workspace) as ws:
        results = run_campaign(ws, only=args.only, force=args.force, workers=args.workers, console=console)
        console.print(results_table(results))
    return 1 if any(r.status == "incomplete" for r in results) else 0


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml) with a packaged "
                   "predictor")
    p.add_argument("--models", metavar="DIR", help="evaluate the model files in DIR (.tflite, .onnx, .keras, "
                   ".h5, SavedModel folders; subfolders are families) instead of the campaign's evaluation set; "
                   "writes reports/evaluation-<DIR>.json and reports/<DIR>.html")
    p.add_argument("--workers", type=int, metavar="N", help="model conversion processes (default: the backend's)")
    p.add_argument("--remeasure", action="store_true", help="measure the models again (both passes) instead of "
                   "reusing stored measurements, e.g. when the device was busy during the last evaluation; the "
                   "store keeps the old ones")
    p.add_argument("--json", action="store_true", help="print the per-model results as JSON")


@command("evaluate", "measure and predict real models on the workspace's device; accuracy of the predictor "
                     "and of the FLOPs-linear and no-fusion baselines", _evaluate_arguments)
def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rich.console import Console

    from nnmeter.builder.evaluation import evaluate_workspace, folder_models, metrics_table, zoo_models
    from nnmeter.builder.report import write_report
    from nnmeter.builder.workspace import Workspace

    console = Console(stderr=args.json)
    with Workspace.open(args.workspace) as ws, ws.connect() as backend:
        if args.models:
            folder = Path(args.models)
            models = folder_models(ws, backend, folder, args.workers)
            out = ws.reports_dir / f"evaluation-{folder.resolve().name}.json"
            result = evaluate_workspace(ws, backend, models, out=out, remeasure=args.remeasure)
            page = write_report(ws, evaluation_path=out, out=ws.reports_dir / f"{folder.resolve().name}.html")
        else:
            result = evaluate_workspace(ws, backend, zoo_models(ws, backend, args.workers), remeasure=args.remeasure)
            page = write_report(ws)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    console.print(metrics_table(result))
    for m in result.models:
        if m.error or m.unsupported:
            console.print(f"{m.name}: {m.error or 'not predicted: ' + ', '.join(m.unsupported)}", style="yellow",
                          markup=False, highlight=False)
    unsteady = result.unsteady_ground_truth()
    if unsteady:
        console.print(unsteady, style="yellow", markup=False, highlight=False)
    console.print(f"report: {page}", markup=False, highlight=False)
    return 0


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml)")


@command("report", "write reports/index.html: accuracy plots, kernel and fusion-rule tables, campaign cost "
                   "(one self-contained file)", _report_arguments)
def _cmd_report(args: argparse.Namespace) -> int:
    from nnmeter.builder.report import write_report
    from nnmeter.builder.workspace import Workspace

    with Workspace.open(args.workspace) as ws:
        print(write_report(ws))
    return 0


def _quickstart_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="DIR", nargs="?", default="nnmeter-quickstart",
                   help="the workspace to make (or resume) (default: ./nnmeter-quickstart)")
    p.add_argument("--workers", type=int, metavar="N", help="model conversion processes (default: the backend's)")


@command("quickstart", "build a predictor for this machine's CPU (tflite-local) with a small real campaign, "
                       "evaluate it and write the report (15-20 minutes on 2 cores; resumable)",
         _quickstart_arguments)
def _cmd_quickstart(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nnmeter.builder.runner import quickstart_workspace, results_table, run_campaign, usage_text

    console = Console()
    with quickstart_workspace(args.workspace, console) as ws:
        results = run_campaign(ws, workers=args.workers, console=console)
        console.print(results_table(results))
        console.print(usage_text(ws), markup=False, highlight=False)
    return 1 if any(r.status == "incomplete" for r in results) else 0


# --- entry point ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnmeter-build",
        description="Build inference-latency predictors for a device and predict DNN latency with them.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nnmeter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, arguments, handler) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except NnmeterError as err:
        print(f"nnmeter-build {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnmeter-build {args.command}: interrupted; what was measured is in the store, "
              "run the command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

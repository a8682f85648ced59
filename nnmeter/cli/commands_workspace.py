"""Commands of the workspace and the device: init, connect, profile, status, backends, kernels, sample."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from nnmeter.cli import tables
from nnmeter.cli.main import command, json_argument, positive, workers_argument, workspace_argument
from nnmeter.cli.render import Output
from nnmeter.errors import EXIT_FAILED, EXIT_OK, ConfigError, NnmeterError


def _init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="folder of the new workspace (created if missing)")
    p.add_argument(
        "--backend",
        default="tflite-local",
        metavar="NAME",
        help="the device + runtime to build for (default: tflite-local; see `nnmeter-build backends`)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rewrite campaign.yaml of an existing workspace (its store and models are kept)",
    )


@command("init", "make a workspace: a commented campaign.yaml, an empty store and its folders", _init_arguments)
def _cmd_init(args: argparse.Namespace) -> int:
    from nnmeter.builder.campaign import load_campaign
    from nnmeter.builder.workspace import Workspace

    out = Output()
    ws = Workspace.create(args.dir, args.backend, overwrite=args.force)
    out.line(
        f"workspace {ws.root}: {ws.campaign_path.name} ({args.backend}), {ws.store_path.name}, "
        "models/, rules/, predictor/, reports/"
    )
    try:
        load_campaign(ws.campaign_path)
    except ConfigError as err:  # e.g. a backend that needs a device address: the user fills it in
        out.line(f"before connecting, edit {ws.campaign_path}: {err}")
        return EXIT_OK
    out.line(f"next: edit {ws.campaign_path} if needed, then: nnmeter-build connect {ws.root}")
    return EXIT_OK


@command("connect", "check the device: its facts, and one real measurement of a tiny bundled model", workspace_argument)
def _cmd_connect(args: argparse.Namespace) -> int:
    from nnmeter.builder.workspace import Workspace, tiny_model_path

    out = Output()
    with Workspace.open(args.workspace) as ws, ws.lock(), ws.connect() as backend, out.reporter() as reporter:
        info = backend.device_info
        assert info is not None
        facts = tables.Table(f"{info.backend} on {info.device}", ("fact", "value"))
        for key, value in [
            ("device", info.description),
            ("runtime", info.runtime),
            *[(f"version: {k}", v) for k, v in info.runtime_versions.items()],
            *info.facts.items(),
        ]:
            facts.add(key, value)
        out.table(facts)
        records = ws.add_user_models([tiny_model_path()])
        results = ws.session(backend, reporter=reporter).measure(
            records, remeasure=True, description="measuring the tiny model"
        )
    return _show_measurements(out, records, results)


def _profile_arguments(p: argparse.ArgumentParser) -> None:
    workspace_argument(p)
    p.add_argument(
        "models", metavar="MODEL", nargs="+", help="model files: .tflite, .keras, .h5, .onnx, or a SavedModel folder"
    )
    p.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help="timed runs per model, about: sets the protocol's rounds x runs_per_round (a round "
        "still lasts at least min_round_ms); default: the campaign's protocol",
    )
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="measure again models already measured with this device, backend and protocol",
    )
    json_argument(p)


@command("profile", "measure the latency of your model files on the workspace's device", _profile_arguments)
def _cmd_profile(args: argparse.Namespace) -> int:
    from nnmeter.builder.workspace import Workspace, model_file_format

    for path in args.models:  # every file is checked before the device or the store is touched
        model_file_format(Path(path))
    positive("--runs", args.runs)
    out = Output(stderr=args.json)
    with Workspace.open(args.workspace) as ws, ws.lock():
        protocol = ws.campaign.protocol.for_whole_models()
        if args.runs is not None:
            per_round = min(protocol.runs_per_round, args.runs)
            protocol = dataclasses.replace(
                protocol, runs_per_round=per_round, rounds=max(1, round(args.runs / per_round))
            )
        records = ws.add_user_models(args.models)
        with ws.connect() as backend, out.reporter() as reporter:
            results = ws.session(backend, protocol=protocol, reporter=reporter).measure(
                records, remeasure=args.remeasure
            )
    if args.json:
        print(
            json.dumps(
                [
                    {"model": r.name, "path": p, **_measurement_json(m)}
                    for r, p, m in zip(records, args.models, results)
                ],
                indent=1,
            )
        )
        return EXIT_OK if all(m.status.has_latency for m in results) else EXIT_FAILED
    return _show_measurements(out, records, results)


def _measurement_json(m) -> dict:
    stats = dataclasses.asdict(m.stats) if m.stats is not None and m.status.has_latency else None
    return {"status": m.status.value, "latency_ms": m.latency_ms, "stats": stats, "error": m.error}


def _show_measurements(out: Output, records, results) -> int:
    out.table(tables.measurements(records, results))
    by_id = {m.model_id: m for m in results}
    for rec in records:
        m = by_id[rec.id]
        if m.error:
            out.error(f"{rec.name}: {m.status.value}: {m.error}")
    return EXIT_OK if all(m.status.has_latency for m in results) else EXIT_FAILED


def _status_arguments(p: argparse.ArgumentParser) -> None:
    workspace_argument(p)
    json_argument(p)


@command(
    "status",
    "what the workspace's store holds: models per kind and status, measurement setups, and which "
    "campaign steps are up to date",
    _status_arguments,
)
def _cmd_status(args: argparse.Namespace) -> int:
    from nnmeter.builder.steps import step_status
    from nnmeter.builder.workspace import Workspace

    out = Output()
    with Workspace.open(args.workspace) as ws:
        summary = ws.store.summary()
        current = (ws.campaign.backend_name, ws.campaign.protocol.key())
        steps = step_status(ws)
        holder = ws.lock_holder()  # status takes no lock: it works while another command writes
        if args.json:
            print(
                json.dumps(
                    {
                        "store": str(ws.store_path),
                        **dataclasses.asdict(summary),
                        "steps": {k: v.value for k, v in steps.items()},
                        "in_use_by": holder,
                    },
                    indent=1,
                )
            )
            return EXIT_OK
    if not summary.models:
        out.line(f"{ws.store_path}: no models yet")
    else:
        out.line(f"{ws.store_path}")
        out.table(tables.store_kinds(summary))
        if summary.setups:
            out.line()
            out.table(tables.store_setups(summary, current))
        if summary.units:
            out.line()
            out.table(tables.store_units(summary))
    out.line()
    out.line("campaign steps: " + ", ".join(f"{k} {v.value}" for k, v in steps.items()))
    if holder is not None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started_at"]))
        out.line(f"in use by PID {holder['pid']} ({holder['command']}) since {started}")
    return EXIT_OK


@command("backends", "the registered backends, and whether each is usable on this machine", json_argument)
def _cmd_backends(args: argparse.Namespace) -> int:
    from nnmeter.backends import list_backends

    found = list_backends()
    if args.json:
        print(json.dumps([dataclasses.asdict(b) for b in found], indent=1))
    else:
        Output().table(tables.backends(found))
    return EXIT_OK


@command("kernels", "every kernel type: its ops, config keys and their valid ranges", json_argument)
def _cmd_kernels(args: argparse.Namespace) -> int:
    from nnmeter import ops

    if args.json:
        print(
            json.dumps(
                {
                    "kernels": [
                        {
                            "name": k.name,
                            "ops": list(k.ops),
                            "keys": list(k.keys),
                            "doc": k.doc,
                            "inputs": "2-4" if ops.CINS in k.keys else k.inputs,
                        }
                        for k in ops.KERNELS.values()
                    ],
                    "keys": {
                        key: ops.describe_range(key)
                        for key in dict.fromkeys(key for k in ops.KERNELS.values() for key in k.keys)
                    },
                },
                indent=1,
            )
        )
        return EXIT_OK
    out = Output()
    out.table(tables.kernel_types())
    out.line()
    out.table(tables.config_keys())
    return EXIT_OK


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    workspace_argument(p)
    p.add_argument("--kernel", required=True, metavar="K", help="kernel type (see `nnmeter-build kernels`)")
    p.add_argument("-n", type=int, default=100, metavar="N", help="number of configs (default 100)")
    p.add_argument(
        "--sampler",
        default="prior",
        choices=("prior", "finegrained", "uniform"),
        help="prior: real-model layers with jittered channels (default); uniform: the valid sets; "
        "finegrained: around --around",
    )
    p.add_argument(
        "--around",
        metavar="JSON",
        help="finegrained only: the config to sample around, e.g. "
        '\'{"HW": 28, "CIN": 64, "COUT": 128, "KERNEL_SIZE": 3, "STRIDES": 1}\'',
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0): same seed, same configs")
    workers_argument(p)


@command("sample", "sample kernel configs, build and convert their models into the workspace store", _sample_arguments)
def _cmd_sample(args: argparse.Namespace) -> int:
    from nnmeter.backends import backend_class
    from nnmeter.builder.workspace import Workspace
    from nnmeter.kernel_gen.samplers import sample_configs
    from nnmeter.measurement import kernel_spec

    positive("-n", args.n)
    positive("--workers", args.workers)
    try:
        around = json.loads(args.around) if args.around else None
        configs = sample_configs(args.kernel, args.n, args.sampler, seed=args.seed, around=around)
    except json.JSONDecodeError as err:
        raise NnmeterError(
            f"--around: not JSON ({err})", 'give a JSON object, e.g. \'{"HW": 28, "CIN": 64}\''
        ) from None
    except ValueError as err:
        raise NnmeterError(str(err), "see `nnmeter-build kernels` for kernel types and valid values") from None
    out = Output()
    with (
        Workspace.open(args.workspace) as ws,
        ws.lock(),
        out.reporter() as reporter,
        backend_class(ws.campaign.backend_name)(ws.campaign.backend_options) as backend,
    ):  # no device needed
        prepared = ws.session(backend, workers=args.workers, reporter=reporter).prepare(
            [kernel_spec(args.kernel, c) for c in configs], description=f"{args.kernel}: building and converting"
        )
    reused = sum(p.reused for p in prepared)
    failed = [p for p in prepared if not p.ok]
    out.line(
        f"{args.kernel}: {len(configs)} configs ({args.sampler}, seed {args.seed}): "
        f"{len(prepared) - reused - len(failed)} converted, {reused} already in the store, "
        f"{len(failed)} failed; models in {ws.models_dir}"
    )
    for p in failed:
        out.error(f"{json.dumps(dict(p.spec.config))}: {p.error}")
    return EXIT_FAILED if failed else EXIT_OK

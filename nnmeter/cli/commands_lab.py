"""Commands of a device lab: lab join, lab leave, lab status (docs/devices/lab.md)."""

from __future__ import annotations

import argparse
import json
import time

from nnmeter.cli.main import command, json_argument, workspace_argument
from nnmeter.cli.render import Output, Table
from nnmeter.errors import EXIT_OK, NnmeterError


def _lab_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    join = sub.add_parser(
        "join",
        help="make this host a node of the lab's Ray cluster, advertising the units attached to it",
        description="Run `ray start` for this host: join the head at HEAD:PORT (or start the head with --head), "
        "advertising one Ray resource per unit attached here (the phones `adb devices` lists, and every --unit), "
        "so that each unit's actor runs on this host. Prints the `ray start` line it runs.",
    )
    join.add_argument("address", nargs="?", metavar="HEAD:PORT", help="the head's address (omit with --head)")
    join.add_argument("--head", action="store_true", help="start the cluster's head on this host")
    join.add_argument("--port", type=int, default=6379, help="the head's port (with --head; default 6379)")
    join.add_argument(
        "--unit", action="append", default=[], metavar="UNIT", help="advertise this unit too (an SSH board's host)"
    )
    join.add_argument("--no-adb", action="store_true", help="do not advertise the phones of `adb devices`")
    join.add_argument("--adb-port", type=int, default=5037, metavar="P", help="the adb server's port (default 5037)")
    join.add_argument("--host", metavar="NAME", help="this host's name in the lab (default: its host name)")
    join.add_argument("--num-cpus", type=int, metavar="N", help="CPUs this host lends the cluster (Ray's default: all)")
    join.add_argument("--dry-run", action="store_true", help="print the `ray start` line, run nothing")
    sub.add_parser("leave", help="stop this host's Ray node (`ray stop`)", description="Run `ray stop` on this host.")
    status = sub.add_parser(
        "status",
        help="the lab's units: host, state (idle, measuring, lost, ...), measurements done, rate, speed ratio",
        description="The units of WS's campaign, as the running campaign last published them, with what the store "
        "holds of each. Takes no lock: it works while `nnmeter-build run` measures.",
    )
    workspace_argument(status)
    json_argument(status)


@command(
    "lab",
    "a device lab: join a host to the lab's Ray cluster, leave it, or show the units of a workspace's lab",
    _lab_arguments,
)
def _cmd_lab(args: argparse.Namespace) -> int:
    if args.action == "join":
        return _join(args)
    if args.action == "leave":
        from nnmeter.lab.join import leave

        leave()
        Output().line("left the lab: this host's Ray node is stopped")
        return EXIT_OK
    return _status(args)


def _join(args: argparse.Namespace) -> int:
    from nnmeter.lab.join import join_plan, run_join

    if args.head == (args.address is not None):
        raise NnmeterError("give the head's HEAD:PORT, or --head to start the head here (not both)")
    plan = join_plan(
        None if args.head else args.address,
        units=args.unit,
        adb=not args.no_adb,
        adb_port=args.adb_port,
        host=args.host,
        head_port=args.port,
        num_cpus=args.num_cpus,
    )
    out = Output()
    out.line(f"host {plan.host}, units: {', '.join(plan.units) or 'none'}")
    out.line(plan.shell())
    if not plan.units:
        out.line("no unit attached here: this host lends its CPUs only", warning=True)
    if not args.dry_run:
        run_join(plan)
        out.line("joined" if not args.head else f"head started on port {args.port}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from nnmeter.builder.workspace import Workspace
    from nnmeter.lab.backend import UNITS_STATE

    with Workspace.open(args.workspace) as ws:
        campaign = ws.campaign
        if not campaign.is_lab:
            raise NnmeterError(
                f"{ws.campaign_path}: not a lab (no `devices:`)", "see docs/devices/lab.md to list the units"
            )
        holder = ws.lock_holder()
        published = {s["unit"]: s for s in (ws.store.get_state(UNITS_STATE) or [])} if holder else {}
        summaries = {s.unit: s for s in ws.store.unit_summaries()}
        checks = {c.unit: c for c in ws.store.unit_checks()}
    rows = []
    for unit in campaign.units:
        state, done, check = published.get(unit.id, {}), summaries.get(unit.id), checks.get(unit.id)
        rows.append(
            {
                "unit": unit.id,
                "host": state.get("host") or (done.host if done else ""),
                "state": state.get("state", "not running"),
                "done": done.measurements if done else 0,
                "per_min": round(done.recent / (done.window_s / 60), 2) if done else 0.0,
                "ratio": check.ratio if check else None,
                "verdict": check.verdict if check else "",
                "error": state.get("error", ""),
            }
        )
    if args.json:
        print(json.dumps({"engine": campaign.cluster.engine, "running": holder, "units": rows}, indent=1))
        return EXIT_OK
    out = Output()
    table = Table(
        f"lab of {len(rows)} units ({campaign.cluster.engine} engine)",
        ("unit", "host", "state", "done", "per min", "speed ratio", "check", "last error"),
        right=("done", "per min", "speed ratio"),
    )
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        table.add(r["unit"], r["host"], r["state"], r["done"], f"{r['per_min']:.1f}", ratio, r["verdict"], r["error"])
    out.table(table)
    if holder is not None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started_at"]))
        out.line(f"measuring: PID {holder['pid']} ({holder['command']}) since {started}")
    else:
        out.line("no command is measuring on this workspace now")
    return EXIT_OK

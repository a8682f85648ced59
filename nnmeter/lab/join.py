"""``nnmeter-build lab join``: make this host a node of the lab's Ray cluster, advertising the units attached to it.

A host joins with ``ray start --address HEAD:PORT --resources '{"nnmeter-unit:<unit>": 1, ...}'`` (one custom
resource per unit, so that the unit's actor is placed here and nowhere else), with ``NNMETER_LAB_HOST`` set to
the host's name in the lab (the workers inherit it; every measurement records it). The units are the phones
``adb devices`` lists as ready (on the adb server at ``adb_host:adb_port``) plus the ones named with ``--unit``
(SSH boards, or phones of another adb server).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnmeter.errors import NnmeterError, WorkFailed
from nnmeter.lab.settings import unit_resource
from nnmeter.lab.unit import HOST_ENV, host_name


@dataclass(frozen=True)
class JoinPlan:
    """The ``ray start`` command a host joins with, the units it advertises, and its name in the lab."""

    command: tuple[str, ...]
    units: tuple[str, ...]
    host: str
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """The command as one shell line (what to run by hand)."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.command)


def adb_units(host: str = "127.0.0.1", port: int = 5037) -> list[str]:
    """The serials of the phones ready on the adb server at ``host:port`` (none when no server answers)."""
    try:
        import adbutils

        return [d.serial for d in adbutils.AdbClient(host=host, port=port).list() if d.state == "device"]
    except Exception:  # no adb server there: no phones of it
        return []


def ray_command() -> str:
    """The ``ray`` executable of this Python's environment (where ``pip install nnmeter[lab]`` put it)."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        raise NnmeterError(
            "joining a lab needs Ray, which is not installed", "pip install 'nnmeter[lab]' (or pip install 'ray>=2')"
        )
    return found


def join_plan(
    address: str | None,
    *,
    units: Sequence[str] = (),
    adb: bool = True,
    adb_host: str = "127.0.0.1",
    adb_port: int = 5037,
    host: str | None = None,
    head_port: int = 6379,
    num_cpus: int | None = None,
) -> JoinPlan:
    """The plan for this host: join ``address`` (HEAD:PORT), or start the head when ``address`` is None."""
    found = list(dict.fromkeys([*units, *(adb_units(adb_host, adb_port) if adb else [])]))
    name = host or host_name()
    resources = json.dumps({unit_resource(u): 1 for u in found}, separators=(",", ":"))
    if address is None:
        where = ["--head", f"--port={head_port}", "--include-dashboard=false"]
    else:
        if ":" not in address:
            raise NnmeterError(f"{address!r}: not HEAD:PORT", "the head prints its address when it starts (port 6379)")
        where = [f"--address={address}"]
    command = [ray_command(), "start", *where, f"--resources={resources}", "--disable-usage-stats"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    return JoinPlan(tuple(command), tuple(found), name, {HOST_ENV: name})


def run_join(plan: JoinPlan) -> None:
    """Run the plan's ``ray start``; WorkFailed with its output when it fails."""
    out = subprocess.run(list(plan.command), env={**os.environ, **plan.env}, capture_output=True, text=True)
    if out.returncode != 0:
        raise WorkFailed(
            f"ray start failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-600:]}",
            "a host that is a Ray node already leaves first: nnmeter-build lab leave",
        )


def leave() -> None:
    """Stop this host's Ray node (``ray stop``): its units' actors die and their batches go back to the queue."""
    out = subprocess.run([ray_command(), "stop"], capture_output=True, text=True)
    if out.returncode != 0:
        raise WorkFailed(f"ray stop failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-600:]}")

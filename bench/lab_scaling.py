"""Lab scaling: measurements per minute with 1, 2 and 4 units, on the local engine and on Ray.

The units are loopback ADB phones (tests/adb_loopback.py, a real adb server) running the benchmark_model stand-in
(tests/fake_benchmark_model.py) on the real LiteRT interpreter. This machine's 2 cores are shared by every unit,
so the stand-in models a device whose time is spent on the device: each invocation also sleeps ``--device-ms``
(the device's time), and only the tool's start, the adb traffic and the driver's work use this host's CPU.
Ray runs as a one-node cluster on this machine (``ray start --head --num-cpus 1``) advertising every unit.

Each configuration copies a workspace with ``--models`` converted relu kernel models, connects its units and
checks their anchors (not timed), then times the measurement of every model through a measuring session (the
campaign's path: batches dispatched to the units, each stored as it returns). Prints measurements per minute,
the speed-up over one unit, Ray's overhead against the local engine at the same unit count, and the driver's
CPU seconds per measurement (on the local engine the units' threads run in the driver; on Ray they are actors).
Targets: Ray's overhead at 1 unit <= 5 % of the local engine's rate; 4 units >= 3.5x one unit's rate.

Run: ``python bench/lab_scaling.py [--models 16] [--device-ms 300] [--units 1 2 4] [--engines local ray]``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest_lab import RayCluster, lab_campaign  # noqa: E402  (the tests' loopback phones and Ray cluster)
from conftest_remote import ADBServer, LoopbackPhone, adb_binary, free_port  # noqa: E402
from lab_driver import configs  # noqa: E402

from nnmeter.builder.workspace import Workspace  # noqa: E402
from nnmeter.measurement import BatchJob, kernel_spec  # noqa: E402

TESTS = Path(__file__).resolve().parent.parent / "tests"


def prepare(root: Path, models: int) -> Path:
    ws = root / "template"
    Workspace.create(ws, "tflite-adb").close()
    subprocess.run([sys.executable, str(TESTS / "lab_prepare.py"), str(ws), "-n", str(models)], check=True)
    return ws


def measure(template: Path, root: Path, phones: list, models: int, engine: str, address: str) -> dict:
    ws = root / f"{engine}-{len(phones)}"
    shutil.copytree(template, ws)
    lab_campaign(ws, phones, engine=engine, address=address, check_every=0)
    with Workspace.open(ws) as w, w.lock(), w.open_lab() as lab:
        with w.connect() as backend:
            session = w.session(backend, workers=1)
            records = [p.record for p in session.prepare([kernel_spec("relu", c) for c in configs(models)])]
            anchors = [session._file(a) for a in session._anchors()]
            warm = BatchJob(0, tuple(anchors), session.protocol)
            list(lab.dispatch([warm], anchors))  # connect every unit and check its anchors: not timed
            cpu0, wall0 = _cpu(), time.perf_counter()
            measured = session.measure(records)
            wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    ok = sum(m.latency_ms is not None for m in measured)
    units = {m.unit for m in measured}
    return {"rate": 60 * len(measured) / wall, "wall": wall, "cpu": cpu / len(measured), "ok": ok, "units": units}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--device-ms", type=float, default=300.0, help="modelled device time per invocation")
    parser.add_argument("--units", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=("local", "ray"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nnmeter-lab-bench-"))
    server = ADBServer(adb_binary(), free_port())
    server.start()
    phones: list[LoopbackPhone] = []
    cluster = None
    try:
        template = prepare(root, args.models)
        for i in range(max(args.units)):
            phones.append(LoopbackPhone(server, root / f"phone{i}"))
            (phones[-1].sandbox / "device-ms").write_text(str(args.device_ms))
        if "ray" in args.engines:
            cluster = RayCluster(root, {"benchhost": [p.serial for p in phones]})
        print(
            f"device model: every invocation takes the LiteRT time plus {args.device_ms:g} ms on the device (a sleep); "
            f"protocol: 1 warm-up + 2 rounds x 2 runs per model, one benchmark_model process per round; "
            f"{args.models} relu kernel models, batches of 2; units share this host's cores",
            flush=True,
        )
        rows = {}
        for engine in args.engines:
            for n in args.units:
                address = cluster.address if cluster is not None else "auto"
                r = measure(template, root, phones[:n], args.models, engine, address)
                rows[(engine, n)] = r
                print(
                    f"{engine:5s} {n} unit(s): {r['rate']:6.1f} measurements/min ({r['wall']:.1f} s for "
                    f"{args.models}, {r['ok']} with a latency, units used {len(r['units'])}); driver CPU "
                    f"{1000 * r['cpu']:.0f} ms per measurement",
                    flush=True,
                )
        for engine in args.engines:
            base = rows.get((engine, 1))
            for n in args.units:
                if base and n > 1:
                    print(f"{engine}: {n} units = {rows[(engine, n)]['rate'] / base['rate']:.2f}x one unit's rate")
        if ("local", 1) in rows and ("ray", 1) in rows:
            for n in args.units:
                overhead = 1 - rows[("ray", n)]["rate"] / rows[("local", n)]["rate"]
                print(f"Ray's overhead at {n} unit(s): {100 * overhead:.1f} % of the local engine's rate")
    finally:
        if cluster is not None:
            cluster.stop()
        for phone in phones:
            phone.kill()
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

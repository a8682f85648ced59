"""How much accuracy a shared campaign keeps versus one unit: the same models measured by one unit, and sharded
over a lab of three units of which one runs 1.3x slower, with the lab's outlier handling off, scaling it, and
excluding it.

The units are loopback ADB phones (tests/adb_loopback.py, a real adb server) running the benchmark_model stand-in
(tests/fake_benchmark_model.py) on the real LiteRT interpreter; the slow unit sleeps 0.3x of every invocation's
own time more (``device-x``: a phone 1.3x slower at everything). The three units share this host's 2 cores, so
each invocation is timed by the CPU time of its thread (``device-clock``), as if every unit had cores of its own.
Every campaign is a copy of one workspace with
``--models`` converted conv-bn-relu kernels (1-5 ms each), measured on the local engine with ``protocol.anchors``
off, so that only the lab's unit checks correct the slow unit. Each is scored against the first one-unit
campaign: the share of models within ±10 % and the median error; a second one-unit campaign shows the
repeatability of a measurement (the best any shared campaign can do).

Run: ``python bench/lab_agreement.py [--models 12] [--slow 1.3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest_lab import lab_campaign  # noqa: E402  (the tests' loopback phones)
from conftest_remote import ADBServer, LoopbackPhone, adb_binary, free_port  # noqa: E402

from nnmeter.backends import backend_class  # noqa: E402
from nnmeter.builder.workspace import Workspace  # noqa: E402
from nnmeter.measurement import kernel_spec  # noqa: E402

PROTOCOL = dict(warmup_runs=2, rounds=5, runs_per_round=5, min_round_ms=20.0, settle_runs=2, batch_size=3)


def configs(n: int) -> list[dict]:
    return [
        {"HW": 28, "CIN": 32 + 8 * (i % 6), "COUT": 32 + 16 * (i // 6), "KERNEL_SIZE": 3, "STRIDES": 1}
        for i in range(n)
    ]


def prepare(root: Path, n: int) -> Path:
    ws = root / "template"
    Workspace.create(ws, "tflite-adb").close()
    with Workspace.open(ws) as w, backend_class("tflite-adb")(w.campaign.backend_options) as backend:
        session = w.session(backend, workers=1)
        assert all(p.ok for p in session.prepare([kernel_spec("conv-bn-relu", c) for c in configs(n)]))
        session._anchors()
    return ws


def campaign(template: Path, root: Path, name: str, phones: list, n: int, **cluster) -> dict[str, float]:
    ws = root / name
    shutil.copytree(template, ws)
    lab_campaign(ws, phones, engine="local", check_every=0, **cluster)
    import yaml

    path = ws / "campaign.yaml"
    data = yaml.safe_load(path.read_text())
    data["protocol"].update(PROTOCOL)
    path.write_text(yaml.safe_dump(data))
    with Workspace.open(ws) as w, w.lock(), w.open_lab(), w.connect() as backend:
        session = w.session(backend, workers=1)
        records = [p.record for p in session.prepare([kernel_spec("conv-bn-relu", c) for c in configs(n)])]
        measured = session.measure(records)
        checks = {c.unit[-5:]: f"{c.verdict} {c.ratio:.3f}" for c in w.store.unit_checks() if c.ratio}
    print(f"  {name}: units {sorted({m.unit[-5:] for m in measured})}, checks {checks}", flush=True)
    return {m.model_id: m.latency_ms for m in measured if m.latency_ms is not None}


def score(reference: dict[str, float], other: dict[str, float]) -> str:
    errors = [abs(other[k] / reference[k] - 1) for k in reference if k in other]
    within = sum(e <= 0.10 for e in errors) / len(errors)
    return f"±10 % of one unit: {100 * within:5.1f} %, median error {100 * statistics.median(errors):4.1f} %"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--slow", type=float, default=1.3, help="how much slower the third unit is")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nnmeter-lab-agreement-"))
    server = ADBServer(adb_binary(), free_port())
    server.start()
    phones = []
    try:
        template = prepare(root, args.models)
        phones = [LoopbackPhone(server, root / f"phone{i}") for i in range(3)]
        for phone in phones:  # each unit as if on cores of its own: its invocations timed by their CPU time
            (phone.sandbox / "device-clock").write_text("cpu")
        (phones[2].sandbox / "device-x").write_text(str(args.slow))
        n = args.models
        print(f"{n} conv-bn-relu kernels; units A, B and C ({args.slow:g}x slower); local engine", flush=True)
        one = campaign(template, root, "one-unit", phones[:1], n)
        rows = {
            "one unit again (repeatability)": campaign(template, root, "one-unit-again", phones[:1], n),
            "lab A+B, same type": campaign(template, root, "lab-ab", phones[:2], n),
            "lab A+B+C, outliers not handled": campaign(template, root, "lab-abc-off", phones, n, tolerance=10.0),
            "lab A+B+C, outliers: scale": campaign(template, root, "lab-abc-scale", phones, n, outliers="scale"),
            "lab A+B+C, outliers: exclude": campaign(template, root, "lab-abc-exclude", phones, n, outliers="exclude"),
        }
        for name, latencies in rows.items():
            print(f"{name:34s} {score(one, latencies)}")
    finally:
        for phone in phones:
            phone.kill()
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

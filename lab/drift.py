"""Drift of the device's speed between batches, and what the drift anchors and long batches do about it.

Builds a few small evaluation models (whole networks) and prior-sampled conv-bn-relu
kernels in a scratch workspace on tflite-local, then measures all of them again and
again, each time an independent measurement through ``MeasuringSession.measure`` (new
runner process, the full protocol, the drift anchors in every batch), alternating two
batch sizes: short batches (16 models, ~2 s of rounds) and long ones (every model in one
batch, ~10 s). Per batch size it prints the spread of each model's latency across the
sessions (standard deviation of the log, ~ relative), as the median over whole models and
over kernels, three ways: as measured (``stats.value(statistic)``), scaled by its batch's
anchor factor in full (``anchor_factor`` of the store's ``batches`` table), and as the store
reads it (``MeasurementRecord.latency_ms``: the batch's ``drift_factor``, the anchor factor
raised to the weight the drift check had fitted when the batch was stored). Then, per batch
size, the factors and weights the ``batches`` table holds, and the store's drift check of the
workspace (the weight the next batch would get). The factors are decided when each batch is
stored, from the batches before it: the first batches of a fresh workspace have little history.

    .venv/bin/python lab/drift.py                 # 8 models + 56 kernels, 10 sessions per batch size
    .venv/bin/python lab/drift.py --sessions 4    # quicker
    .venv/bin/python lab/drift.py --sessions 2 --models 2 --kernels 24    # quickest
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from nnmeter.builder.workspace import Workspace  # noqa: E402
from nnmeter.cli.render import Output, Table  # noqa: E402
from nnmeter.evaluation.zoo import build_zoo_model, evaluation_set  # noqa: E402
from nnmeter.kernel_gen.samplers import sample_configs  # noqa: E402
from nnmeter.measurement import MeasurementRecord, ModelSpec, kernel_spec  # noqa: E402

FAMILIES = ("mobilenetv2", "mobilenetv3small", "nas-mbv2", "nas-resnet", "nas-shuffle", "nas-inception")
SHORT_BATCH = 16
#: How each reading of a measurement is taken: as measured, anchored in full, as the store reads it.
WAYS = ("measured", "anchored", "stored")


@dataclasses.dataclass(frozen=True)
class Batch:
    """A row of the store's ``batches`` table."""

    anchor_level: float | None
    anchor_factor: float | None
    weight: float
    weight_pairs: int
    drift_factor: float


def spread(values: list[float]) -> float:
    logs = [math.log(v) for v in values]
    return statistics.stdev(logs) if len(logs) > 1 else float("nan")


def read_batches(store: Path, ids: set[str]) -> dict[str, Batch]:
    """The ``batches`` rows of ``ids``, read-only (the store has no reader for them)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = db.execute(
            f"SELECT id, anchor_level, anchor_factor, weight, weight_pairs, drift_factor FROM batches "
            f"WHERE id IN ({', '.join('?' * len(ids))})",
            sorted(ids),
        ).fetchall()
    finally:
        db.close()
    return {row[0]: Batch(*row[1:]) for row in rows}


def readings(m: MeasurementRecord, batches: dict[str, Batch]) -> dict[str, float]:
    """``m``'s latency (ms) each of the :data:`WAYS` (``m`` has a latency)."""
    assert m.stats is not None and m.latency_ms is not None
    measured = m.stats.value(m.statistic)
    factor = batches[m.batch].anchor_factor if m.batch in batches else None
    return {"measured": measured, "anchored": measured * (factor or 1.0), "stored": m.latency_ms}


def span(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10, help="measurements of each model per batch size")
    parser.add_argument("--models", type=int, default=8, help="whole models (evaluation zoo, 96 and 128 px)")
    parser.add_argument("--kernels", type=int, default=56, help="conv-bn-relu kernels measured with the models")
    parser.add_argument("--workspace", type=Path, help="scratch workspace (default: a temp dir)")
    args = parser.parse_args()
    if args.sessions < 2:
        parser.error(f"--sessions must be at least 2 (a spread needs two measurements), got {args.sessions}")
    out = Output()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workspace or Path(tmp) / "ws"
        ws = Workspace.open(root) if (root / "campaign.yaml").exists() else Workspace.create(root, "tflite-local")
        with ws, ws.connect() as backend, out.reporter() as reporter:
            session = ws.session(backend, reporter=reporter)
            zoo = evaluation_set(FAMILIES, 2, [96, 128], seed=7)[: args.models]
            specs = [
                ModelSpec(
                    "evaluation",
                    m.name,
                    {"family": m.family, **m.params},
                    build_zoo_model,
                    (m.family, m.name, dict(m.params)),
                )
                for m in zoo
            ]
            specs += [
                kernel_spec("conv-bn-relu", c) for c in sample_configs("conv-bn-relu", args.kernels, "prior", seed=11)
            ]
            records = [p.record for p in session.prepare(specs) if p.ok and p.record is not None]
            whole = {r.id for r in records if r.kind == "evaluation"}
            base = session.protocol
            sizes = {"short": SHORT_BATCH, "long": len(records)}
            measured: dict[str, list[MeasurementRecord]] = {name: [] for name in sizes}
            with reporter.task("sessions", args.sessions * len(sizes)) as task:
                for n in range(args.sessions):
                    for name, size in sizes.items():
                        measured[name] += session.measure(
                            records,
                            protocol=dataclasses.replace(base, batch_size=size),
                            remeasure=True,
                            series=f"drift-bench-{name}-{n}",
                            progress=lambda *_: None,
                        )
                        task.update(n * len(sizes) + list(sizes).index(name) + 1)
            check = ws.store.drift_check(session.device, backend.name, base.key())
        # each batch's factors as the store decided them when it was stored
        batches = read_batches(ws.store_path, {m.batch for ms in measured.values() for m in ms})
        values = {(name, way): {r.id: [] for r in records} for name in sizes for way in WAYS}
        for name, ms in measured.items():
            for m in ms:
                if m.latency_ms is not None and m.model_id in values[(name, "measured")]:
                    for way, latency in readings(m, batches).items():
                        values[(name, way)][m.model_id].append(latency)

        numbers = [
            f"{group}, {way}" if way == "measured" else way for group in ("whole models", "kernels") for way in WAYS
        ]
        table = Table(
            f"spread of the latency across {args.sessions} sessions (sd of log)",
            ["batches", "", *numbers],
            right=numbers,
        )
        for name, size in sizes.items():
            cells = []
            for group in (whole, {r.id for r in records} - whole):
                for way in WAYS:
                    spreads = [spread(v) for mid, v in values[(name, way)].items() if mid in group]
                    cells.append(f"{100 * statistics.median(spreads):.1f} %" if spreads else "-")
            table.add(name, f"{size} models", *cells)
        out.table(table)
        for name in sizes:
            rows = [batches[b] for b in dict.fromkeys(m.batch for m in measured[name]) if b in batches]
            out.line(
                f"{name} batches ({len(rows)}): anchor factor "
                f"{span([b.anchor_factor for b in rows if b.anchor_factor is not None])}, "
                f"weight {span([b.weight for b in rows])} (last fitted on {rows[-1].weight_pairs if rows else 0} "
                f"pairs), drift factor {span([b.drift_factor for b in rows])}"
            )
        out.line(
            f"{len(whole)} whole models ({', '.join(sorted(m.name for m in zoo))}), "
            f"{len(records) - len(whole)} kernels; protocol {base.rounds} rounds x "
            f"{base.runs_per_round} runs, min {base.min_round_ms} ms per round, statistic {base.statistic}"
        )
        out.line(f"drift check of the workspace: {check.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drift of the device's speed between batches, and what the drift anchors and long batches do about it.

Builds a few small evaluation models (whole networks) and prior-sampled conv-bn-relu
kernels in a scratch workspace on tflite-local, then measures all of them again and
again, each time an independent measurement through ``measure_models`` (new runner
process, the full protocol, the drift anchors in every batch), alternating two batch
sizes: short batches (16 models, ~2 s of rounds) and long ones (every model in one
batch, ~10 s). Per batch size it prints the spread of each model's headline across
the sessions (standard deviation of the log, ~ relative), as measured
(``stats.median_ms``) and scaled by the batch's anchors (``Store.anchor_factors``), as
the median over whole models and over kernels, and the store's drift check of the
workspace (the weight at which ``latency_ms`` applies the anchors' factors on this device).

    .venv/bin/python bench/drift.py                 # 8 models + 56 kernels, 10 sessions per batch size
    .venv/bin/python bench/drift.py --sessions 4    # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from nnmeter.backends import connect_backend  # noqa: E402
from nnmeter.builder.measuring import measure_models  # noqa: E402
from nnmeter.builder.models import ModelSpec, kernel_spec, prepare_models  # noqa: E402
from nnmeter.builder.workspace import Workspace  # noqa: E402
from nnmeter.builder.zoo import build_zoo_model, evaluation_set  # noqa: E402
from nnmeter.kernel_gen.samplers import sample_configs  # noqa: E402

FAMILIES = ("mobilenetv2", "mobilenetv3small", "nas-mbv2", "nas-resnet", "nas-shuffle", "nas-inception")
SHORT_BATCH = 16


def spread(values: list[float]) -> float:
    logs = [math.log(v) for v in values]
    return statistics.stdev(logs) if len(logs) > 1 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10, help="measurements of each model per batch size")
    parser.add_argument("--kernels", type=int, default=56, help="conv-bn-relu kernels measured with the models")
    parser.add_argument("--workspace", type=Path, help="scratch workspace (default: a temp dir)")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workspace or Path(tmp) / "ws"
        ws = Workspace.open(root) if (root / "campaign.yaml").exists() else Workspace.create(root, "tflite-local")
        with ws, connect_backend("tflite-local") as backend:
            zoo = evaluation_set(FAMILIES, 2, [96, 128], seed=7)[:8]
            specs = [ModelSpec("evaluation", m.name, {"family": m.family, **m.params}, build_zoo_model,
                               (m.family, m.name, dict(m.params))) for m in zoo]
            specs += [kernel_spec("conv-bn-relu", c) for c in sample_configs("conv-bn-relu", args.kernels, "prior",
                                                                             seed=11)]
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("converting", total=len(specs))
                prepared = [p for p in prepare_models(ws, backend, specs, progress=lambda d, t: bar.update(
                    task, completed=d, total=t)) if p.ok]
            records = [p.record for p in prepared]
            whole = {r.id for r in records if r.kind == "evaluation"}
            base = ws.campaign.protocol
            sizes = {"short": SHORT_BATCH, "long": len(records)}
            readings = {(name, corrected): {r.id: [] for r in records}
                        for name in sizes for corrected in (False, True)}
            series = []
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("sessions", total=args.sessions * len(sizes))
                for session in range(args.sessions):
                    for name, size in sizes.items():
                        label = f"drift-bench-{name}-{session}"
                        series.append((name, label))
                        measure_models(ws.store, backend, records, dataclasses.replace(base, batch_size=size),
                                       workspace_root=ws.root, remeasure=True, series=label,
                                       progress=lambda *_: None)
                        bar.advance(task)
            # read back at the end: every batch's factor against the anchors' median over all batches (the
            # anchors' factors in full, whatever weight the store's drift check gives them in latency_ms)
            where = (backend.device_info.device, backend.name, base.key())
            factors = ws.store.anchor_factors(*where)
            for name, label in series:
                for _, m in ws.store.latest_measurements(*where, series=label):
                    if m.latency_ms is not None and m.model_id in readings[(name, False)]:
                        readings[(name, False)][m.model_id].append(m.stats.median_ms)
                        readings[(name, True)][m.model_id].append(m.stats.median_ms * factors.get(m.batch, 1.0))

            table = Table(title=f"spread of the headline across {args.sessions} sessions (sd of log)")
            for column in ("batches", "", "whole models, measured", "anchored", "kernels, measured", "anchored"):
                table.add_column(column, justify="left" if not column or column == "batches" else "right")
            for name, size in sizes.items():
                cells = []
                for group in (whole, {r.id for r in records} - whole):
                    for corrected in (False, True):
                        values = [spread(v) for mid, v in readings[(name, corrected)].items() if mid in group]
                        cells.append(f"{100 * statistics.median(values):.1f} %")
                table.add_row(name, f"{size} models", *cells)
            console.print(table)
            console.print(f"{len(whole)} whole models ({', '.join(sorted(m.name for m in zoo))}), "
                          f"{len(records) - len(whole)} kernels; protocol {base.rounds} rounds x "
                          f"{base.runs_per_round} runs, min {base.min_round_ms} ms per round")
            console.print(f"drift check of the workspace: {ws.store.drift_check(*where).describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How repeatable a batch of whole models is with its rounds back to back and spread over time (``min_batch_s``).

Measures the evaluation models of a workspace (its ``evaluation`` records that are not calibration models,
with their converted files) in alternating passes with the campaign's protocol: rounds back to back, twice
the rounds back to back, and the rounds spread over ``--spread`` seconds. Nothing is stored. Prints, per
way: how far each pass's typical level lies from the others (level sd: of the passes' median over models),
how often two passes agree within ±10 % per model (pairs ±10 %), the root mean square of their log ratio,
and the per-model standard deviation over passes (model sd). A pass of ~20 models back to back takes
~10 s here, inside one of the host's fast or slow periods; that is what ``protocol.whole_model_batch_s``
is for.

    python lab/pacing.py WS                   # 4 cycles, spread over 30 s (about 6 minutes)
    python lab/pacing.py WS --cycles 6 --spread 60
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from nnmeter.backends.base import ModelFile  # noqa: E402
from nnmeter.builder.workspace import Workspace  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path, help="a workspace whose evaluation models are converted")
    parser.add_argument("--cycles", type=int, default=4, help="passes of each way (default 4)")
    parser.add_argument("--spread", type=float, default=30.0, help="seconds the spread passes take at least")
    args = parser.parse_args(argv)
    if args.cycles < 2:
        parser.error(f"--cycles must be at least 2 (passes are compared in pairs), got {args.cycles}")
    console = Console()
    with Workspace.open(args.workspace) as ws, ws.connect() as backend:
        records = [r for r in ws.store.models(kind="evaluation") if not r.name.startswith("calibration-")]
        fmt = backend.model_format
        paths = {r.id: r.path(fmt, ws.root) for r in records}
        models = [ModelFile(i, path, fmt) for i, path in paths.items() if path is not None and path.exists()]
        if len(models) < 2:
            console.print(
                f"{args.workspace}: {len(models)} converted evaluation models; run `nnmeter-build "
                f"evaluate {args.workspace}` first",
                markup=False,
            )
            return 2
        base = dataclasses.replace(ws.campaign.protocol, min_batch_s=0.0)
        ways = {
            "back to back": base,
            "2x rounds": dataclasses.replace(base, rounds=2 * base.rounds),
            f"spread {args.spread:g} s": dataclasses.replace(base, min_batch_s=args.spread),
        }
        logs: dict[str, list[np.ndarray]] = {name: [] for name in ways}
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        console.print(f"{len(models)} models of {args.workspace}, {args.cycles} cycles", markup=False)
        for cycle in range(args.cycles):
            for name, protocol in ways.items():
                started = time.monotonic()
                results = backend.measure(models, protocol)
                seconds[name].append(time.monotonic() - started)
                logs[name].append(np.log([r.stats.fastest_round_ms if r.stats else np.nan for r in results]))
                console.print(f"cycle {cycle + 1}: {name}, {seconds[name][-1]:.1f} s", markup=False)
    everything = np.vstack([p for passes in logs.values() for p in passes])
    typical = np.nanmedian(everything, axis=0)  # each model's median over every pass
    table = Table(title="the fastest round of each model, per pass (its ground truth)")
    for column in ("rounds", "s / pass", "level sd", "pairs ±10 %", "rms log ratio", "model sd"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, passes in logs.items():
        L = np.vstack(passes)
        levels = np.nanmedian(L - typical, axis=1)
        pairs = [(i, j) for i in range(len(L)) for j in range(i + 1, len(L))]
        within = np.nanmean([np.abs(np.expm1(L[i] - L[j])) <= 0.10 for i, j in pairs])
        rms = np.nanmean([np.sqrt(np.nanmean((L[i] - L[j]) ** 2)) for i, j in pairs])
        table.add_row(
            name,
            f"{np.mean(seconds[name]):.1f}",
            f"{100 * np.std(levels):.2f} %",
            f"{100 * within:.1f} %",
            f"{100 * rms:.2f} %",
            f"{100 * np.nanmean(np.nanstd(L, axis=0)):.2f} %",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

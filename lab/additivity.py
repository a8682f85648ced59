"""Additivity diagnostic: is a model's latency the sum of its kernels' latencies on this device?

For each evaluation model of a workspace, the predictor engine detects its kernels
(the artifact's fusion rules); each detected kernel is built standalone
(:func:`nnmeter.kernel_gen.build_kernel_model`), converted through the workspace's
store, and measured in ONE round-robin batch with the whole model and a trivial
model (a one-element add: the interpreter's fixed cost per invoke), so that all of
them see the same device states. Every latency is the campaign protocol's ``statistic``, the one
training and evaluation use (the median was read here until, on a host whose whole models' median ran
up to 1.5x their fastest round, it made the sums look 22.5 % short where the fastest rounds say 17.4 %).
Per model it prints:

* ``model``: the measured whole model;
* ``sum meas``: the sum of the measured standalone kernels (each counted as often as
  the model holds it) -> the *additivity* error ``sum meas / model - 1``: invoke
  overhead paid once per kernel, cache effects, ops the runtime runs differently
  inside a model, detection mistakes;
* ``sum - (n-1) x0``: the same with the trivial model's time ``x0`` paid once per model
  instead of once per kernel;
* ``sum pred``: the sum of the artifact's kernel predictions as standalone kernels (the
  engine's per-kernel figures plus the artifact's ``invoke_overhead_ms``, which the engine
  takes off every kernel) -> the *regressor* error ``sum pred / sum meas - 1``;
* ``pred err``: the engine's prediction of the whole model against the measured model;

then, per kernel type over all models, the measured and predicted sums and the worst
kernel configs. The numbers go to ``WS/reports/additivity.json``.

    .venv/bin/python bench/additivity.py WS                       # every evaluation model of WS
    .venv/bin/python bench/additivity.py WS --models 'nas-*' --rounds 15
    .venv/bin/python bench/additivity.py WS --kind user --models 'efficientnet*'   # of evaluate --models DIR
    .venv/bin/python bench/additivity.py WS --cache warm evict-private evict-all --min-round-ms 0

``--cache`` measures the model and its kernels in each listed cache state of the
protocol (``MeasurementProtocol.cache``), one batch after the other per model.

The kernel models go into WS's store (kind 'kernel', shared with training); the
measurements here are not stored (they are a diagnostic, taken with a protocol of
their own).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nnmeter import ops
from nnmeter.backends.base import ModelFile
from nnmeter.builder.models import kernel_spec, prepare_models
from nnmeter.builder.packaging import default_artifact_dir
from nnmeter.builder.workspace import Workspace
from nnmeter.predictor.artifact import load_artifact
from nnmeter.predictor.converters import to_graph
from nnmeter.predictor.detection import detect
from nnmeter.predictor.engine import Predictor

#: The trivial model: one add of two 1x1x1 tensors; its time is the fixed cost of one invoke.
TRIVIAL = ("add", {ops.HW: 1, ops.CIN: 1})


def _key(kernel: str, config: dict) -> str:
    return json.dumps([kernel, config], sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--artifact", type=Path, help="predictor folder (default: the workspace's)")
    parser.add_argument("--models", nargs="*", default=["*"], help="glob(s) over evaluation model names")
    parser.add_argument("--kind", default="evaluation", choices=("evaluation", "user"),
                        help="the campaign's evaluation models, or those of `nnmeter-build evaluate WS --models DIR`")
    parser.add_argument("--rounds", type=int, help="rounds per model (default: the campaign's)")
    parser.add_argument("--min-round-ms", type=float, help="min_round_ms (default: the campaign's; 0 with evict-all, "
                                                             "whose eviction takes ~1.5 ms per invocation)")
    parser.add_argument("--out", type=Path, help="JSON output (default WS/reports/additivity.json)")
    parser.add_argument("--cache", nargs="+", choices=("warm", "evict-private", "evict-all"),
                        help="cache state(s) to measure in (default: the campaign protocol's)")
    args = parser.parse_args(argv)
    console = Console()

    with Workspace.open(args.workspace) as ws:
        artifact = load_artifact(args.artifact or default_artifact_dir(ws))
        predictor = Predictor(artifact)
        records = sorted((r for r in ws.store.models(kind=args.kind) if "tflite" in r.files
                          and any(fnmatch.fnmatch(r.name, g) for g in args.models)), key=lambda r: r.name)
        if not records:
            console.print(f"no {args.kind} model with a .tflite file matches")
            return 1
        # detect every model's kernels and predict them (the engine's own numbers)
        detected: dict[str, list[tuple[str, dict, float]]] = {}  # kernel, config, predicted standalone ms
        engine_ms: dict[str, float] = {}
        overhead = artifact.invoke_overhead_ms
        for rec in records:
            path = rec.path("tflite", ws.root)
            det = detect(to_graph(str(path)), artifact.rules, artifact.kernels)
            pred = predictor.predict(str(path), strict=False)
            problems = [f"{'-'.join(k.ops)} ({k.problem})" for k in det.unsupported]
            if problems:
                console.print(f"{rec.name}: not predicted: {'; '.join(problems[:5])}")
            detected[rec.name] = [(k.kernel, dict(k.config), k.ms + overhead) for k in pred.kernels]
            engine_ms[rec.name] = pred.latency_ms
        unique = {_key(k, c): (k, c) for rows in detected.values() for k, c, _ in rows}
        unique[_key(*TRIVIAL)] = TRIVIAL
        specs = {key: kernel_spec(k, c) for key, (k, c) in unique.items()}
        console.print(f"{len(records)} models, {sum(map(len, detected.values()))} kernels, "
                      f"{len(unique)} distinct kernel models (converting those not in the store)")
        backend = ws.connect()
        prepared = dict(zip(specs, prepare_models(ws, backend, list(specs.values()))))
        failed = {key: p.error for key, p in prepared.items() if not p.ok}
        for key, err in list(failed.items())[:5]:
            console.print(f"kernel model failed: {key}: {err.splitlines()[0] if err else ''}")

        protocol = ws.campaign.protocol
        if args.rounds:
            protocol = dataclasses.replace(protocol, rounds=args.rounds)
        if args.min_round_ms is not None:
            protocol = dataclasses.replace(protocol, min_round_ms=args.min_round_ms)
        modes = args.cache or [protocol.cache]
        rows_out = []
        per_kernel: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "measured": 0.0, "predicted": 0.0})
        worst: list[tuple[float, str, dict, float, float]] = []
        for rec, mode in ((rec, mode) for rec in records for mode in modes):
            keys = sorted({_key(k, c) for k, c, _ in detected[rec.name]} | {_key(*TRIVIAL)})
            keys = [k for k in keys if k not in failed]
            files = [ModelFile(rec.id, rec.path("tflite", ws.root), "tflite")]
            files += [prepared[k].file for k in keys]
            batch = dataclasses.replace(protocol, batch_size=len(files), cache=mode)
            results = {r.model_id: r for r in backend.measure(files, batch)}
            model_res = results[rec.id]
            kernel_ms = {k: results[prepared[k].id].stats.value(protocol.statistic) for k in keys
                         if results[prepared[k].id].stats is not None}
            if model_res.stats is None or _key(*TRIVIAL) not in kernel_ms:
                console.print(f"{rec.name}: measurement failed: {model_res.error}")
                continue
            trivial = kernel_ms[_key(*TRIVIAL)]
            n = len(detected[rec.name])
            missing = sum(1 for k, c, _ in detected[rec.name] if _key(k, c) not in kernel_ms)
            sum_meas = sum(kernel_ms.get(_key(k, c), 0.0) for k, c, _ in detected[rec.name])
            sum_pred = sum(ms for _, _, ms in detected[rec.name])
            model_ms = model_res.stats.value(protocol.statistic)
            for k, c, p in detected[rec.name]:
                m = kernel_ms.get(_key(k, c))
                if m is None:
                    continue
                label = k if len(modes) == 1 else f"{k} ({mode})"
                per_kernel[label]["n"] += 1
                per_kernel[label]["measured"] += m
                per_kernel[label]["predicted"] += p
                worst.append((p - m, label, c, m, p))
            rows_out.append({"model": rec.name, "cache": mode, "model_ms": model_ms, "kernels": n,
                             "kernels_not_measured": missing,
                             "sum_measured_ms": sum_meas, "sum_predicted_ms": sum_pred, "trivial_ms": trivial,
                             "predicted_ms": engine_ms[rec.name],
                             "sum_measured_overhead_once_ms": sum_meas - (n - 1) * trivial})
            console.print(f"{rec.name} ({mode}): model {model_ms:.3f} ms, {n} kernels, sum measured {sum_meas:.3f}, "
                          f"sum predicted {sum_pred:.3f}, trivial {trivial * 1000:.1f} us")
        backend.close()

    table = Table(title="additivity: whole model vs its kernels measured standalone (ms; errors in %)")
    for col in ("model", "cache", "kernels", "model", "sum meas", "add. err", "sum - (n-1) x0", "err", "sum pred",
                "regr. err", "pred err"):
        table.add_column(col, justify="left" if col == "model" and not table.columns else "right")
    for r in rows_out:
        def pct(a: float, b: float) -> str:
            return f"{100 * (a / b - 1):+.1f}"
        table.add_row(r["model"], r["cache"], str(r["kernels"]), f"{r['model_ms']:.3f}", f"{r['sum_measured_ms']:.3f}",
                      pct(r["sum_measured_ms"], r["model_ms"]), f"{r['sum_measured_overhead_once_ms']:.3f}",
                      pct(r["sum_measured_overhead_once_ms"], r["model_ms"]), f"{r['sum_predicted_ms']:.3f}",
                      pct(r["sum_predicted_ms"], r["sum_measured_ms"]), pct(r["predicted_ms"], r["model_ms"]))
    console.print(table)
    for mode in modes:
        rows = [r for r in rows_out if r["cache"] == mode]
        if not rows:
            continue

        def mean_abs(key: str, ref: str) -> float:
            return 100 * sum(abs(r[key] / r[ref] - 1) for r in rows) / len(rows)
        signed = 100 * sum(r["sum_measured_overhead_once_ms"] / r["model_ms"] - 1 for r in rows) / len(rows)
        console.print(f"cache {mode}: mean |error| over {len(rows)} models: additivity (overhead once) "
                      f"{mean_abs('sum_measured_overhead_once_ms', 'model_ms'):.1f} % (mean signed {signed:+.1f} %), "
                      f"regressor {mean_abs('sum_predicted_ms', 'sum_measured_ms'):.1f} %, prediction "
                      f"{mean_abs('predicted_ms', 'model_ms'):.1f} %; artifact invoke overhead "
                      f"{1000 * overhead:.1f} us")
    ktable = Table(title="per kernel type, over all models (each kernel counted as often as models hold it)")
    for col in ("kernel", "count", "measured ms", "predicted ms", "pred/meas - 1 %"):
        ktable.add_column(col, justify="left" if col == "kernel" else "right")
    for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1]["measured"]):
        ktable.add_row(k, str(v["n"]), f"{v['measured']:.3f}", f"{v['predicted']:.3f}",
                       f"{100 * (v['predicted'] / v['measured'] - 1):+.1f}" if v["measured"] else "-")
    console.print(ktable)
    distinct = {(_key(k, c)): (d, k, c, m, p) for d, k, c, m, p in worst}
    console.print("largest kernel misses (predicted - measured, ms, per occurrence):")
    for d, k, c, m, p in sorted(distinct.values(), key=lambda t: -abs(t[0]))[:15]:
        console.print(f"  {k:18s} {json.dumps(c)}: measured {m:.4f}, predicted {p:.4f} ({100 * (p / m - 1):+.0f} %)")
    out = args.out or args.workspace / "reports" / "additivity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"models": rows_out, "per_kernel": per_kernel,
                               "kernels": [{"kernel": k, "config": c, "measured_ms": m, "predicted_ms": p}
                                           for _, k, c, m, p in distinct.values()]}, indent=1))
    console.print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

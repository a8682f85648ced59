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

    .venv/bin/python lab/additivity.py WS                       # every evaluation model of WS
    .venv/bin/python lab/additivity.py WS --models 'nas-*' --rounds 15
    .venv/bin/python lab/additivity.py WS --kind user --models 'efficientnet*'   # of evaluate --models DIR

The model and its kernels are measured warm, back to back in one batch (the only cache
state the runner has).

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
from nnmeter.builder.workspace import Workspace
from nnmeter.cli.render import Output
from nnmeter.measurement import kernel_spec
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
    parser.add_argument(
        "--kind",
        default="evaluation",
        choices=("evaluation", "user"),
        help="the campaign's evaluation models, or those of `nnmeter-build evaluate WS --models DIR`",
    )
    parser.add_argument("--rounds", type=int, help="rounds per model (default: the campaign's)")
    parser.add_argument("--min-round-ms", type=float, help="min_round_ms (default: the campaign's)")
    parser.add_argument("--out", type=Path, help="JSON output (default WS/reports/additivity.json)")
    args = parser.parse_args(argv)
    console = Console()

    with Workspace.open(args.workspace) as ws:
        artifact = load_artifact(args.artifact or ws.predictor_dir)
        predictor = Predictor(artifact)
        records = sorted(
            (
                r
                for r in ws.store.models(kind=args.kind)
                if "tflite" in r.files and any(fnmatch.fnmatch(r.name, g) for g in args.models)
            ),
            key=lambda r: r.name,
        )
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
        console.print(
            f"{len(records)} models, {sum(map(len, detected.values()))} kernels, "
            f"{len(unique)} distinct kernel models (converting those not in the store)"
        )
        with ws.connect() as backend:
            with Output().reporter() as reporter:
                prepared = dict(zip(specs, ws.session(backend, reporter=reporter).prepare(list(specs.values()))))
            failed = {key: p.error for key, p in prepared.items() if not p.ok}
            for key, err in list(failed.items())[:5]:
                console.print(f"kernel model failed: {key}: {err.splitlines()[0] if err else ''}")

            protocol = ws.campaign.protocol
            if args.rounds:
                protocol = dataclasses.replace(protocol, rounds=args.rounds)
            if args.min_round_ms is not None:
                protocol = dataclasses.replace(protocol, min_round_ms=args.min_round_ms)
            rows_out = []
            per_kernel: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "measured": 0.0, "predicted": 0.0})
            worst: list[tuple[float, str, dict, float, float]] = []
            for rec in records:
                keys = sorted({_key(k, c) for k, c, _ in detected[rec.name]} | {_key(*TRIVIAL)})
                keys = [k for k in keys if k not in failed]
                files = [ModelFile(rec.id, rec.path("tflite", ws.root), "tflite")]
                files += [prepared[k].file for k in keys]
                batch = dataclasses.replace(protocol, batch_size=len(files))
                results = {r.model_id: r for r in backend.measure(files, batch)}
                model_res = results[rec.id]
                kernel_ms = {
                    k: results[prepared[k].id].stats.value(protocol.statistic)
                    for k in keys
                    if results[prepared[k].id].stats is not None
                }
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
                    per_kernel[k]["n"] += 1
                    per_kernel[k]["measured"] += m
                    per_kernel[k]["predicted"] += p
                    worst.append((p - m, k, c, m, p))
                rows_out.append(
                    {
                        "model": rec.name,
                        "model_ms": model_ms,
                        "kernels": n,
                        "kernels_not_measured": missing,
                        "sum_measured_ms": sum_meas,
                        "sum_predicted_ms": sum_pred,
                        "trivial_ms": trivial,
                        "predicted_ms": engine_ms[rec.name],
                        "sum_measured_overhead_once_ms": sum_meas - (n - 1) * trivial,
                    }
                )
                console.print(
                    f"{rec.name}: model {model_ms:.3f} ms, {n} kernels, sum measured {sum_meas:.3f}, "
                    f"sum predicted {sum_pred:.3f}, trivial {trivial * 1000:.1f} us"
                )

    table = Table(title="additivity: whole model vs its kernels measured standalone (ms; errors in %)")
    for col in (
        "model",
        "kernels",
        "model",
        "sum meas",
        "add. err",
        "sum - (n-1) x0",
        "err",
        "sum pred",
        "regr. err",
        "pred err",
    ):
        table.add_column(col, justify="left" if col == "model" and not table.columns else "right")
    for r in rows_out:

        def pct(a: float, b: float) -> str:
            return f"{100 * (a / b - 1):+.1f}"

        table.add_row(
            r["model"],
            str(r["kernels"]),
            f"{r['model_ms']:.3f}",
            f"{r['sum_measured_ms']:.3f}",
            pct(r["sum_measured_ms"], r["model_ms"]),
            f"{r['sum_measured_overhead_once_ms']:.3f}",
            pct(r["sum_measured_overhead_once_ms"], r["model_ms"]),
            f"{r['sum_predicted_ms']:.3f}",
            pct(r["sum_predicted_ms"], r["sum_measured_ms"]),
            pct(r["predicted_ms"], r["model_ms"]),
        )
    console.print(table)
    if rows_out:

        def mean_abs(key: str, ref: str) -> float:
            return 100 * sum(abs(r[key] / r[ref] - 1) for r in rows_out) / len(rows_out)

        signed = 100 * sum(r["sum_measured_overhead_once_ms"] / r["model_ms"] - 1 for r in rows_out) / len(rows_out)
        console.print(
            f"mean |error| over {len(rows_out)} models: additivity (overhead once) "
            f"{mean_abs('sum_measured_overhead_once_ms', 'model_ms'):.1f} % (mean signed {signed:+.1f} %), "
            f"regressor {mean_abs('sum_predicted_ms', 'sum_measured_ms'):.1f} %, prediction "
            f"{mean_abs('predicted_ms', 'model_ms'):.1f} %; artifact invoke overhead "
            f"{1000 * overhead:.1f} us"
        )
    ktable = Table(title="per kernel type, over all models (each kernel counted as often as models hold it)")
    for col in ("kernel", "count", "measured ms", "predicted ms", "pred/meas - 1 %"):
        ktable.add_column(col, justify="left" if col == "kernel" else "right")
    for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1]["measured"]):
        ktable.add_row(
            k,
            str(v["n"]),
            f"{v['measured']:.3f}",
            f"{v['predicted']:.3f}",
            f"{100 * (v['predicted'] / v['measured'] - 1):+.1f}" if v["measured"] else "-",
        )
    console.print(ktable)
    distinct = {(_key(k, c)): (d, k, c, m, p) for d, k, c, m, p in worst}
    console.print("largest kernel misses (predicted - measured, ms, per occurrence):")
    for _, k, c, m, p in sorted(distinct.values(), key=lambda t: -abs(t[0]))[:15]:
        console.print(f"  {k:18s} {json.dumps(c)}: measured {m:.4f}, predicted {p:.4f} ({100 * (p / m - 1):+.0f} %)")
    out = args.out or args.workspace / "reports" / "additivity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "models": rows_out,
                "per_kernel": per_kernel,
                "kernels": [
                    {"kernel": k, "config": c, "measured_ms": m, "predicted_ms": p}
                    for _, k, c, m, p in distinct.values()
                ],
            },
            indent=1,
        )
    )
    console.print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

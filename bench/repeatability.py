"""Repeatability of the headline latency on tflite-local, and the measurement rate.

Measures the same small and medium models (single kernels up to MobileNetV2-style
blocks) N times, each time an independent measurement (a new runner process, the
full protocol), and prints per model the spread of the N headlines (median over
rounds): the relative range (max - min) / median and the largest deviation from
the median of the N. Target: median over models <= 2 %, worst <= 5 %.
Then prints how many measurements per minute the backend sustains on small kernel
models, conversion excluded.

    .venv/bin/python bench/repeatability.py            # 11 models x 10 measurements (tens of minutes)
    .venv/bin/python bench/repeatability.py --quick    # 3 models x 3 measurements, fewer rounds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from nnmeter.backends import connect_backend
from nnmeter.backends.base import ConversionJob
from nnmeter.backends.protocol import MeasurementProtocol

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _keras():
    import keras

    return keras


def conv(hw, cin, cout, k, stride=1):
    keras = _keras()
    x = keras.Input((hw, hw, cin), batch_size=1)
    return keras.Model(x, keras.layers.Conv2D(cout, k, stride, padding="same", activation="relu")(x))


def dwconv(hw, c, k, stride=1):
    keras = _keras()
    x = keras.Input((hw, hw, c), batch_size=1)
    return keras.Model(x, keras.layers.DepthwiseConv2D(k, stride, padding="same", activation="relu")(x))


def fc(cin, cout):
    keras = _keras()
    x = keras.Input((cin,), batch_size=1)
    return keras.Model(x, keras.layers.Dense(cout)(x))


def add_relu(hw, c):
    keras = _keras()
    a, b = keras.Input((hw, hw, c), batch_size=1), keras.Input((hw, hw, c), batch_size=1)
    return keras.Model([a, b], keras.layers.ReLU()(keras.layers.Add()([a, b])))


def _inverted_residual(x, cout, expand, stride):
    keras = _keras()
    cin = x.shape[-1]
    y = keras.layers.Conv2D(cin * expand, 1, use_bias=False)(x)
    y = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(y))
    y = keras.layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False)(y)
    y = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(y))
    y = keras.layers.BatchNormalization()(keras.layers.Conv2D(cout, 1, use_bias=False)(y))
    return keras.layers.Add()([x, y]) if stride == 1 and cin == cout else y


def mbv2_blocks(hw, cin, couts_strides):
    keras = _keras()
    x = inputs = keras.Input((hw, hw, cin), batch_size=1)
    for cout, stride in couts_strides:
        x = _inverted_residual(x, cout, 6, stride)
    return keras.Model(inputs, x)


def resnet_block(hw, c):
    keras = _keras()
    x = keras.Input((hw, hw, c), batch_size=1)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(c, 3, padding="same")(x)))
    y = keras.layers.BatchNormalization()(keras.layers.Conv2D(c, 3, padding="same")(y))
    return keras.Model(x, keras.layers.ReLU()(keras.layers.Add()([x, y])))


def se_block(hw, c):
    keras = _keras()
    x = keras.Input((hw, hw, c), batch_size=1)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = keras.layers.Conv2D(c // 4, 1, activation="relu")(s)
    s = keras.layers.Conv2D(c, 1, activation="hard_sigmoid")(s)
    return keras.Model(x, keras.layers.Multiply()([x, s]))


# (id, build, args, small kernel model?)
MODELS = [
    ("conv3x3-28-32-32", conv, (28, 32, 32, 3), True),
    ("dwconv3x3-56-32", dwconv, (56, 32, 3), True),
    ("conv1x1-14-96-96", conv, (14, 96, 96, 1), True),
    ("fc-1024-1000", fc, (1024, 1000), True),
    ("add-relu-28-64", add_relu, (28, 64), True),
    ("conv3x3s2-56-16-32", conv, (56, 16, 32, 3, 2), True),
    ("se-14-96", se_block, (14, 96), True),
    ("mbv2-28-32", mbv2_blocks, (28, 32, ((32, 1),)), False),
    ("mbv2s2-56-24-32", mbv2_blocks, (56, 24, ((32, 2),)), False),
    ("resnet-28-64", resnet_block, (28, 64), False),
    ("mbv2x3-56-24", mbv2_blocks, (56, 24, ((24, 1), (32, 2), (32, 1))), False),
]
QUICK_MODELS = ("conv3x3-28-32-32", "dwconv3x3-56-32", "mbv2-28-32")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 models, 3 measurements, 10 rounds")
    parser.add_argument("--repeats", type=int, help="independent measurements per model (default 10; quick 3)")
    parser.add_argument("--rounds", type=int, help="protocol rounds (default: the protocol's; quick 10)")
    parser.add_argument("--models-dir", type=Path, help="where converted models are kept (default: a temp dir)")
    args = parser.parse_args()
    console = Console()
    models = [m for m in MODELS if not args.quick or m[0] in QUICK_MODELS]
    repeats = args.repeats or (3 if args.quick else 10)
    protocol = MeasurementProtocol()
    if args.rounds or args.quick:
        protocol = dataclasses.replace(protocol, rounds=args.rounds or 10)

    with tempfile.TemporaryDirectory() as tmp, connect_backend("tflite-local") as backend:
        out_dir = args.models_dir or Path(tmp)
        info = backend.device_info
        console.print(
            f"[bold]{info.device}[/]: {info.description}; {info.runtime}; "
            f"measuring on cores {info.facts['measure_cores']}; protocol {protocol}"
        )
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("converting", total=len(models))
            converted = backend.convert(
                [ConversionJob(mid, out_dir, build, build_args) for mid, build, build_args, _ in models],
                progress=lambda done, total: bar.update(task, completed=done),
            )
        failed = [c for c in converted if not c.ok]
        for c in failed:
            console.print(f"[red]{c.job_id}: conversion failed: {c.error}")
        files = [c.model for c in converted if c.ok]

        headlines: dict[str, list[float]] = {m.id: [] for m in files}
        measure_seconds, measured_count = 0.0, 0
        small = {mid for mid, _, _, is_small in models if is_small}
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("measuring", total=repeats * len(files))
            for r in range(repeats):
                t0 = time.perf_counter()
                results = backend.measure(
                    files, protocol, progress=lambda done, total, r=r: bar.update(task, completed=r * len(files) + done)
                )
                measure_seconds += time.perf_counter() - t0
                measured_count += len(results)
                for result in results:
                    if result.latency_ms is None:
                        console.print(f"[red]{result.model_id}: {result.status.value}: {result.error}")
                    else:
                        headlines[result.model_id].append(result.latency_ms)

        table = Table(title=f"headline (median over rounds) across {repeats} independent measurements")
        for column in ("model", "median ms", "range %", "max dev %", "n"):
            table.add_column(column, justify="left" if column == "model" else "right")
        ranges, deviations = [], []
        for mid, values in headlines.items():
            if len(values) < 2:
                continue
            med = statistics.median(values)
            rng = (max(values) - min(values)) / med * 100
            dev = max(abs(v - med) for v in values) / med * 100
            ranges.append(rng)
            deviations.append(dev)
            table.add_row(mid, f"{med:.4f}", f"{rng:.1f}", f"{dev:.1f}", str(len(values)))
        console.print(table)
        if deviations:
            console.print(
                f"max deviation from the median of the {repeats}: median over models "
                f"{statistics.median(deviations):.1f} %, worst {max(deviations):.1f} % "
                f"(target: median <= 2 %, worst <= 5 %); relative range: median "
                f"{statistics.median(ranges):.1f} %, worst {max(ranges):.1f} %"
            )

        small_files = [m for m in files if m.id in small]
        t0 = time.perf_counter()
        backend.measure(small_files, protocol)
        rate = len(small_files) / (time.perf_counter() - t0) * 60
        console.print(
            f"rate on {len(small_files)} small kernel models: {rate:.0f} measurements per minute "
            f"(protocol: {protocol.rounds} rounds x {protocol.runs_per_round} runs, "
            f"min {protocol.min_round_ms} ms per round; conversion excluded); "
            f"all models: {measured_count / measure_seconds * 60:.0f} per minute"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

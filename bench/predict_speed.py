"""Prediction speed of the engine (prints figures; no assertions).

    .venv/bin/python bench/predict_speed.py --predictor PATH_OR_NAME [--graphs 1000]

1. models/s of ``predict_many`` over N IR graphs of MobileNetV2- and ResNet-like models
   (widths, depths and resolutions drawn at random, as in a NAS loop);
2. ms for one .tflite, one ONNX and one Keras model end to end (process warm, import excluded);
3. cold start: a fresh process imports nnmeter, loads the predictor and predicts the .tflite
   file; wall time and peak RSS, and whether TensorFlow got imported.

Targets (issue 7): >= 1,000 models/s; <= 100 ms per .tflite; cold start <= 3 s and <= 400 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nnmeter.predictor import Graph, Node, load_predictor


class _Net:
    """Builds an IR graph layer by layer (NHWC shapes, batch 1)."""

    def __init__(self, name: str, hw: int, c: int) -> None:
        self.g = Graph(name, inputs={"x": [1, hw, hw, c]})
        self.last, self.shape, self.n = "x", [1, hw, hw, c], 0

    def op(
        self,
        op: str,
        out_c: int | None = None,
        stride: int = 1,
        src: str | None = None,
        extra: list[str] | None = None,
        **attrs,
    ) -> str:
        src = src or self.last
        shape = self.g.inputs.get(src) or self.g.nodes[src].output_shapes[0]
        hw = -(-shape[1] // stride)
        out = [1, hw, hw, out_c or shape[3]] if len(shape) == 4 else [1, out_c or shape[-1]]
        if op == "global-avgpool":
            out = [1, shape[3]]
        self.n += 1
        name = f"{op}{self.n}"
        inputs = [src] + (extra or [])
        self.g.add(Node(name, op, inputs, [shape] * len(inputs), [out], attrs))
        self.last, self.shape = name, out
        return name

    def conv(self, cout: int, k: int, s: int = 1, act: str | None = "relu6", dw: bool = False) -> str:
        self.op("dwconv" if dw else "conv", None if dw else cout, s, kernel_size=[k, k], strides=[s, s])
        self.op("bn")
        return self.op(act) if act else self.last


def mobilenet_like(rng: np.random.Generator, i: int) -> Graph:
    hw = int(rng.choice([128, 160, 192, 224]))
    net = _Net(f"mbv2-{i}", hw, 3)
    c = int(rng.choice([16, 24, 32]))
    net.conv(c, 3, 2)
    for stage_c, stride in ((24, 2), (32, 2), (64, 2), (96, 1), (160, 2)):
        width = int(stage_c * rng.choice([0.75, 1.0, 1.25]))
        for b in range(int(rng.integers(1, 4))):
            start, s = net.last, stride if b == 0 else 1
            net.conv(c * int(rng.choice([3, 6])), 1)
            net.conv(0, int(rng.choice([3, 5])), s, dw=True)
            net.conv(width, 1, act=None)
            if s == 1 and width == c:
                net.op("add", extra=[start])
            c = width
    net.conv(1280, 1)
    net.op("global-avgpool")
    net.op("fc", 1000)
    return net.g


def resnet_like(rng: np.random.Generator, i: int) -> Graph:
    net = _Net(f"resnet-{i}", int(rng.choice([160, 192, 224])), 3)
    net.conv(64, 7, 2, act="relu")
    net.op("maxpool", stride=2, kernel_size=[3, 3], strides=[2, 2])
    c = 64
    for stage_c in (64, 128, 256, 512):
        width = int(stage_c * rng.choice([0.5, 0.75, 1.0]))
        for b in range(int(rng.integers(1, 4))):
            s = 2 if (b == 0 and stage_c != 64) else 1
            block_in = shortcut = net.last
            if s != 1 or width != c:  # projection shortcut
                shortcut = net.conv(width, 1, s, act=None)
                net.last = block_in
            net.conv(width, 3, s, act="relu")
            net.conv(width, 3, act=None)
            net.op("add", extra=[shortcut])
            net.op("relu")
            c = width
    net.op("global-avgpool")
    net.op("fc", 1000)
    return net.g


def keras_model():
    import keras

    return keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))


def timed(fn, repeat: int = 5) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictor", required=True, help="predictor folder or installed name")
    parser.add_argument("--graphs", type=int, default=1000)
    args = parser.parse_args()
    predictor = load_predictor(args.predictor)
    print(f"predictor: {predictor.name} ({len(predictor.kernel_types)} kernels)")

    rng = np.random.default_rng(0)
    graphs = [(mobilenet_like if i % 2 == 0 else resnet_like)(rng, i) for i in range(args.graphs)]
    predictor.predict_many(graphs[:10], strict=False)
    t, cpu = time.perf_counter(), time.process_time()
    results = predictor.predict_many(graphs, strict=False)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    kernels = sum(len(r.kernels) for r in results)
    coverage = np.mean([r.coverage for r in results])
    # CPU time too: on a shared host the wall time counts the other tenants
    print(
        f"predict_many over {len(graphs)} IR graphs: {len(graphs) / elapsed:,.0f} models/s wall, "
        f"{len(graphs) / cpu:,.0f} models/s of CPU time ({elapsed:.2f} s, {kernels:,} kernels, "
        f"mean coverage {100 * coverage:.1f} %)  target >= 1,000"
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        import tensorflow as tf
        import tf2onnx

        model = keras_model()
        model.save(folder / "mbv2.keras")
        tflite = folder / "mbv2.tflite"
        tflite.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        onnx_proto, _ = tf2onnx.convert.from_tflite(str(tflite), opset=17)
        (folder / "mbv2.onnx").write_bytes(onnx_proto.SerializeToString())
        for label, path in (("tflite", tflite), ("onnx", folder / "mbv2.onnx"), ("keras", folder / "mbv2.keras")):
            result = predictor.predict(path, strict=False)
            ms = timed(lambda path=path: predictor.predict(path, strict=False))
            print(
                f"one {label:6s} MobileNetV2 end to end: {ms:8.1f} ms  (predicted {result.latency_ms:.2f} ms, "
                f"coverage {100 * result.coverage:.1f} %)" + ("  target <= 100 ms" if label == "tflite" else "")
            )
        ms = timed(lambda: predictor.predict(model, strict=False))
        print(f"one keras.Model (in memory) end to end: {ms:8.1f} ms")

        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from this (TensorFlow-sized) parent
        code = (
            "import re, sys, nnmeter\n"
            f"r = nnmeter.load_predictor({args.predictor!r}).predict({str(tflite)!r}, strict=False)\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(int(hwm) / 1024, 'tensorflow' in sys.modules)\n"
        )
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        rss, tf_loaded = out.stdout.split()
        print(
            f"cold start (import, load predictor, predict .tflite): {wall:.2f} s, peak RSS {float(rss):.0f} MB, "
            f"tensorflow imported: {tf_loaded}  target <= 3 s, <= 400 MB"
        )


if __name__ == "__main__":
    main()

"""A stand-in for TFLite's ``benchmark_model`` on the loopback device and the SSH test host.

It takes benchmark_model's flags, runs the model with the real LiteRT
interpreter (warm-up runs, then timed runs, with benchmark_model's
``--min_secs``/``--warmup_min_secs`` semantics) and prints what it measured in
benchmark_model's documented output format: ``--output_format=tflite2`` (TFLite
2.x) or ``--output_format=litert`` (2025 LiteRT: ``INFO: `` prefixes, p5/median/p95,
the BENCHMARK RESULTS block, op tables without [start]). The one flag the real
tool does not have, ``--output_format``, is set by the wrapper script the tests
install as ``benchmark_model``.

The Python interpreter has no per-op timer, so with ``--enable_op_profiling`` the
op table has what can be measured honestly: the delegated graph as one node
timed as a whole (what benchmark_model 2.x prints for a fully delegated model).

``--fault_file=PATH`` (test hook, set by the wrapper): if the file holds ``hang``
the tool sleeps; ``hang-child`` starts a child process that sleeps and waits for it
(a SIGHUP to the tool alone, all adbd sends, leaves the child running, as a shell
that does not exec its last command leaves ``benchmark_model``); ``crash`` aborts
(SIGABRT); ``crash-once`` removes the file, then aborts.
A file ``device-ms`` beside the fault file (test and bench hook) models a device whose time is spent on the
device, not on this host's CPU: every invocation also sleeps that many milliseconds, timed with it; a file
``device-x`` holding X models a unit X times slower than this host: every invocation sleeps (X - 1) times its
own time more; a file ``device-clock`` holding ``cpu`` times each invocation by the CPU time of the invoking
thread (times ``device-x``, plus ``device-ms``), as if each unit had cores of its own: loopback units that share
this host's cores then do not slow each other's figures.
Each invocation appends its argv and CPU affinity (a JSON line) to ``--log_file`` when given.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

import numpy as np


def parse_flags(argv: list[str]) -> dict[str, str]:
    flags = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            print(f"ERROR: unconsumed flag {arg!r}; flags are --name=value", file=sys.stderr)
            sys.exit(1)
        key, value = arg[2:].split("=", 1)
        flags[key] = value
    return flags


def timed(
    interpreter,
    min_runs: int,
    min_secs: float,
    max_secs: float,
    device_s: float = 0.0,
    slower: float = 1.0,
    cpu_clock: bool = False,
) -> list[float]:
    """Microseconds per invoke: at least ``min_runs`` and ``min_secs`` (benchmark_model's rule); each invoke
    also takes ``device_s`` seconds on the modelled device, and ``slower`` times its own time in all."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if (len(times) >= min_runs and elapsed >= min_secs) or (elapsed > max_secs and times):
            return times
        t0, c0 = time.perf_counter(), time.thread_time()
        interpreter.invoke()
        own = (time.thread_time() - c0) if cpu_clock else (time.perf_counter() - t0)
        if slower > 1:
            time.sleep((slower - 1) * own)
        if device_s:
            time.sleep(device_s)
        times.append((own * slower + device_s if cpu_clock else time.perf_counter() - t0) * 1e6)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def count_line(times: list[float], litert: bool) -> str:
    std = statistics.pstdev(times) if len(times) > 1 else 0.0
    line = (
        f"count={len(times)} first={times[0]:.0f} curr={times[-1]:.0f} min={min(times):.0f} "
        f"max={max(times):.0f} avg={statistics.fmean(times):.1f} std={std:.0f}"
    )
    if litert:
        line += (
            f" p5={percentile(times, 0.05):.0f} median={statistics.median(times):.0f} p95={percentile(times, 0.95):.0f}"
        )
    return line


def main(argv: list[str]) -> int:
    flags = parse_flags(argv)
    litert = flags.pop("output_format", "tflite2") == "litert"
    out: list[str] = []

    def emit(line: str = "") -> None:
        out.append(("INFO: " + line) if litert and line else line)

    if "log_file" in flags:
        with open(flags.pop("log_file"), "a") as log:
            log.write(json.dumps({"argv": argv, "affinity": sorted(os.sched_getaffinity(0))}) + "\n")
    fault_file = flags.pop("fault_file", "")
    device_file = os.path.join(os.path.dirname(fault_file), "device-ms") if fault_file else ""
    device_s = float(open(device_file).read()) / 1000 if device_file and os.path.exists(device_file) else 0.0
    slower_file = os.path.join(os.path.dirname(fault_file), "device-x") if fault_file else ""
    slower = float(open(slower_file).read()) if slower_file and os.path.exists(slower_file) else 1.0
    clock_file = os.path.join(os.path.dirname(fault_file), "device-clock") if fault_file else ""
    cpu_clock = bool(clock_file) and os.path.exists(clock_file) and open(clock_file).read().strip() == "cpu"
    if fault_file and os.path.exists(fault_file):
        fault = open(fault_file).read().strip()
        if fault == "hang":
            time.sleep(3600)
        if fault == "hang-child":
            import subprocess

            child = [sys.executable, "-c", "import time; time.sleep(3600)", f"--child-of-fault-file={fault_file}"]
            subprocess.run(child)
        if fault in ("crash", "crash-once"):
            if fault == "crash-once":
                os.remove(fault_file)
            sys.stdout.write("STARTING!\n")
            sys.stdout.flush()
            os.abort()
    graph = flags.get("graph", "")
    threads = int(flags.get("num_threads", "1"))
    warmup_runs = int(flags.get("warmup_runs", "1"))
    num_runs = int(flags.get("num_runs", "50"))
    min_secs = float(flags.get("min_secs", "1"))
    warmup_min_secs = float(flags.get("warmup_min_secs", "0.5"))
    max_secs = float(flags.get("max_secs", "150"))
    profiling = flags.get("enable_op_profiling", "false") in ("true", "1")
    emit("STARTING!")
    emit(f"Graph: [{graph}]")
    emit(f"Num threads: [{threads}]")
    if flags.get("use_gpu", "false") in ("true", "1"):
        emit("Use gpu: [1]")
        print("\n".join(out))
        print("ERROR: Failed to create the GPU delegate: no OpenCL or OpenGL ES on this device.", file=sys.stderr)
        return 1
    if not os.path.isfile(graph):
        print("\n".join(out))
        print(f"ERROR: Failed to load model {graph}", file=sys.stderr)
        return 1
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    interpreter = Interpreter(model_path=graph, num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], rng.standard_normal(detail["shape"]).astype(detail["dtype"]))
    init_us = (time.perf_counter() - t0) * 1e6
    emit(f"Loaded model {graph}")
    emit(f"Initialized session in {init_us / 1000:.3f}ms.")
    emit(
        f"Running benchmark for at least {warmup_runs} iterations and at least {warmup_min_secs} seconds "
        f"but terminate if exceeding {max_secs} seconds."
    )
    warm = (
        timed(interpreter, warmup_runs, warmup_min_secs, max_secs, device_s, slower, cpu_clock)
        if warmup_runs or warmup_min_secs
        else []
    )
    if warm:
        emit(count_line(warm, litert))
        emit()
    emit(
        f"Running benchmark for at least {num_runs} iterations and at least {min_secs} seconds but "
        f"terminate if exceeding {max_secs} seconds."
    )
    runs = timed(interpreter, max(num_runs, 1), min_secs, max_secs, device_s, slower, cpu_clock)
    emit(count_line(runs, litert))
    emit()
    avg = statistics.fmean(runs)
    warm_avg = statistics.fmean(warm) if warm else 0.0
    first = warm[0] if warm else runs[0]
    emit(
        f"Inference timings in us: Init: {init_us:.0f}, First inference: {first:.0f}, "
        f"Warmup (avg): {warm_avg:.1f}, Inference (avg): {avg:.1f}"
    )
    if profiling:
        emit("Operator-wise Profiling Info for Regular Benchmark Runs:")
        emit("============================== Run Order ==============================")
        ms = avg / 1000
        if litert:
            emit(
                "\t             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]"
                "\t[times called]\t[Name]"
            )
            emit(
                f"\t   TfLiteXNNPackDelegate\t {first / 1000:8.3f}\t {ms:8.3f}\t100.000%\t100.000%\t     0.000\t"
                f"        1\t[Delegate/XNNPACK]:0"
            )
        else:
            emit(
                "\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t"
                "  [mem KB]\t[times called]\t[Name]"
            )
            emit(
                f"\t   TfLiteXNNPackDelegate\t            0.000\t {first / 1000:8.3f}\t {ms:8.3f}\t100.000%\t"
                f"100.000%\t     0.000\t        1\t[Delegate/XNNPACK]:0"
            )
        emit()
    if litert:
        print("\n".join(out))
        bar = "=" * 40
        print(f"\n{bar}\n BENCHMARK RESULTS\n{bar}")
        print(f"Model initialization:  {init_us / 1000:.2f} ms")
        print(f"Warmup (first):        {first / 1000:.2f} ms")
        print(f"Warmup (avg):          {warm_avg / 1000:.2f} ms ({len(warm)} runs)")
        print(f"Inference (avg):       {avg / 1000:.2f} ms ({len(runs)} runs)")
        print(f"Inference (min):       {min(runs) / 1000:.2f} ms")
        print(f"Inference (max):       {max(runs) / 1000:.2f} ms")
        print(f"Inference (median):    {statistics.median(runs) / 1000:.2f} ms")
        print(bar)
    else:
        print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

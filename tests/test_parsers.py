"""Parsers of benchmark_model and benchmark_app output: both benchmark_model variants, loud failure otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest_remote import *  # noqa: F401,F403  (fixtures)

from nnmeter.backends.parsers import BenchmarkOutputError, parse_benchmark_app, parse_benchmark_model

TFLITE_2X = """STARTING!
Log parameter values verbosely: [0]
Num threads: [4]
Graph: [/data/local/tmp/mobilenet_v2.tflite]
Enable op profiling: [1]
#threads used for CPU inference: [4]
Loaded model /data/local/tmp/mobilenet_v2.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
The input model file size (MB): 13.9786
Initialized session in 36.208ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=28 first=30447 curr=16969 min=16647 max=30447 avg=17887.4 std=2587

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=59 first=17101 curr=16826 min=16551 max=17741 avg=16930.1 std=231

Inference timings in us: Init: 36208, First inference: 30447, Warmup (avg): 17887.4, Inference (avg): 16930.1
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your one discretion.
Memory footprint delta from the start of the tool (MB): init=31.3438 overall=38.7344
Profiling Info for Benchmark Initialization:
============================== Run Order ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t         ModifyGraphWithDelegate\t            0.000\t   20.417\t   20.417\t 99.340%\t 99.340%\t 14276.000\t        1\tModifyGraphWithDelegate/0
\t                 AllocateTensors\t           20.417\t    0.136\t    0.136\t  0.660%\t100.000%\t     0.000\t        1\tAllocateTensors/0

Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t           TfLiteXNNPackDelegate\t            0.000\t   16.810\t   16.662\t 99.881%\t 99.881%\t     0.000\t        1\t[MobilenetV2/Predictions/Reshape_1]:66
\t                         SOFTMAX\t           16.663\t    0.019\t    0.020\t  0.119%\t100.000%\t     0.000\t        1\t[MobilenetV2/Predictions/Softmax]:65

============================== Top by Computation Time ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t           TfLiteXNNPackDelegate\t            0.000\t   16.810\t   16.662\t 99.881%\t 99.881%\t     0.000\t        1\t[MobilenetV2/Predictions/Reshape_1]:66

Number of nodes executed: 2
Timings (microseconds): count=59 first=16829 curr=16685 min=16478 max=17640 avg=16682.2 std=220
Memory (bytes): count=0
2 nodes observed
"""

LITERT_2025 = """INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [1]
INFO: Graph: [/data/local/tmp/model.tflite]
INFO: Enable op profiling: [1]
INFO: Loaded model /data/local/tmp/model.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.1372
INFO: Initialized session in 4.02ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=4611 first=402 curr=101 min=97 max=402 avg=106.3 std=12 p5=99 median=103 p95=121

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=9190 first=104 curr=103 min=96 max=341 avg=106.9 std=10 p5=99 median=104 p95=122

INFO: [./litert/tools/benchmark_litert_model.h:82]
========== BENCHMARK RESULTS ==========
INFO: [./litert/tools/benchmark_litert_model.h:83] Model initialization: 4.02 ms
INFO: [./litert/tools/benchmark_litert_model.h:85] Warmup (first):       0.40 ms
INFO: [./litert/tools/benchmark_litert_model.h:87] Warmup (avg):         0.11 ms (4611 runs)
INFO: [./litert/tools/benchmark_litert_model.h:89] Inference (avg):      0.11 ms (9190 runs)
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
INFO: ============================== Run Order ==============================
INFO: \t                     [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
INFO: \t   Fully Connected (NC, F32) GEMM\t    0.061\t    0.058\t 61.702%\t 61.702%\t     0.000\t        1\tDelegate/Fully Connected (NC, F32) GEMM:0
INFO: \t             Sigmoid (NC, F32)\t    0.037\t    0.036\t 38.298%\t100.000%\t     0.000\t        1\tDelegate/Sigmoid (NC, F32):1

INFO: ============================== Top by Computation Time ==============================
"""

BENCHMARK_RESULTS_ONLY = """
========================================
 BENCHMARK RESULTS
========================================
Model initialization:  3.10 ms
Warmup (first):        0.52 ms
Warmup (avg):          0.21 ms (10 runs)
Inference (avg):       0.19 ms (50 runs)
Inference (min):       0.17 ms
Inference (max):       0.30 ms
Inference (median):    0.18 ms
Inference (std):       0.02 ms
Fully accelerated:     True
========================================
"""


@pytest.mark.unit
def test_tflite_2x_output():
    report = parse_benchmark_model(TFLITE_2X)
    assert report.variant == "tflite-2.x"
    assert (
        report.inference.count == 59 and report.inference.avg_us == 16930.1 and report.avg_ms == pytest.approx(16.9301)
    )
    assert report.warmup.count == 28 and report.init_ms == pytest.approx(36.208)
    # the regular runs' table, not the initialization one nor "Top by Computation Time"
    assert [(op.op_type, op.avg_ms, op.percent) for op in report.op_profile] == [
        ("TfLiteXNNPackDelegate", 16.662, 99.881),
        ("SOFTMAX", 0.020, 0.119),
    ]
    assert report.op_profile[1].node == "[MobilenetV2/Predictions/Softmax]:65"


@pytest.mark.unit
def test_litert_2025_output():
    report = parse_benchmark_model(LITERT_2025)
    assert report.variant == "litert"
    assert report.inference.count == 9190 and report.inference.median_us == 104 and report.inference.p95_us == 122
    assert report.avg_ms == pytest.approx(0.1069)
    assert [(op.op_type, op.avg_ms) for op in report.op_profile] == [
        ("Fully Connected (NC, F32) GEMM", 0.058),
        ("Sigmoid (NC, F32)", 0.036),
    ]
    assert report.op_profile[0].node == "Delegate/Fully Connected (NC, F32) GEMM:0"


@pytest.mark.unit
def test_benchmark_results_block_alone():
    report = parse_benchmark_model(BENCHMARK_RESULTS_ONLY)
    assert report.inference.count == 50 and report.avg_ms == pytest.approx(0.19)
    assert report.inference.median_us == pytest.approx(180) and report.warmup.count == 10


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no inference timings"),
        ("STARTING!\nGraph: [/x.tflite]\nFailed to allocate tensors!\nBenchmarking failed.\n", "no inference timings"),
        (
            "count=50 first=0 curr=0 min=0 max=0 avg=0 std=0\ncount=50 first=0 curr=0 min=0 max=0 avg=0 std=0\n",
            "inference average is 0",
        ),
        ("Inference timings in us: Init: 1, First inference: 2, Warmup (avg): n/a, Inference (avg): 3\n", "bad value"),
        ("Timings (microseconds): count=50 first=1 curr=1 min=1 max=1 avg=1 std=0\n", "no inference timings"),
    ],
)
@pytest.mark.unit
def test_output_it_does_not_understand_fails_loudly(text, reason):
    with pytest.raises(BenchmarkOutputError, match=reason):
        parse_benchmark_model(text)


@pytest.mark.unit
def test_op_table_row_that_does_not_fit_fails_loudly():
    broken = TFLITE_2X.replace("\t                         SOFTMAX\t           16.663", "\t   SOFTMAX\t  n/a")
    with pytest.raises(BenchmarkOutputError, match="does not fit"):
        parse_benchmark_model(broken)


@pytest.mark.integration
@pytest.mark.parametrize("output_format", ["tflite2", "litert"])
def test_parses_the_stand_in_running_litert(tiny_models, output_format):
    """The stand-in prints benchmark_model's format around real LiteRT timings; the parser reads them back."""
    fake = Path(__file__).with_name("fake_benchmark_model.py")
    out = subprocess.run(
        [
            sys.executable,
            str(fake),
            f"--output_format={output_format}",
            f"--graph={tiny_models[0].path}",
            "--num_runs=5",
            "--min_secs=0",
            "--warmup_runs=2",
            "--warmup_min_secs=0",
            "--enable_op_profiling=true",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = parse_benchmark_model(out)
    assert report.variant == ("litert" if output_format == "litert" else "tflite-2.x")
    assert report.inference.count == 5 and report.warmup.count == 2 and report.avg_ms > 0
    assert report.op_profile[0].avg_ms == pytest.approx(report.avg_ms, rel=0.01, abs=0.001)


BENCHMARK_APP_2024 = """[Step 11/11] Dumping statistics report
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            1290 iterations
[ INFO ] Duration:         60041.31 ms
[ INFO ] Latency:
[ INFO ]    Median:        46.21 ms
[ INFO ]    Average:       46.49 ms
[ INFO ]    Min:           44.01 ms
[ INFO ]    Max:           78.33 ms
[ INFO ] Throughput:   21.49 FPS
"""

BENCHMARK_APP_2021 = """[Step 11/11] Dumping statistics report
Count:      400 iterations
Duration:   10053.72 ms
Latency:    24.87 ms
Throughput: 39.79 FPS
"""


@pytest.mark.unit
def test_benchmark_app_current_and_old_and_microseconds():
    report = parse_benchmark_app(BENCHMARK_APP_2024)
    assert (report.count, report.median_ms, report.average_ms, report.min_ms, report.max_ms) == (
        1290,
        46.21,
        46.49,
        44.01,
        78.33,
    )
    old = parse_benchmark_app(BENCHMARK_APP_2021)
    assert (old.count, old.median_ms, old.average_ms) == (400, 24.87, None)
    fast = parse_benchmark_app(BENCHMARK_APP_2024.replace("46.21 ms", "12.51 us"))
    assert fast.median_ms == pytest.approx(0.01251)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[ ERROR ] Exception from src/inference/src/core.cpp: device MYRIAD not found\n",
        BENCHMARK_APP_2024.replace("46.21 ms", "0.00 ms"),
        BENCHMARK_APP_2024.replace("46.21 ms", "46.21 fortnights"),
    ],
)
@pytest.mark.unit
def test_benchmark_app_fails_loudly(text):
    with pytest.raises(BenchmarkOutputError):
        parse_benchmark_app(text)

"""Parsers of the output of TFLite ``benchmark_model`` and OpenVINO ``benchmark_app``.

Both tools change their output between releases. These parsers accept the
known variants and raise :class:`BenchmarkOutputError` on anything else:
nn-Meter's users got a latency of 0 ms from a regex that stopped matching newer
output, so a parser here never returns a number it did not read.

``benchmark_model`` variants handled:

* TFLite 2.x: a ``count=.. first=.. curr=.. min=.. max=.. avg=.. std=..`` line per
  phase (warm-up, then inference; microseconds), ``Inference timings in us: Init: ..,
  First inference: .., Warmup (avg): .., Inference (avg): ..``, op tables with the
  columns ``[node type] [start] [first] [avg ms] [%] [cdf%] [mem KB] [times called] [Name]``.
* LiteRT (2025 on): the same lines prefixed ``INFO: ``, ``p5= median= p95=`` added to
  the count lines, a ``BENCHMARK RESULTS`` block in milliseconds, op tables without
  the ``[start]`` column and with XNNPACK node types such as ``Fully Connected (NC, F32) GEMM``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nnmeter.backends.base import OpTime


class BenchmarkOutputError(ValueError):
    """Output a parser does not understand; the message quotes the start of it."""

    def __init__(self, tool: str, reason: str, text: str) -> None:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        excerpt = " | ".join(lines[-6:]) if lines else "(no output)"
        super().__init__(f"cannot read {tool} output: {reason}; output ends with: {excerpt[:600]}")


@dataclass(frozen=True)
class RunTimings:
    """One ``count=...`` line of benchmark_model, in microseconds."""

    count: int
    avg_us: float
    min_us: float | None = None
    max_us: float | None = None
    std_us: float | None = None
    first_us: float | None = None
    median_us: float | None = None
    p5_us: float | None = None
    p95_us: float | None = None


@dataclass(frozen=True)
class BenchmarkModelReport:
    """What one benchmark_model invocation measured."""

    inference: RunTimings
    warmup: RunTimings | None
    init_ms: float | None
    op_profile: tuple[OpTime, ...]
    variant: str  # "tflite-2.x" or "litert"

    @property
    def avg_ms(self) -> float:
        return self.inference.avg_us / 1000.0


# "INFO: " and, in some LiteRT builds, the logging call site "[./litert/tools/x.h:83] "
_LOG_PREFIX = re.compile(r"^(?:INFO|WARNING|VERBOSE|ERROR):\s?(?:\[[^\]\s]+:\d+\]\s*)?")
_COUNT_LINE = re.compile(r"^\s*count=(\d+)\s+(.*)$")
_KEY_VALUE = re.compile(r"(\w+)=(-?[\d.]+(?:e[-+]?\d+)?)")
_TIMINGS_LINE = re.compile(r"Inference timings in us:\s*(.*)$")
_RESULTS_LINE = re.compile(
    r"^\s*(Model initialization|Warmup|Inference)\s*(?:\((\w+)\))?:\s*"
    r"(-?[\d.]+)\s*(ms)?(?:\s*\((\d+) runs\))?"
)
_NUMBER = r"-?[\d.]+%?"


def _strip_prefixes(text: str) -> list[str]:
    return [_LOG_PREFIX.sub("", line.rstrip("\r")) for line in text.splitlines()]


def parse_benchmark_model(text: str) -> BenchmarkModelReport:
    """The timings and op profile of one benchmark_model run; raises BenchmarkOutputError."""
    lines = _strip_prefixes(text)
    counts: list[RunTimings] = []
    summary: dict[str, float] = {}
    results: dict[str, float] = {}
    results_runs: dict[str, int] = {}
    for line in lines:
        m = _COUNT_LINE.match(line)
        if m:
            counts.append(_run_timings(int(m.group(1)), m.group(2), text))
            continue
        m = _TIMINGS_LINE.search(line)
        if m:
            for part in m.group(1).split(","):
                key, _, value = part.partition(":")
                try:
                    summary[key.strip()] = float(value)
                except ValueError:
                    raise BenchmarkOutputError("benchmark_model", f"bad value in {line.strip()!r}", text) from None
            continue
        m = _RESULTS_LINE.match(line)
        if m and m.group(4) == "ms":
            key = m.group(1) + (f" ({m.group(2)})" if m.group(2) else "")
            results[key] = float(m.group(3))
            if m.group(5):
                results_runs[key] = int(m.group(5))
    litert = bool(results) or any(c.median_us is not None for c in counts)
    inference, warmup = _pick_phases(counts, summary, results, results_runs, text)
    if not inference.avg_us > 0:
        raise BenchmarkOutputError("benchmark_model", f"inference average is {inference.avg_us} us", text)
    init_ms = summary["Init"] / 1000.0 if "Init" in summary else results.get("Model initialization")
    return BenchmarkModelReport(
        inference=inference,
        warmup=warmup,
        init_ms=init_ms,
        op_profile=parse_op_profile(text),
        variant="litert" if litert else "tflite-2.x",
    )


def _run_timings(count: int, rest: str, text: str) -> RunTimings:
    values = {k: float(v) for k, v in _KEY_VALUE.findall(rest)}
    if "avg" not in values:
        raise BenchmarkOutputError("benchmark_model", f"a count line without avg=: count={count} {rest}", text)
    return RunTimings(
        count=count,
        avg_us=values["avg"],
        min_us=values.get("min"),
        max_us=values.get("max"),
        std_us=values.get("std"),
        first_us=values.get("first"),
        median_us=values.get("median"),
        p5_us=values.get("p5"),
        p95_us=values.get("p95"),
    )


def _pick_phases(
    counts: list[RunTimings],
    summary: dict[str, float],
    results: dict[str, float],
    results_runs: dict[str, int],
    text: str,
) -> tuple[RunTimings, RunTimings | None]:
    """The inference and warm-up timings from whichever of the three forms the output has."""
    if len(counts) >= 2:
        return counts[-1], counts[0]
    if "Inference (avg)" in summary and counts:
        # one count line: it is the inference phase only if it agrees with the summary
        if abs(counts[0].avg_us - summary["Inference (avg)"]) <= 0.01 * summary["Inference (avg)"] + 1:
            return counts[0], None
    if "Inference (avg)" in results:
        ms = 1000.0
        inference = RunTimings(
            count=results_runs.get("Inference (avg)", 0),
            avg_us=results["Inference (avg)"] * ms,
            min_us=_scaled(results.get("Inference (min)")),
            max_us=_scaled(results.get("Inference (max)")),
            std_us=_scaled(results.get("Inference (std)")),
            median_us=_scaled(results.get("Inference (median)")),
            p5_us=_scaled(results.get("Inference (p5)")),
            p95_us=_scaled(results.get("Inference (p95)")),
        )
        warmup = None
        if "Warmup (avg)" in results:
            warmup = RunTimings(
                count=results_runs.get("Warmup (avg)", 0),
                avg_us=results["Warmup (avg)"] * ms,
                first_us=_scaled(results.get("Warmup (first)")),
            )
        return inference, warmup
    if "Inference (avg)" in summary:
        return RunTimings(count=0, avg_us=summary["Inference (avg)"]), None
    raise BenchmarkOutputError(
        "benchmark_model",
        "no inference timings (count=... avg=... line, 'Inference timings in us:' line or BENCHMARK RESULTS block)",
        text,
    )


def _scaled(ms: float | None) -> float | None:
    return ms * 1000.0 if ms is not None else None


_SECTION_REGULAR = re.compile(r"Profiling Info for Regular Benchmark Runs", re.IGNORECASE)
_SECTION_OTHER = re.compile(r"Profiling Info for Benchmark Initialization", re.IGNORECASE)
_TABLE_TITLE = re.compile(r"^=+\s*(.*?)\s*=+\s*$")
_HEADER_COLUMN = re.compile(r"\[([^\]]+)\]")


def parse_op_profile(text: str) -> tuple[OpTime, ...]:
    """The ``Run Order`` op table of the regular runs (empty when the output has none).

    The columns are read from the table's header, so both the 2.x table (with
    ``[start]``) and the LiteRT one (without) parse; node types may contain spaces.
    """
    lines = _strip_prefixes(text)
    in_regular = not any(_SECTION_REGULAR.search(ln) for ln in lines)  # old outputs: one section only
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SECTION_REGULAR.search(line):
            in_regular = True
        elif _SECTION_OTHER.search(line):
            in_regular = False
        title = _TABLE_TITLE.match(line.strip())
        if in_regular and title and title.group(1).lower() == "run order" and i + 1 < len(lines):
            return _parse_table(lines[i + 1], lines[i + 2 :], text)
        i += 1
    return ()


def _parse_table(header: str, rows: list[str], text: str) -> tuple[OpTime, ...]:
    columns = [c.strip().lower() for c in _HEADER_COLUMN.findall(header)]
    if not columns or columns[0] != "node type" or "avg ms" not in columns:
        raise BenchmarkOutputError(
            "benchmark_model", f"an op table header without [node type] and [avg ms]: {header.strip()!r}", text
        )
    numeric = columns[1:-1] if columns[-1] == "name" else columns[1:]
    row_re = re.compile(
        r"^\s*(?P<type>.+?)"
        + "".join(rf"\s+({_NUMBER})" for _ in numeric)
        + (r"\s+(?P<name>.*?)\s*$" if columns[-1] == "name" else r"\s*$")
    )
    ops = []
    for row in rows:
        if not row.strip() or _TABLE_TITLE.match(row.strip()):
            break
        m = row_re.match(row)
        if m is None:
            raise BenchmarkOutputError(
                "benchmark_model",
                f"an op table row that does not fit the header {header.strip()!r}: {row.strip()!r}",
                text,
            )
        values = dict(zip(numeric, m.groups()[1 : 1 + len(numeric)]))
        ops.append(
            OpTime(
                node=(m.groupdict().get("name") or "").strip() or m.group("type").strip(),
                op_type=m.group("type").strip(),
                avg_ms=float(values["avg ms"]),
                percent=float(values.get("%", "0").rstrip("%")),
            )
        )
    return tuple(ops)


# --- benchmark_app ------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkAppReport:
    """The latency lines of one OpenVINO benchmark_app run, in milliseconds."""

    count: int
    median_ms: float
    average_ms: float | None
    min_ms: float | None
    max_ms: float | None
    throughput_fps: float | None


_APP_PREFIX = re.compile(r"^\s*\[\s*\w+\s*\]\s?")
_APP_VALUE = re.compile(
    r"^\s*(Count|Median|Average|Min|Max|Latency|Throughput)\s*:\s*([\d.]+)\s*"
    r"(iterations|ms|us|µs|ns|s|FPS)?\s*$"
)
_TO_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "ns": 1e-6, "s": 1e3}  # recent releases switch to us for fast models


def parse_benchmark_app(text: str) -> BenchmarkAppReport:
    """Count/Median/Average/Min/Max of benchmark_app (2022+), or the single ``Latency:`` line of older releases.

    Latencies are converted to ms from the unit printed with them (ms, or us for fast models in 2025+ releases).
    """
    values: dict[str, float] = {}
    for raw in text.splitlines():
        m = _APP_VALUE.match(_APP_PREFIX.sub("", raw))
        if m:
            values.setdefault(m.group(1), float(m.group(2)) * _TO_MS.get(m.group(3) or "", 1.0))
    median = values.get("Median", values.get("Latency"))
    if "Count" not in values or median is None:
        raise BenchmarkOutputError("benchmark_app", "no 'Count:' and 'Median:' (or 'Latency:') lines", text)
    if not median > 0:
        raise BenchmarkOutputError("benchmark_app", f"median latency is {median} ms", text)
    return BenchmarkAppReport(
        count=int(values["Count"]),
        median_ms=median,
        average_ms=values.get("Average"),
        min_ms=values.get("Min"),
        max_ms=values.get("Max"),
        throughput_fps=values.get("Throughput"),
    )

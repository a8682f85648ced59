"""What nnmeter-build draws: plain complete rows when piped, bars in a terminal, a line per result in a log."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from nnmeter.cli.render import Output, Table

pytestmark = pytest.mark.unit


def test_a_piped_table_keeps_every_cell_whole():
    out = io.StringIO()
    table = Table("kernels", ("kernel", "what it is"), right=())
    long = "depthwise convolution, batch norm, hard swish " * 4
    table.add("dwconv-bn-hswish", long)
    table.add("fc", "fully connected")
    Output(out, terminal=False).table(table)
    lines = out.getvalue().splitlines()
    assert lines[0] == "kernels"
    assert lines[2].startswith("dwconv-bn-hswish  ") and lines[2].endswith(long.strip())
    assert lines[3].split() == ["fc", "fully", "connected"]


def test_nnmeter_build_kernels_through_a_pipe_lists_every_name_whole():
    done = subprocess.run([sys.executable, "-m", "nnmeter.cli", "kernels"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert rows["dwconv-bn-hswish"].split()[1:4] == ["dwconv", "->", "bn"]  # the name is not cut: grep finds it
    assert "…" not in done.stdout


def test_a_log_gets_a_line_per_status_and_per_finished_task():
    out = io.StringIO()
    with Output(out, terminal=False).reporter() as reporter:
        task = reporter.task("waiting", label="fc")
        task.describe("measuring prior samples", 40)
        task.update(20)
        task.status("round 0: 40 samples, ±10 % 90.0 % of its held-out configs")
        task.finish("done: 40 samples")
        reporter.note("a note")
    lines = out.getvalue().splitlines()
    assert lines[0] == "fc: round 0: 40 samples, ±10 % 90.0 % of its held-out configs"
    assert lines[1].startswith("fc: done: 40 samples (") and lines[2] == "a note"


def test_a_terminal_gets_bars_that_end_in_their_summary():
    out = io.StringIO()
    with Output(out, terminal=True).reporter() as reporter:
        task = reporter.task("measuring", 10, label="fc")
        task.update(10)
        task.finish("done: 10 samples")
    drawn = out.getvalue()
    assert "fc" in drawn and "10/10" in drawn and "done: 10 samples" in drawn

"""Everything ``nnmeter-build`` draws: tables, progress, messages. The only module that imports ``rich``.

In a terminal, tables are rich tables and long steps show live progress bars. When the output goes to a
pipe or a file, tables are plain rows, complete whatever their width (``nnmeter-build kernels | grep
dwconv-bn-hswish`` finds its row), and progress is a line per finished step or round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table as RichTable

from nnmeter.progress import Reporter, Task


@dataclass
class Table:
    """A table of text cells: drawn as a rich table in a terminal, as plain aligned rows otherwise."""

    title: str
    columns: Sequence[str]
    right: Sequence[str] = ()  # columns aligned right (numbers)
    rows: list[list[str]] = field(default_factory=list)
    sections: list[int] = field(default_factory=list)  # row counts after which a rule is drawn

    def add(self, *cells: Any) -> None:
        self.rows.append(["" if c is None else str(c) for c in cells])

    def section(self) -> None:
        self.sections.append(len(self.rows))


class Output:
    """Where a command writes: standard output (or ``file``, or standard error), a terminal or not (``terminal``
    None: as detected)."""

    def __init__(self, file: TextIO | None = None, *, stderr: bool = False, terminal: bool | None = None) -> None:
        self.console = Console(file=file, stderr=stderr, highlight=False, force_terminal=terminal)
        self.terminal = self.console.is_terminal

    def line(self, text: str = "", *, warning: bool = False) -> None:
        """One line as it is (no markup), in yellow on a terminal when ``warning``."""
        self.console.print(
            text, style="yellow" if warning and self.terminal else None, markup=False, highlight=False, soft_wrap=True
        )

    def error(self, text: str) -> None:
        self.console.print(text, style="red" if self.terminal else None, markup=False, highlight=False, soft_wrap=True)

    def rule(self, title: str) -> None:
        if self.terminal:
            self.console.rule(title)
        else:
            self.line(f"== {title}")

    def table(self, table: Table) -> None:
        if self.terminal:
            self.console.print(_rich_table(table))
            return
        widths = [max([len(table.columns[i]), *(len(r[i]) for r in table.rows)]) for i in range(len(table.columns))]

        def row(cells: Sequence[str]) -> str:
            out = [
                c.rjust(w) if name in table.right else c.ljust(w) for c, w, name in zip(cells, widths, table.columns)
            ]
            return "  ".join(out).rstrip()

        if table.title:
            self.line(table.title)
        self.line(row(table.columns))
        for r in table.rows:
            self.line(row(r))

    def reporter(self) -> ConsoleReporter:
        return ConsoleReporter(self)


def _rich_table(table: Table) -> RichTable:
    out = RichTable(
        title=table.title or None,
        title_justify="left",
        header_style="bold",
        box=None,
        padding=(0, 2, 0, 0),
        pad_edge=False,
    )
    for name in table.columns:
        out.add_column(name, justify="right" if name in table.right else "left")
    for i, r in enumerate(table.rows):
        if i in table.sections and i:
            out.add_section()
        out.add_row(*r)
    return out


# --- progress ------------------------------------------------------------------------------------


class ConsoleReporter(Reporter):
    """Progress bars in a terminal (one row per task, kept when it ends), a line per result in a log.

    Use it as a context manager around the work: the bars stop when it exits.
    """

    def __init__(self, out: Output) -> None:
        self.out = out
        self._bars: Progress | None = None

    def _progress(self) -> Progress:
        if self._bars is None:
            self._bars = Progress(
                TextColumn("{task.fields[label]}"),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.out.console,
            )
            self._bars.start()
        return self._bars

    def task(self, description: str, total: int | None = None, *, label: str = "") -> Task:
        if self.out.terminal:
            bars = self._progress()
            return _BarTask(bars, bars.add_task(description, total=total, label=label, status=""))
        return _LineTask(self.out, description, label)

    def note(self, text: str, *, warning: bool = False) -> None:
        self.out.line(text, warning=warning)

    def section(self, title: str) -> None:
        self.close()  # the bars of one section stay above the next one's
        self.out.rule(title)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def __enter__(self) -> ConsoleReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BarTask(Task):
    def __init__(self, bars: Progress, task: TaskID) -> None:
        self._bars, self._task = bars, task

    def update(self, done: int, total: int | None = None) -> None:
        self._bars.update(self._task, completed=done, **({"total": total} if total is not None else {}))

    def describe(self, description: str, total: int | None = None) -> None:
        self._bars.reset(self._task, total=total, description=description)

    def status(self, text: str) -> None:
        self._bars.update(self._task, status=text)

    def finish(self, text: str = "", failed: bool = False) -> None:
        task = self._bars.tasks[self._bars.task_ids.index(self._task)]
        total = task.total if task.total else 1
        self._bars.update(
            self._task,
            total=total,
            completed=task.completed if failed else total,
            status=f"[red]{text}[/red]" if failed else text or task.fields.get("status", ""),
        )
        self._bars.stop_task(self._task)


class _LineTask(Task):
    """A task in a log: a line for each status and for its end, and none for counts."""

    def __init__(self, out: Output, description: str, label: str) -> None:
        self._out, self._description, self._label = out, description, label
        self._done = 0
        self._started = time.monotonic()
        self._finished = False

    def _prefix(self) -> str:
        return f"{self._label}: " if self._label else ""

    def update(self, done: int, total: int | None = None) -> None:
        self._done = done

    def describe(self, description: str, total: int | None = None) -> None:
        self._description, self._done = description, 0

    def status(self, text: str) -> None:
        self._out.line(self._prefix() + text)

    def finish(self, text: str = "", failed: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        what = text or f"{self._description}: {self._done} done"
        self._out.line(f"{self._prefix()}{what} ({time.monotonic() - self._started:.0f} s)", warning=failed)

"""How the library reports progress: a small callback protocol, silent by default.

Long steps (converting, measuring, training) call a :class:`Reporter`; the library
never draws. ``nnmeter-build`` passes one that draws progress bars in a terminal and
writes plain lines to a log; a notebook or a NAS loop gets :data:`SILENT` unless it
passes its own. Both classes are no-ops to subclass: override what you want to see.
"""

from __future__ import annotations


class Task:
    """One long step: a count of items done out of a total, a phase description and a status text."""

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` items of ``total`` (None: the total is unchanged or unknown). Usable as a
        ``(done, total)`` progress callback."""

    def describe(self, description: str, total: int | None = None) -> None:
        """The step moved to another phase (its count restarts at 0 of ``total``)."""

    def status(self, text: str) -> None:
        """A result along the way (an adaptive round's score), shown beside the count."""

    def finish(self, text: str = "", failed: bool = False) -> None:
        """The step ended, with a one-line summary of how."""

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


class Reporter:
    """Where the library reports: tasks with counts, and notes (one line each)."""

    def task(self, description: str, total: int | None = None, *, label: str = "") -> Task:
        """A new long step; ``label`` names what it belongs to (a kernel) when several run in turn."""
        return Task()

    def note(self, text: str, *, warning: bool = False) -> None:
        """A line for the user: what is about to happen, or what happened."""

    def section(self, title: str) -> None:
        """A new part of a long run begins (a campaign step)."""


#: The reporter that reports nothing: the library's default.
SILENT = Reporter()

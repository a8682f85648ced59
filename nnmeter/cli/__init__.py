"""``nnmeter-build``, the command line: arguments, rendering and exit codes (see :mod:`nnmeter.cli.main`)."""

from nnmeter.cli.main import main

__all__ = ["main"]

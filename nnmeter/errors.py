"""Errors that reach users: one line that says what is wrong, a hint on what to do, and the exit code.

Exit codes of ``nnmeter-build``: 0 the work was done; 1 the work failed (a device that cannot be
reached, a measurement or a kernel that failed); 2 bad input or usage (a wrong argument, file, key or
value); 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class NnmeterError(Exception):
    """Bad input: a one-line message (plus its hint) that the CLI prints before exiting with 2."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class WorkFailed(NnmeterError):
    """The input was fine but the work could not be done (exit 1)."""

    exit_code = EXIT_FAILED


class ConfigError(NnmeterError):
    """A YAML file or one of its keys is wrong: names the file, the key path, the value and what is valid."""

    def __init__(self, source: str, key_path: str, message: str, hint: str = "") -> None:
        where = f"{source}: {key_path}: " if key_path else f"{source}: "
        super().__init__(where + message, hint)
        self.source = source
        self.key_path = key_path


class BackendError(WorkFailed):
    """A backend cannot be created, reached or used (not a failed measurement: those are data)."""


class ModelFileError(NnmeterError):
    """A model file that does not exist, or is not a model nnmeter reads."""


class WorkspaceInUse(WorkFailed):
    """Another process holds the workspace's writer lock (another ``nnmeter-build`` command writes to it).

    Exit 1, not 2: the command and its input are right, the work cannot be done now; the same command
    succeeds once the other one ends.
    """

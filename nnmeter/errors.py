"""Errors that reach users: one line that says what is wrong, and a hint on what to do."""

from __future__ import annotations


class NnmeterError(Exception):
    """An error the CLI prints as one line (plus its hint) and exits non-zero for."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(NnmeterError):
    """A YAML file or one of its keys is wrong: names the file, the key path, the value and what is valid."""

    def __init__(self, source: str, key_path: str, message: str, hint: str = "") -> None:
        where = f"{source}: {key_path}: " if key_path else f"{source}: "
        super().__init__(where + message, hint)
        self.source = source
        self.key_path = key_path


class BackendError(NnmeterError):
    """A backend cannot be created, reached or used (not a failed measurement: those are data)."""


class ModelFileError(NnmeterError):
    """A model file that does not exist, or is not a model nnmeter can read."""

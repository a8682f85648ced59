"""Reading the files of nn-Meter's folders and models: bounded in size, every problem one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nnmeter.errors import NnmeterError


def read_bounded(path: Path, limit: int, what: str, error: type[NnmeterError] = NnmeterError) -> bytes:
    """The bytes of ``path``; ``error`` when it cannot be read or holds more than ``limit`` bytes (then it is not
    ``what``)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    if len(data) > limit:
        raise error(f"{path}: more than {limit:,} bytes: not {what}")
    return data


def read_json_mapping(
    path: Path, limit: int, what: str, error: type[NnmeterError] = NnmeterError
) -> tuple[bytes, dict[str, Any]]:
    """The bytes of the JSON file ``path`` and the mapping they hold; ``error`` when they are not ``what``."""
    data = read_bounded(path, limit, what, error)
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise error(f"{path}: not a JSON file: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(parsed, dict):
        raise error(f"{path}: not {what} (a mapping)")
    return data, parsed

"""Content ids and places of generated models.

A generated model is what its kind, name (kernel or test case) and config say
(weights are random and do not matter for latency), in a backend's model format,
made by a converter version. The id hashes exactly these, so a config already
converted with the same converter is found and never rebuilt, and a new
TensorFlow makes new files instead of reusing ones it did not produce.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Mapping

#: Hex digits of the id (80 bits: no collision in any realistic workspace, short file names).
ID_LENGTH = 20


def model_id(kind: str, name: str, config: Mapping[str, object], model_format: str, converter_version: str) -> str:
    """The content id of a generated model (sha256 of a canonical JSON of its five parts, truncated)."""
    text = json.dumps(
        {"kind": kind, "name": name, "config": config, "format": model_format, "converter": converter_version},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def model_dir(models_root: Path, kind: str, name: str) -> Path:
    """The folder of the generated models of one kind and name: ``models_root/kind/name``."""
    return Path(models_root) / _safe(kind) / _safe(name)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", part) or "_"

"""The prior table: kernel configs of real architectures (package data), per kernel family.

Made by :mod:`nnmeter.kernel_gen.extract_priors`; a kernel draws from the family
whose config keys it has (every conv-* kernel from ``conv``, every element-wise
kernel from ``elementwise``...).
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from nnmeter import ops

PRIORS_FILE = "kernel_priors.json"


@functools.lru_cache(maxsize=1)
def load_priors() -> dict:
    """The packaged prior table (see :func:`nnmeter.kernel_gen.extract_priors.extract` for its layout)."""
    text = resources.files("nnmeter").joinpath("configs", "priors", PRIORS_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def family_of(kernel: str) -> str:
    """The prior family whose rows have the config keys of ``kernel``."""
    keys = tuple(ops.kernel_type(kernel).keys)
    for family, family_keys in load_priors()["family_keys"].items():
        if tuple(family_keys) == keys:
            return family
    raise ValueError(
        f"kernel {kernel}: no prior family has its keys {', '.join(keys)}; "
        f"regenerate the table with python -m nnmeter.kernel_gen.extract_priors"
    )


def prior_rows(kernel: str) -> list[dict]:
    """The real-model configs ``kernel`` samples from (copies; never empty)."""
    family = family_of(kernel)
    rows = load_priors()["families"][family]
    if not rows:
        raise ValueError(f"kernel {kernel}: the prior family {family} is empty")
    return [dict(r) for r in rows]

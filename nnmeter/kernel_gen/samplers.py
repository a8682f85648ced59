"""Kernel config samplers: prior (real architectures), fine-grained (around a config), uniform.

Every sampler is seeded and reproducible (same kernel, sampler, seed and
arguments give the same list), returns validated configs
(:func:`nnmeter.ops.validate_config`) without duplicates, and may return fewer
than ``n`` when its space is smaller (fine-grained around a tiny channel count).

* ``prior``: a row drawn uniformly from the kernel's family in the prior table
  (:mod:`nnmeter.kernel_gen.priors`), HW, kernel size and strides kept, and every
  channel count ``c`` jittered to ``round(c * u)``, ``u ~ U(0.75, 1.25)`` drawn per
  channel key, so that samples fill the space between the real layers instead of
  repeating them. A share :data:`COVERAGE_SHARE` of the samples varies the row the way
  network design spaces do: kernel size and strides redrawn uniformly over their valid
  sets (``ops.valid_values``; the table holds only what keras.applications use, and NAS
  spaces use 7x7 depthwise convs, which LiteRT runs ~7x slower per FLOP than 3x3), and
  HW moved to a member of ``ops.HW_VALUES`` within a factor two with the channels kept
  (another input resolution; the grid holds the sizes of 96-256 px inputs, so models at
  160 or 192 px are sampled where they are, not between samples). Staying near real layers
  matters: layers no network has are the hardest to learn and would take budget from the
  real ones (docs/design-notes.md). A 1x1 map keeps kernel size 1 and stride 1.
* ``finegrained``: nn-Meter's adaptive rule: every key of ``around`` fixed but the
  channels, each drawn uniformly from the integers in ``[0.4 c, 1.2 c]``; with
  ``vary_hw``, HW is also drawn from the members of ``ops.HW_VALUES`` within a factor
  two of ``around``'s HW.
* ``uniform``: HW, kernel size and strides uniform over their valid sets and channels
  log-uniform over ``[1, 1024]``, for coverage checks.

Channel counts of split and channelshuffle (which cut channels in halves) are
rounded up to even. ``prior`` and ``uniform`` reject configs heavier than
:data:`MAX_FLOPS` or :data:`MAX_PARAMS` (4-10 times the heaviest layer of the
prior models, 0.9 GFLOPs and 2.4 M params): such models are slow to build and no real layer.
"""

from __future__ import annotations

import json
import math
import random
from typing import Callable, Iterable, Mapping

from nnmeter import ops
from nnmeter.kernel_gen.op_traits import EVEN_CHANNEL_OPS
from nnmeter.kernel_gen.priors import prior_rows

SAMPLERS = ("prior", "finegrained", "uniform")
PRIOR_JITTER = (0.75, 1.25)
COVERAGE_SHARE = 0.4
_DISCRETE_KEYS = (ops.KERNEL_SIZE, ops.STRIDES, ops.POOL_STRIDES)
FINEGRAINED_RANGE = (0.4, 1.2)
UNIFORM_CHANNELS = (1, 1024)
MAX_FLOPS = 4_000_000_000
MAX_PARAMS = 25_000_000
_CHANNEL_KEYS = (ops.CIN, ops.COUT)


def _map_channels(config: Mapping[str, object], draw: Callable[[int], int]) -> dict:
    out = dict(config)
    for key in _CHANNEL_KEYS:
        if key in out:
            out[key] = draw(int(out[key]))  # type: ignore[arg-type]
    if ops.CINS in out:
        out[ops.CINS] = [draw(int(c)) for c in out[ops.CINS]]  # type: ignore[union-attr]
    return out


def _clip_channels(c: float) -> int:
    return min(max(int(round(c)), ops.CHANNELS_RANGE[0]), ops.CHANNELS_RANGE[1])


def _prior(kernel: str, rng: random.Random, rows: list[dict]) -> dict:
    config = _map_channels(rng.choice(rows), lambda c: _clip_channels(c * rng.uniform(*PRIOR_JITTER)))
    discrete = any(k == ops.HW or k in _DISCRETE_KEYS for k in config)
    if discrete and rng.random() < COVERAGE_SHARE:  # fc & co. keep the samples they had
        config.update(_design_space_draw(kernel, rng, config))
    return config


def _design_space_draw(kernel: str, rng: random.Random, config: Mapping[str, object]) -> dict:
    """Kernel size and strides redrawn over their valid sets, HW to another resolution's (see the module doc)."""
    out: dict[str, object] = {}
    if ops.HW in config:
        out[ops.HW] = rng.choice(_nearby_hw(int(config[ops.HW])))  # type: ignore[arg-type]
    for key in _DISCRETE_KEYS:
        if key in config:
            valid = ops.valid_values(kernel, key)
            out[key] = valid[0] if out.get(ops.HW) == 1 else rng.choice(valid)
    return out


def _nearby_hw(hw: int) -> list[int]:
    """The members of ``ops.HW_VALUES`` within a factor two of ``hw`` (the sizes of other input resolutions)."""
    return [v for v in ops.HW_VALUES if hw / 2 <= v <= hw * 2] or [ops.snap(hw, ops.HW_VALUES)]


def _discrete_draw(kernel: str, rng: random.Random, keys: Iterable[str]) -> dict:
    """HW, kernel size and strides among ``keys``, each drawn uniformly over its valid set."""
    out: dict[str, object] = {}
    for key in keys:
        if key == ops.HW:
            out[key] = rng.choice(ops.HW_VALUES)
        elif key in _DISCRETE_KEYS:
            out[key] = rng.choice(ops.valid_values(kernel, key))
    return out


def _finegrained(kernel: str, rng: random.Random, around: dict, vary_hw: bool) -> dict:
    def draw(c: int) -> int:
        lo, hi = max(ops.CHANNELS_RANGE[0], math.ceil(FINEGRAINED_RANGE[0] * c)), int(FINEGRAINED_RANGE[1] * c)
        return _clip_channels(rng.randint(lo, max(lo, hi)))

    config = _map_channels(around, draw)
    if vary_hw and ops.HW in config:
        config[ops.HW] = rng.choice(_nearby_hw(int(config[ops.HW])))  # type: ignore[arg-type]
    return config


def _uniform(kernel: str, rng: random.Random) -> dict:
    lo, hi = (math.log(v) for v in UNIFORM_CHANNELS)
    channel = lambda: int(round(math.exp(rng.uniform(lo, hi))))  # noqa: E731
    config: dict[str, object] = {}
    for key in ops.kernel_type(kernel).keys:
        if key == ops.HW or key in _DISCRETE_KEYS:
            config.update(_discrete_draw(kernel, rng, (key,)))
        elif key == ops.CINS:
            config[key] = [channel() for _ in range(rng.randint(*ops.CONCAT_INPUTS_RANGE))]
        else:
            config[key] = channel()
    return config


def _even_channels(config: dict) -> dict:
    return _map_channels(config, lambda c: c + c % 2)  # CHANNELS_RANGE's bounds keep c + 1 valid


def _light_enough(kernel: str, config: Mapping[str, object]) -> bool:
    cost = ops.kernel_cost(kernel, config)
    return cost.flops <= MAX_FLOPS and cost.params <= MAX_PARAMS


def sample_configs(
    kernel: str,
    n: int,
    sampler: str = "prior",
    seed: int = 0,
    around: Mapping[str, object] | None = None,
    vary_hw: bool = False,
) -> list[dict]:
    """``n`` distinct valid configs of ``kernel`` (fewer when the sampler's space is smaller)."""
    ktype = ops.kernel_type(kernel)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not valid; valid: {', '.join(SAMPLERS)}")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if (sampler == "finegrained") != (around is not None):
        raise ValueError(
            "the finegrained sampler needs around=CONFIG; the others take none"
            if around is None
            else f"around= is only for the finegrained sampler, not {sampler}"
        )
    if vary_hw and sampler != "finegrained":
        raise ValueError(f"vary_hw is only for the finegrained sampler, not {sampler}")
    rng = random.Random(f"{kernel}/{sampler}/{seed}")
    even = any(op in EVEN_CHANNEL_OPS for op in ktype.ops)
    if sampler == "prior":
        rows = prior_rows(kernel)
        draw = lambda: _prior(kernel, rng, rows)  # noqa: E731
    elif sampler == "finegrained":
        base = ops.validate_config(kernel, around)  # type: ignore[arg-type]
        draw = lambda: _finegrained(kernel, rng, base, vary_hw)  # noqa: E731
    else:
        draw = lambda: _uniform(kernel, rng)  # noqa: E731
    seen: set[str] = set()
    configs: list[dict] = []
    attempts = 0
    while len(configs) < n and attempts < 50 * n + 100:
        attempts += 1
        config = draw()
        if even:
            config = _even_channels(config)
        if ops.HW in config and config[ops.HW] < ops.hw_range(kernel)[0]:  # a 1x1 map has nothing to crop
            continue
        config = ops.validate_config(kernel, config)
        if sampler != "finegrained" and not _light_enough(kernel, config):
            continue
        key = json.dumps(config, sort_keys=True)
        if key not in seen:
            seen.add(key)
            configs.append(config)
    return configs

"""Kernel config samplers: reproducible, inside the valid sets, deduplicated; the prior table."""

from __future__ import annotations

import json
import sys

import pytest

from nnmeter import ops
from nnmeter.kernel_gen.priors import family_of, load_priors, prior_rows
from nnmeter.kernel_gen.samplers import (
    COVERAGE_SHARE,
    FINEGRAINED_RANGE,
    MAX_FLOPS,
    PRIOR_JITTER,
    SAMPLERS,
    sample_configs,
)

pytestmark = pytest.mark.unit

CONV = {"HW": 28, "CIN": 64, "COUT": 128, "KERNEL_SIZE": 3, "STRIDES": 1}


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


@pytest.mark.parametrize("sampler", ["prior", "uniform"])
@pytest.mark.parametrize("kernel", list(ops.KERNELS))
def test_samples_are_reproducible_valid_and_distinct(kernel, sampler):
    configs = sample_configs(kernel, 30, sampler, seed=7)
    assert len(configs) == 30
    assert configs == sample_configs(kernel, 30, sampler, seed=7)
    assert configs != sample_configs(kernel, 30, sampler, seed=8)
    assert len({_key(c) for c in configs}) == 30
    for c in configs:
        assert ops.validate_config(kernel, c) == c
        if ops.HW in c:
            assert c[ops.HW] in ops.HW_VALUES
        assert ops.kernel_cost(kernel, c).flops <= MAX_FLOPS
        if kernel in ("split", "channelshuffle"):
            assert c[ops.CIN] % 2 == 0


def test_prior_samples_come_from_real_layers_with_jittered_channels():
    rows = prior_rows("conv-bn-relu")
    shapes = {(r["HW"], r["KERNEL_SIZE"], r["STRIDES"]) for r in rows}
    configs = sample_configs("conv-bn-relu", 200, "prior", seed=1)
    real = sum((c["HW"], c["KERNEL_SIZE"], c["STRIDES"]) in shapes for c in configs)
    assert (1 - COVERAGE_SHARE) * 200 * 0.8 <= real < 200  # mostly real shapes; the coverage share redraws
    exact = {_key(r) for r in rows}
    assert sum(_key(c) in exact for c in configs) < 20  # jitter: mostly between the real layers


@pytest.mark.parametrize("kernel", ["dwconv-bn-relu", "conv-bn", "maxpool", "avgpool", "add"])
def test_prior_samples_vary_the_real_layers_as_design_spaces_do(kernel):
    """Real models in the table never use a 7x7 depthwise conv; NAS spaces do: the sampler must reach it.
    HW moves within a factor two of a real layer's (another resolution); no layer scaled to another depth's HW."""
    configs = sample_configs(kernel, 300, "prior", seed=3)
    rows = prior_rows(kernel)
    near = {v for r in rows for v in ops.HW_VALUES if r[ops.HW] / 2 <= v <= r[ops.HW] * 2}
    assert {c[ops.HW] for c in configs} <= near
    assert len({c[ops.HW] for c in configs} - {r[ops.HW] for r in rows}) >= 2  # sizes no table row has
    for key in (ops.KERNEL_SIZE, ops.STRIDES, ops.POOL_STRIDES):
        if key in ops.kernel_type(kernel).keys:
            assert {c[key] for c in configs} == set(ops.valid_values(kernel, key)), key
            assert all(c[key] == 1 for c in configs if c[ops.HW] == 1 and c not in rows), key
    widest = max(max(r.get(ops.CIN, 0), r.get(ops.COUT, 0)) for r in rows)
    assert max(max(c.get(ops.CIN, 0), c.get(ops.COUT, 0)) for c in configs) <= widest * PRIOR_JITTER[1] + 1


def test_finegrained_keeps_all_but_channels_in_nnmeter_range():
    configs = sample_configs("conv-bn-relu", 50, "finegrained", seed=2, around=CONV)
    assert len(configs) == 50
    for c in configs:
        assert (c["HW"], c["KERNEL_SIZE"], c["STRIDES"]) == (28, 3, 1)
        assert FINEGRAINED_RANGE[0] * 64 <= c["CIN"] <= FINEGRAINED_RANGE[1] * 64
        assert FINEGRAINED_RANGE[0] * 128 <= c["COUT"] <= FINEGRAINED_RANGE[1] * 128
    varied = sample_configs("conv-bn-relu", 50, "finegrained", seed=2, around=CONV, vary_hw=True)
    assert {c["HW"] for c in varied} == {v for v in ops.HW_VALUES if 14 <= v <= 56}
    concat = sample_configs("concat", 10, "finegrained", around={"HW": 7, "CINS": [10, 20, 30]})
    assert all(len(c["CINS"]) == 3 and 4 <= c["CINS"][2] <= 36 for c in concat)


def test_a_small_space_gives_fewer_configs_not_an_endless_loop():
    assert sample_configs("relu", 10, "finegrained", around={"HW": 7, "CIN": 1}) == [{"HW": 7, "CIN": 1}]


@pytest.mark.parametrize(
    "args,words",
    [
        (("convx", 3), ["convx", "not a kernel"]),
        (("relu", 3, "random"), ["random", "prior, finegrained, uniform"]),
        (("relu", 3, "finegrained"), ["around"]),
        (("relu", 3, "prior", 0, {"HW": 7, "CIN": 3}), ["around", "prior"]),
        (("relu", 3, "finegrained", 0, {"HW": 7, "CIN": 0}), ["relu", "CIN=0"]),
    ],
)
def test_bad_sampler_arguments_are_clear(args, words):
    with pytest.raises(ValueError) as err:
        sample_configs(*args)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_prior_table_covers_every_kernel_and_stays_in_valid_sets():
    table = load_priors()
    assert "MobileNetV2@224" in table["sources"] and "NASNetMobile@160" in table["sources"]
    for kernel in ops.KERNELS:
        family = family_of(kernel)
        assert table["families"][family], family
    for family, rows in table["families"].items():
        assert len({_key(r) for r in rows}) == len(rows), f"{family} has duplicate rows"
        for r in rows:
            assert r.get("HW", 1) in ops.HW_VALUES
            valid_k = ops.POOL_KERNEL_SIZE_VALUES if family == "pool" else ops.KERNEL_SIZE_VALUES
            assert r.get("KERNEL_SIZE", 1) in valid_k
            assert r.get("STRIDES", 1) in ops.STRIDES_VALUES
            assert r.get("POOL_STRIDES", 1) in ops.POOL_STRIDES_VALUES
    assert {"HW": 112, "CIN": 32, "KERNEL_SIZE": 3, "STRIDES": 1} in table["families"]["dwconv"]  # MobileNetV2


def test_sampling_does_not_load_tensorflow():
    import subprocess

    code = (
        "import sys; from nnmeter.kernel_gen import sample_configs; sample_configs('conv-bn-relu', 5); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_sampler_name_works():
    for sampler in SAMPLERS:
        around = CONV if sampler == "finegrained" else None
        assert sample_configs("conv-bn-relu", 2, sampler, around=around)

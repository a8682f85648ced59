"""The evaluation set: every family builds, and models are a pure function of the seed."""

from __future__ import annotations

import numpy as np
import pytest

from nnmeter.errors import ConfigError
from nnmeter.evaluation import zoo

pytestmark = pytest.mark.integration

GENERATED = [name for name, fam in zoo.FAMILIES.items() if fam.generated]


def test_sampling_is_deterministic_per_seed_and_families_are_independent():
    a = zoo.evaluation_set(GENERATED, 3, [64, 96], seed=7)
    b = zoo.evaluation_set(GENERATED, 3, [64, 96], seed=7)
    c = zoo.evaluation_set(GENERATED, 3, [64, 96], seed=8)
    assert a == b
    assert [m.params for m in a] != [m.params for m in c]
    # adding a family does not change the models of the others
    only_resnet = zoo.evaluation_set(["nas-resnet"], 3, [64, 96], seed=7)
    assert only_resnet == [m for m in a if m.family == "nas-resnet"]
    assert len({m.name for m in a}) == len(a) == 3 * len(GENERATED)


def test_application_variants_are_distinct_and_capped():
    models = zoo.evaluation_set(["resnet50", "mobilenetv2"], 10, [96, 128], seed=0)
    resnets = [m for m in models if m.family == "resnet50"]
    assert len(resnets) == 2  # one width multiplier x two resolutions
    assert len({m.name for m in models}) == len(models)
    assert {m.params["include_top"] for m in models} == {True, False}


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ConfigError, match="'resnet' is not a model family; valid: mobilenetv1"):
        zoo.evaluation_set(["nas-mbv2", "resnet"], 1, [64])


@pytest.mark.parametrize("family", GENERATED)
def test_generated_families_build_with_their_structures(family):
    model = zoo.evaluation_set([family], 1, [64], seed=3)[0]
    keras_model = zoo.build_zoo_model(model.family, model.name, model.params)
    assert keras_model.input_shape == (None, 64, 64, 3)
    assert keras_model.output_shape == (None, 1000)
    kinds = {type(layer).__name__ for layer in keras_model.layers}
    expected = {
        "nas-mbv2": {"DepthwiseConv2D", "BatchNormalization"},
        "nas-resnet": {"Add", "MaxPooling2D"},
        "nas-resnet-wide": {"Add", "MaxPooling2D"},
        "nas-shuffle": {"Concatenate", "Permute", "Reshape", "DepthwiseConv2D"},
        "nas-inception": {"Concatenate", "MaxPooling2D"},
    }[family]
    assert expected <= kinds


def test_the_wide_family_climbs_in_weights_for_the_correction_to_see_where_caches_run_out():
    """The model correction's big calibration models: each one's weights 2-3x the one before, from 10 to 200 MB."""
    models = zoo.evaluation_set(["nas-resnet-wide"], 4, [64], seed=7919)
    mb = [zoo.FAMILIES[m.family].build(m.params).count_params() * 4 / 1e6 for m in models]
    assert 10 < mb[0] and mb[-1] < 200
    assert all(2.0 < b / a < 3.0 for a, b in zip(mb, mb[1:])), mb


def test_build_is_deterministic_including_weights():
    model = zoo.evaluation_set(["nas-mbv2"], 1, [32], seed=1)[0]
    first = zoo.build_zoo_model(model.family, model.name, model.params)
    second = zoo.build_zoo_model(model.family, model.name, model.params)
    assert [layer.__class__ for layer in first.layers] == [layer.__class__ for layer in second.layers]
    for w1, w2 in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(w1, w2)


def test_mbv2_space_covers_its_choices():
    archs = [m.params for m in zoo.evaluation_set(["nas-mbv2"], 12, [96], seed=0)]
    blocks = [b for a in archs for s in a["stages"] for b in s["blocks"]]
    assert {b["kernel"] for b in blocks} == {3, 5, 7}
    assert {b["expansion"] for b in blocks} == {3, 6}
    assert {b["se"] for b in blocks} == {True, False}
    assert {s["act"] for a in archs for s in a["stages"]} == {"relu6", "hswish"}


def test_an_application_builds_without_weights():
    model = zoo.evaluation_set(["mobilenetv3small"], 1, [64], seed=0)[0]
    keras_model = zoo.build_zoo_model(model.family, model.name, model.params)
    assert keras_model.input_shape == (None, 64, 64, 3)
    assert keras_model.count_params() > 100_000

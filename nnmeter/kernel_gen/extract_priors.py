"""Extract the prior table: the kernel configs of real architectures, per kernel family.

Run ``python -m nnmeter.kernel_gen.extract_priors`` to regenerate
``nnmeter/configs/priors/kernel_priors.json``. It builds keras.applications models
with ``weights=None`` (nothing is downloaded) at a few input resolutions, walks
their layers and records each layer's config in the family its kernel belongs to:

* ``conv``: Conv2D with one group and a square kernel (HW, CIN, COUT, KERNEL_SIZE, STRIDES);
* ``dwconv``: DepthwiseConv2D with multiplier 1 (HW, CIN, KERNEL_SIZE, STRIDES);
* ``pool``: MaxPooling2D / AveragePooling2D (HW, CIN, KERNEL_SIZE, POOL_STRIDES);
* ``fc``: Dense on a vector, and 1x1 Conv2D on a 1x1 map (SE blocks, heads) (CIN, COUT);
  ``vector``: the sizes of Dense inputs and outputs (CIN), for softmax;
* ``concat``: Concatenate of 2-4 feature maps (HW, CINS);
* ``elementwise``: the input map of every other layer that computes on a feature map
  (activations, batch norm, add, multiply, global pooling, padding...) (HW, CIN).

HW is the layer's input height snapped to ``ops.HW_VALUES``; kernel sizes, strides
and pool strides snap to their valid sets (``ops.snap``: nearest, ties to the
smaller); channels stay as they are. Rows are deduplicated per family.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable, Iterable

from nnmeter import ops

#: (name, constructor name in keras.applications, keyword arguments), built at each resolution.
MODELS: tuple[tuple[str, str, dict], ...] = (
    ("MobileNet", "MobileNet", {}),
    ("MobileNet-0.5", "MobileNet", {"alpha": 0.5}),
    ("MobileNetV2", "MobileNetV2", {}),
    ("MobileNetV2-0.5", "MobileNetV2", {"alpha": 0.5}),
    ("MobileNetV2-1.4", "MobileNetV2", {"alpha": 1.4}),
    ("MobileNetV3Small", "MobileNetV3Small", {}),
    ("MobileNetV3Large", "MobileNetV3Large", {}),
    ("ResNet50", "ResNet50", {}),
    ("ResNet50V2", "ResNet50V2", {}),
    ("EfficientNetB0", "EfficientNetB0", {}),
    ("EfficientNetB1", "EfficientNetB1", {}),
    ("EfficientNetB2", "EfficientNetB2", {}),
    ("DenseNet121", "DenseNet121", {}),
    ("NASNetMobile", "NASNetMobile", {}),
    ("EfficientNetV2B0", "EfficientNetV2B0", {}),
    ("InceptionV3", "InceptionV3", {}),
)
#: Two input resolutions, so that the table holds two sets of feature-map sizes (224: 112, 56, 28...; 160: 80,
#: 40, 20...); the sampler moves HW to the sizes of other resolutions.
RESOLUTIONS = (224, 160)

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "configs" / "priors" / "kernel_priors.json"

FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "conv": (ops.HW, ops.CIN, ops.COUT, ops.KERNEL_SIZE, ops.STRIDES),
    "dwconv": (ops.HW, ops.CIN, ops.KERNEL_SIZE, ops.STRIDES),
    "pool": (ops.HW, ops.CIN, ops.KERNEL_SIZE, ops.POOL_STRIDES),
    "fc": (ops.CIN, ops.COUT),
    "vector": (ops.CIN,),
    "concat": (ops.HW, ops.CINS),
    "elementwise": (ops.HW, ops.CIN),
}


def _shape(tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape[1:])


def _square(pair) -> int | None:
    pair = tuple(pair) if isinstance(pair, (list, tuple)) else (pair, pair)
    return int(pair[0]) if pair[0] == pair[1] else None


def layer_rows(layer) -> Iterable[tuple[str, dict]]:
    """(family, config) of one Keras layer; nothing for layers outside the families."""
    import keras

    inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    shapes = [_shape(t) for t in inputs]
    if isinstance(layer, keras.layers.InputLayer) or not shapes:
        return
    first = shapes[0]
    hw = ops.snap(first[0], ops.HW_VALUES) if len(first) == 3 else None
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        k, s = _square(layer.kernel_size), _square(layer.strides)
        if k and s and layer.depth_multiplier == 1:
            yield (
                "dwconv",
                {
                    ops.HW: hw,
                    ops.CIN: first[2],
                    ops.KERNEL_SIZE: ops.snap(k, ops.KERNEL_SIZE_VALUES),
                    ops.STRIDES: ops.snap(s, ops.STRIDES_VALUES),
                },
            )
    elif isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose):
        k, s = _square(layer.kernel_size), _square(layer.strides)
        if k and s and layer.groups == 1:
            yield (
                "conv",
                {
                    ops.HW: hw,
                    ops.CIN: first[2],
                    ops.COUT: layer.filters,
                    ops.KERNEL_SIZE: ops.snap(k, ops.KERNEL_SIZE_VALUES),
                    ops.STRIDES: ops.snap(s, ops.STRIDES_VALUES),
                },
            )
            if first[:2] == (1, 1) and k == 1:  # a 1x1 conv on a 1x1 map (SE, MobileNetV3 head) is an fc
                yield "fc", {ops.CIN: first[2], ops.COUT: layer.filters}
    elif isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        k, s = _square(layer.pool_size), _square(layer.strides)
        if k and s:
            yield (
                "pool",
                {
                    ops.HW: hw,
                    ops.CIN: first[2],
                    ops.KERNEL_SIZE: ops.snap(k, ops.POOL_KERNEL_SIZE_VALUES),
                    ops.POOL_STRIDES: ops.snap(s, ops.POOL_STRIDES_VALUES),
                },
            )
    elif isinstance(layer, keras.layers.Dense) and len(first) == 1:
        yield "fc", {ops.CIN: first[0], ops.COUT: layer.units}
        yield "vector", {ops.CIN: first[0]}
        yield "vector", {ops.CIN: layer.units}
    elif isinstance(layer, keras.layers.Concatenate):
        maps = all(len(s) == 3 and s[:2] == first[:2] for s in shapes)
        if maps and ops.CONCAT_INPUTS_RANGE[0] <= len(shapes) <= ops.CONCAT_INPUTS_RANGE[1]:
            yield "concat", {ops.HW: hw, ops.CINS: [s[2] for s in shapes]}
    elif (
        len(first) == 3
        and first[0] == first[1]
        and not isinstance(
            layer,
            (
                keras.layers.Reshape,
                keras.layers.Flatten,
                keras.layers.Dropout,
                keras.layers.Rescaling,
                keras.layers.Normalization,
            ),
        )
    ):
        yield "elementwise", {ops.HW: hw, ops.CIN: first[2]}


def extract(
    models: Iterable[tuple[str, str, dict]] = MODELS,
    resolutions: Iterable[int] = RESOLUTIONS,
    log: Callable[[str], None] = print,
) -> dict:
    """The prior table: ``{"families": {family: [config, ...]}, "sources": [...], ...}``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    rows: dict[str, dict[str, dict]] = {family: {} for family in FAMILY_KEYS}
    sources = []
    for name, constructor, kwargs in models:
        for res in resolutions:
            keras.backend.clear_session()
            model = getattr(keras.applications, constructor)(weights=None, input_shape=(res, res, 3), **kwargs)
            before = sum(len(r) for r in rows.values())
            for layer in model.layers:
                for family, config in layer_rows(layer):
                    rows[family].setdefault(json.dumps(config, sort_keys=True), config)
            added = sum(len(r) for r in rows.values()) - before
            sources.append(f"{name}@{res}")
            log(f"{name} at {res}: {len(model.layers)} layers, {added} new rows")
    return {
        "about": "kernel configs of real architectures per family; regenerate with "
        "python -m nnmeter.kernel_gen.extract_priors",
        "keras_version": keras.__version__,
        "sources": sources,
        "family_keys": {f: list(k) for f, k in FAMILY_KEYS.items()},
        "families": {f: sorted(r.values(), key=lambda c: json.dumps(c, sort_keys=True)) for f, r in rows.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON table")
    args = parser.parse_args(argv)
    table = extract()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: " + ", ".join(f"{f} {len(r)}" for f, r in table["families"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

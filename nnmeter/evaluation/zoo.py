"""The evaluation set: real architectures and seeded NAS-style models, not kernels.

Two kinds of family:

* **applications**: ``keras.applications`` models built with ``weights=None``
  (MobileNet v1/v2/v3, ResNet50, EfficientNetB0, DenseNet121, NASNetMobile) at
  several input resolutions and width multipliers.
* **generated**: models drawn from NAS-style search spaces with a seed:
  MobileNetV2-style inverted residual stacks (widths, kernel size 3/5/7,
  expansion 3/6, SE on/off, hswish/relu6), ResNet-style stacks (basic or
  bottleneck blocks), ShuffleNetV2-style units (split, concat, channel shuffle)
  and Inception-style blocks (2-4 parallel branches joined by concat).

A :class:`ZooModel` carries everything its build needs in ``params`` (for a
generated model: the sampled architecture itself, not the seed), so that
:func:`build_zoo_model` is a pure function of its arguments; it also seeds
Keras so the random weights, and with them the converted file's content hash,
are the same on every build. The sampling is a pure function of the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from nnmeter.errors import ConfigError


@dataclass(frozen=True)
class ZooModel:
    """One evaluation model: its family, a unique name, and the parameters that build it."""

    family: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return int(self.params["resolution"])


@dataclass(frozen=True)
class Family:
    """A family of evaluation models: how to draw ``count`` of them and how to build one."""

    name: str
    doc: str
    generated: bool
    draw: Callable[[random.Random, int, Sequence[int]], list[dict[str, Any]]]
    build: Callable[[Mapping[str, Any]], Any]
    evaluated_by_default: bool = True  # part of a campaign's default evaluation set


# --- applications --------------------------------------------------------------

# family -> (constructor name in keras.applications, width multipliers it accepts, extra kwargs)
_APPLICATIONS: dict[str, tuple[str, tuple[float, ...], dict[str, Any]]] = {
    "mobilenetv1": ("MobileNet", (0.5, 0.75, 1.0), {}),
    "mobilenetv2": ("MobileNetV2", (0.5, 0.75, 1.0, 1.4), {}),
    "mobilenetv3small": ("MobileNetV3Small", (0.75, 1.0), {"include_preprocessing": False}),
    "mobilenetv3large": ("MobileNetV3Large", (0.75, 1.0), {"include_preprocessing": False}),
    "resnet50": ("ResNet50", (1.0,), {}),
    "efficientnetb0": ("EfficientNetB0", (1.0,), {}),
    "densenet121": ("DenseNet121", (1.0,), {}),
    "nasnetmobile": ("NASNetMobile", (1.0,), {}),
}


#: The keras.applications mobile architectures the quickstart predicts in their default form (their
#: preprocessing layers included), from Keras, .tflite and ONNX files (tests/test_mobile_coverage.py).
MOBILE_APPLICATIONS = (
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Small",
    "MobileNetV3Large",
    "EfficientNetB0",
    "NASNetMobile",
    "DenseNet121",
)


def _draw_application(family: str) -> Callable[[random.Random, int, Sequence[int]], list[dict[str, Any]]]:
    """Variants of an application: every (resolution, alpha) pair in a seeded order, ``count`` of them.

    The first variant keeps the classifier (``include_top``); the rest alternate, so both
    the feature extractor and the full network are in the set.
    """
    alphas = _APPLICATIONS[family][1]

    def draw(rng: random.Random, count: int, resolutions: Sequence[int]) -> list[dict[str, Any]]:
        grid = [(r, a) for r in resolutions for a in alphas]
        rng.shuffle(grid)
        picked = sorted(grid[:count], key=lambda ra: (ra[0], ra[1]))
        return [{"resolution": r, "alpha": a, "include_top": i % 2 == 0} for i, (r, a) in enumerate(picked)]

    return draw


def _build_application(family: str) -> Callable[[Mapping[str, Any]], Any]:
    def build(params: Mapping[str, Any]) -> Any:
        import keras

        ctor_name, _, extra = _APPLICATIONS[family]
        ctor = getattr(keras.applications, ctor_name)
        r = int(params["resolution"])
        kwargs: dict[str, Any] = dict(
            extra, input_shape=(r, r, 3), weights=None, include_top=bool(params["include_top"])
        )
        if not kwargs["include_top"]:
            kwargs["pooling"] = "avg"
        if len(_APPLICATIONS[family][1]) > 1:
            kwargs["alpha"] = float(params["alpha"])
        return ctor(**kwargs)

    return build


# --- generated: MobileNetV2-style inverted residual stacks --------------------

# per stage: (base output channels, stride of its first block, max depth)
_MBV2_STAGES = ((16, 1, 1), (24, 2, 3), (40, 2, 3), (80, 2, 4), (112, 1, 4), (160, 2, 4))


def _draw_mbv2(rng: random.Random, count: int, resolutions: Sequence[int]) -> list[dict[str, Any]]:
    archs = []
    for _ in range(count):
        stages = []
        for base, stride, max_depth in _MBV2_STAGES:
            stages.append(
                {
                    "channels": _round8(base * rng.choice((0.5, 0.75, 1.0, 1.25, 1.5))),
                    "stride": stride,
                    "blocks": [
                        {"kernel": rng.choice((3, 5, 7)), "expansion": rng.choice((3, 6)), "se": rng.random() < 0.4}
                        for _ in range(rng.randint(1, max_depth))
                    ],
                    "act": rng.choice(("relu6", "hswish")),
                }
            )
        archs.append(
            {
                "resolution": rng.choice(list(resolutions)),
                "stem": _round8(32 * rng.choice((0.5, 0.75, 1.0))),
                "stages": stages,
                "head": rng.choice((640, 960, 1280)),
            }
        )
    return archs


def _build_mbv2(params: Mapping[str, Any]) -> Any:
    inputs, x = _stem(params, act="relu6")
    cin = int(params["stem"])
    for stage in params["stages"]:
        for i, block in enumerate(stage["blocks"]):
            stride = stage["stride"] if i == 0 else 1
            x = _inverted_residual(
                x, cin, stage["channels"], block["kernel"], stride, block["expansion"], block["se"], stage["act"]
            )
            cin = stage["channels"]
    x = _conv_bn_act(x, params["head"], 1, 1, "relu6")
    return _classifier(inputs, x)


def _inverted_residual(
    x: Any, cin: int, cout: int, kernel: int, stride: int, expansion: int, se: bool, act: str
) -> Any:
    from keras import layers

    shortcut = x
    x = _conv_bn_act(x, cin * expansion, 1, 1, act)
    x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = _activation(x, act)
    if se:
        x = _squeeze_excite(x)
    x = layers.Conv2D(cout, 1, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    if stride == 1 and cin == cout:
        x = layers.Add()([shortcut, x])
    return x


# --- generated: ResNet-style stacks -------------------------------------------


def _draw_resnet(
    rng: random.Random,
    count: int,
    resolutions: Sequence[int],
    widths: Sequence[int] = (32, 48, 64),
    kernels: Sequence[int] = (3, 3, 5),
) -> list[dict[str, Any]]:
    archs = []
    for _ in range(count):
        bottleneck = rng.random() < 0.5
        stages = []
        width = rng.choice(tuple(widths))
        for s in range(rng.choice((3, 4))):
            stages.append(
                {
                    "channels": _round8(width * (2**s) * rng.choice((0.75, 1.0, 1.25))),
                    "blocks": rng.randint(1, 3),
                    "kernel": rng.choice(tuple(kernels)),
                    "stride": 1 if s == 0 else 2,
                }
            )
        archs.append(
            {
                "resolution": rng.choice(list(resolutions)),
                "bottleneck": bottleneck,
                "stem": width,
                "stem_kernel": rng.choice((3, 7)),
                "stages": stages,
            }
        )
    return archs


def _draw_resnet_ladder(
    rng: random.Random, count: int, resolutions: Sequence[int], widths: Sequence[int] = (36, 56, 84, 128)
) -> list[dict[str, Any]]:
    """ResNet stacks of four stages of two basic 3x3 blocks, the i-th model's stem ``widths[i]`` wide: their weights
    climb in even steps (15, 36, 80 and 183 MB at the default widths), so that a fit over them sees where a
    device starts to pay for weights its caches cannot hold (randomly drawn widths left 14-126 MB empty)."""
    return [
        {
            "resolution": rng.choice(list(resolutions)),
            "bottleneck": False,
            "stem": width,
            "stem_kernel": rng.choice((3, 7)),
            "stages": [
                {"channels": width * 2**s, "blocks": 2, "kernel": 3, "stride": 1 if s == 0 else 2} for s in range(4)
            ],
        }
        for width in (widths[i % len(widths)] for i in range(count))
    ]


def _build_resnet(params: Mapping[str, Any]) -> Any:
    from keras import layers

    r = int(params["resolution"])
    inputs = layers.Input((r, r, 3))
    x = _conv_bn_act(inputs, params["stem"], params["stem_kernel"], 2, "relu")
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    cin = int(params["stem"])
    for stage in params["stages"]:
        cout = int(stage["channels"])
        for i in range(stage["blocks"]):
            stride = stage["stride"] if i == 0 else 1
            x = _residual_block(x, cin, cout, stage["kernel"], stride, params["bottleneck"])
            cin = cout
    return _classifier(inputs, x)


def _residual_block(x: Any, cin: int, cout: int, kernel: int, stride: int, bottleneck: bool) -> Any:
    from keras import layers

    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = layers.Conv2D(cout, 1, stride, padding="same", use_bias=False)(x)
        shortcut = layers.BatchNormalization()(shortcut)
    if bottleneck:
        mid = max(8, cout // 4)
        y = _conv_bn_act(x, mid, 1, 1, "relu")
        y = _conv_bn_act(y, mid, kernel, stride, "relu")
        y = layers.Conv2D(cout, 1, padding="same", use_bias=False)(y)
    else:
        y = _conv_bn_act(x, cout, kernel, stride, "relu")
        y = layers.Conv2D(cout, kernel, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    y = layers.Add()([shortcut, y])
    return layers.ReLU()(y)


# --- generated: ShuffleNetV2-style units ---------------------------------------


def _draw_shuffle(rng: random.Random, count: int, resolutions: Sequence[int]) -> list[dict[str, Any]]:
    archs = []
    for _ in range(count):
        scale = rng.choice((0.5, 0.75, 1.0, 1.5))
        stages = [
            {
                "channels": _round8(base * scale, multiple=16),
                "units": rng.randint(2, 5),
                "kernel": rng.choice((3, 5, 7)),
            }
            for base in (116, 232, 464)
        ]
        archs.append(
            {"resolution": rng.choice(list(resolutions)), "stem": 24, "stages": stages, "head": rng.choice((512, 1024))}
        )
    return archs


def _build_shuffle(params: Mapping[str, Any]) -> Any:
    from keras import layers

    inputs, x = _stem(params, act="relu")
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    for stage in params["stages"]:
        for i in range(stage["units"]):
            x = _shuffle_unit(x, int(stage["channels"]), stage["kernel"], 2 if i == 0 else 1)
    x = _conv_bn_act(x, params["head"], 1, 1, "relu")
    return _classifier(inputs, x)


def _shuffle_unit(x: Any, cout: int, kernel: int, stride: int) -> Any:
    """A ShuffleNetV2 unit: stride 1 splits the channels in halves; stride 2 runs both branches on all."""
    from keras import layers

    branch_out = cout // 2  # channels are multiples of 16: both halves are whole
    if stride == 1:
        left, right = _split_halves(x)
    else:
        left = layers.DepthwiseConv2D(kernel, 2, padding="same", use_bias=False)(x)
        left = layers.BatchNormalization()(left)
        left = _conv_bn_act(left, branch_out, 1, 1, "relu")
        right = x
    y = _conv_bn_act(right, branch_out, 1, 1, "relu")
    y = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    y = _conv_bn_act(y, branch_out, 1, 1, "relu")
    x = layers.Concatenate()([left, y])
    return _channel_shuffle(x)


# --- generated: Inception-style blocks -----------------------------------------


def _draw_inception(rng: random.Random, count: int, resolutions: Sequence[int]) -> list[dict[str, Any]]:
    archs = []
    for _ in range(count):
        blocks = []
        for s in range(rng.choice((3, 4))):
            n_branches = rng.randint(2, 4)
            kinds = rng.sample(("1x1", "3x3", "5x5", "pool"), n_branches)
            blocks.append(
                {
                    "branches": [
                        {"kind": k, "channels": _round8(rng.choice((16, 24, 32, 48, 64)) * (s + 1))}
                        for k in sorted(kinds)
                    ],
                    "reduce": s > 0,
                }
            )
        archs.append({"resolution": rng.choice(list(resolutions)), "stem": rng.choice((32, 48, 64)), "blocks": blocks})
    return archs


def _build_inception(params: Mapping[str, Any]) -> Any:
    from keras import layers

    inputs, x = _stem(params, act="relu")
    for block in params["blocks"]:
        if block["reduce"]:
            x = layers.MaxPooling2D(3, 2, padding="same")(x)
        branches = []
        for branch in block["branches"]:
            c = int(branch["channels"])
            if branch["kind"] == "1x1":
                y = _conv_bn_act(x, c, 1, 1, "relu")
            elif branch["kind"] == "pool":
                y = layers.MaxPooling2D(3, 1, padding="same")(x)
                y = _conv_bn_act(y, c, 1, 1, "relu")
            else:
                y = _conv_bn_act(x, max(8, c // 2), 1, 1, "relu")
                y = _conv_bn_act(y, c, int(branch["kind"][0]), 1, "relu")
            branches.append(y)
        x = layers.Concatenate()(branches)
    return _classifier(inputs, x)


# --- shared building blocks ---------------------------------------------------


def _round8(value: float, multiple: int = 8) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def _stem(params: Mapping[str, Any], act: str) -> tuple[Any, Any]:
    from keras import layers

    r = int(params["resolution"])
    inputs = layers.Input((r, r, 3))
    return inputs, _conv_bn_act(inputs, params["stem"], 3, 2, act)


def _conv_bn_act(x: Any, channels: int, kernel: int, stride: int, act: str) -> Any:
    from keras import layers

    x = layers.Conv2D(int(channels), int(kernel), int(stride), padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return _activation(x, act)


def _activation(x: Any, act: str) -> Any:
    """relu, relu6 or hswish, built as the kernel generator builds them (so detection sees the same ops)."""
    from nnmeter.kernel_gen.builders import build_op_layer

    return build_op_layer(act, x)


def _squeeze_excite(x: Any) -> Any:
    """The kernel generator's SE: global pool, 1x1 conv (C/4) relu, 1x1 conv, hard sigmoid, multiply."""
    from nnmeter.kernel_gen.builders import build_op_layer

    return build_op_layer("se", x)


def _split_halves(x: Any) -> tuple[Any, Any]:
    from nnmeter.kernel_gen.builders import build_op_layer

    left, right = build_op_layer("split", x)
    return left, right


def _channel_shuffle(x: Any) -> Any:
    """Reshape to (h, w, 2, c / 2), swap the last two axes, reshape back (the kernel generator's form)."""
    from nnmeter.kernel_gen.builders import build_op_layer

    return build_op_layer("channelshuffle", x)


def _classifier(inputs: Any, x: Any) -> Any:
    import keras
    from keras import layers

    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(1000)(x)
    return keras.Model(inputs, x)


# --- the families and the selection -------------------------------------------

FAMILIES: dict[str, Family] = {
    **{
        name: Family(
            name, f"keras.applications.{ctor} (weights=None)", False, _draw_application(name), _build_application(name)
        )
        for name, (ctor, _, _) in _APPLICATIONS.items()
    },
    "nas-mbv2": Family(
        "nas-mbv2",
        "MobileNetV2-style inverted residual stacks: widths, kernel 3/5/7, expansion 3/6, SE, hswish/relu6",
        True,
        _draw_mbv2,
        _build_mbv2,
    ),
    "nas-resnet": Family(
        "nas-resnet", "ResNet-style stacks of basic or bottleneck blocks", True, _draw_resnet, _build_resnet
    ),
    # tens to hundreds of MB of weights: what a device pays when a model's weights cannot stay in its caches
    "nas-resnet-wide": Family(
        "nas-resnet-wide",
        "ResNet-style stacks of 15-190 MB of weights, one width per "
        "model (the whole-model correction's big models; not in the default evaluation set)",
        True,
        _draw_resnet_ladder,
        _build_resnet,
        evaluated_by_default=False,
    ),
    "nas-shuffle": Family(
        "nas-shuffle", "ShuffleNetV2-style units: split, concat, channel shuffle", True, _draw_shuffle, _build_shuffle
    ),
    "nas-inception": Family(
        "nas-inception",
        "Inception-style blocks of 2-4 branches joined by concat",
        True,
        _draw_inception,
        _build_inception,
    ),
}


def check_families(
    families: Sequence[str], source: str = "campaign.yaml", key_path: str = "evaluation.families"
) -> None:
    """A ConfigError naming the first unknown family and the valid ones."""
    for i, name in enumerate(families):
        if name not in FAMILIES:
            raise ConfigError(
                source, f"{key_path}[{i}]", f"{name!r} is not a model family; valid: {', '.join(FAMILIES)}"
            )


def evaluation_set(
    families: Sequence[str], per_family: int, resolutions: Sequence[int], seed: int = 0
) -> list[ZooModel]:
    """``per_family`` models of each family (fewer for an application with fewer variants), seeded.

    Each family draws from its own generator seeded by (seed, family), so adding a family
    does not change the models of the others.
    """
    check_families(families)
    models = []
    for family_name in families:
        family = FAMILIES[family_name]
        rng = random.Random(f"{seed}:{family_name}")
        for i, params in enumerate(family.draw(rng, per_family, resolutions)):
            models.append(ZooModel(family_name, _model_name(family_name, i, params), params))
    return models


def _model_name(family: str, index: int, params: Mapping[str, Any]) -> str:
    if family in _APPLICATIONS:
        top = "top" if params["include_top"] else "notop"
        alpha = f"_a{params['alpha']:g}" if len(_APPLICATIONS[family][1]) > 1 else ""
        return f"{family}_{params['resolution']}{alpha}_{top}"
    return f"{family}_{index:03d}_{params['resolution']}"


def build_zoo_model(family: str, name: str, params: Mapping[str, Any]) -> Any:
    """The Keras model of one evaluation model (module-level: conversion workers import it).

    Keras is seeded from the name so the random weights, and the converted file, repeat.
    """
    import zlib

    import keras

    keras.utils.set_random_seed(zlib.crc32(name.encode()))
    return FAMILIES[family].build(params)

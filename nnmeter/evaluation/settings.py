"""The ``evaluation`` section of campaign.yaml: real models whose measured latency the predictor is scored on."""

from __future__ import annotations

from dataclasses import dataclass

from nnmeter import ops
from nnmeter.evaluation import zoo
from nnmeter.schema import setting


@dataclass(frozen=True)
class EvaluationSettings:
    """The ``evaluation`` section: real models whose measured latency the predictor is scored on."""

    families: list[str] = setting(
        [name for name, family in zoo.FAMILIES.items() if family.evaluated_by_default],
        "model families of the evaluation set: keras.applications architectures and seeded NAS-style spaces (nas-*)",
        choices=tuple(zoo.FAMILIES),
    )
    resolutions: list[int] = setting(
        [160, 192, 224], "input resolutions (height = width)", minimum=32, maximum=ops.HW_RANGE[1]
    )
    models_per_family: int = setting(
        4,
        "models drawn per family (an application has at most one per resolution and width multiplier)",
        minimum=1,
        maximum=1000,
    )
    repeats: int = setting(
        2,
        "independent measurements of each model; with 2, the agreement of the two is "
        "reported as the repeatability of the ground truth",
        choices=(1, 2),
    )
    seed: int = setting(0, "random seed of the model variants drawn per family", minimum=0, maximum=2**32 - 1)

"""The ``kernels`` section of campaign.yaml: which kernel regressors to build, with how many samples."""

from __future__ import annotations

from dataclasses import dataclass

from nnmeter import ops
from nnmeter.schema import setting

#: The largest seed: scikit-learn takes a ``random_state`` in 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
#: The most samples of one kind a setting may ask for per kernel (a default campaign takes 500).
MAX_SAMPLES = 1_000_000

#: Regressors a campaign can train (:data:`nnmeter.training.regressors.REGRESSORS`).
REGRESSOR_NAMES = ("gbt-cost-ratio", "nn-meter-rf")


@dataclass(frozen=True)
class KernelTrainingSettings:
    """The ``kernels`` section: which kernel regressors to build, with how many samples."""

    kernels: list[str] = setting(
        list(ops.KERNELS),
        "kernel types to sample, measure and train a regressor for (those with an op pair "
        "the device's measured fusion rules do not fuse are left out: no model is cut into "
        "them on this device)",
        choices=tuple(ops.KERNELS),
    )
    init_samples: int = setting(
        500,
        "configurations drawn from the prior per kernel before adaptive rounds",
        minimum=1,
        maximum=MAX_SAMPLES,
    )
    member_samples: int = setting(
        200,
        "prior configurations, and no adaptive rounds, for a kernel of a family "
        "after the family's first one in `kernels` (in the order of `nnmeter-build "
        "kernels`: conv-bn-relu, dwconv-bn-relu, bnrelu, addrelu), when "
        "pool_family fits it on the whole family's measurements: its own samples "
        "only need to tell it apart (0: the full budget, as the first)",
        minimum=0,
        maximum=MAX_SAMPLES,
    )
    finegrained_samples: int = setting(
        10,
        "configurations added around each point whose error is above error_threshold, per adaptive round",
        minimum=0,
        maximum=MAX_SAMPLES,
    )
    iterations: int = setting(2, "adaptive sampling rounds (at most; see target_accuracy)", minimum=0, maximum=1000)
    error_threshold: float = setting(
        0.1,
        "relative error above which a training point gets more samples around it (judged on out-of-fold predictions)",
        minimum=0.0,
        maximum=100.0,
    )
    noise_floor_ms: float = setting(
        0.001,
        "an error smaller than this many ms never counts as large: it is "
        "near the timer's resolution and nothing in a whole model's latency",
        minimum=0.0,
        maximum=60_000.0,
    )
    max_refined_points: int = setting(
        15,
        "at most this many large-error points get fine-grained samples per "
        "round (the worst first), so one round costs at most "
        "max_refined_points * finegrained_samples measurements",
        minimum=1,
        maximum=MAX_SAMPLES,
    )
    target_accuracy: float = setting(
        0.95,
        "stop the adaptive rounds of a kernel once this share of its held-out "
        "configs is predicted within +-10 % (1: run every round)",
        minimum=0.0,
        maximum=1.0,
    )
    regressor: str = setting(
        "gbt-cost-ratio",
        "regressor per kernel: gbt-cost-ratio (gradient-boosted trees on "
        "log latency over a linear cost model, the default), nn-meter-rf "
        "(nn-Meter's random forest, the baseline)",
        choices=REGRESSOR_NAMES,
    )
    pool_family: bool = setting(
        True,
        "fit each kernel's packaged regressor on its whole family's measurements "
        "(kernels with the same main op and config: conv-*, dwconv-*, add/addrelu, "
        "bn/bnrelu), told apart by WITH_<op> features, and score it on the kernel's "
        "own held-out configs; nn-meter-rf, the baseline, always trains on its kernel "
        "alone, as nn-Meter does",
    )
    validation_fraction: float = setting(
        0.2,
        "share of the prior samples held out to score the regressor (never trained on, never used to choose samples)",
        minimum=0.05,
        maximum=0.9,
    )
    min_train_samples: int = setting(
        20, "fewest measured training samples a kernel needs to be trained", minimum=2, maximum=MAX_SAMPLES
    )
    keep_models: bool = setting(
        False,
        "keep each converted kernel model once it is measured (a default "
        "campaign's take tens of GB); without, a model needed again (another "
        "protocol, another device) is rebuilt from its config",
    )
    seed: int = setting(0, "random seed of sampling and training", minimum=0, maximum=MAX_SEED)

"""The ``kernels`` and ``evaluation`` sections of campaign.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from nnmeter import ops
from nnmeter.builder import zoo
from nnmeter.schema import setting


@dataclass(frozen=True)
class KernelTrainingSettings:
    """The ``kernels`` section: which kernel regressors to build, with how many samples."""

    kernels: list[str] = setting(list(ops.KERNELS),
                                 "kernel types to sample, measure and train a regressor for (those with an op pair "
                                 "the device's measured fusion rules do not fuse are left out: no model is cut into "
                                 "them on this device)", choices=tuple(ops.KERNELS))
    # 500 from the prior + two rounds of at most 15 x 10 fine-grained = 800 per kernel. A prior-heavier split
    # (640 + 2 x 80) was tried on conv-bn-relu at 800 samples (bench/kernel_accuracy.py --seed 0/1/2): 97.0 / 95.0
    # / 94.5 % against 94.5 / 95.5 / 91.5 % in one session, 95.5 / 94.5 / 92.0 % against 96.0 / 96.0 / 92.5 % after
    # the store's labels had moved with more batches: no difference beyond the seeds' spread, and it costs the
    # kernels that stop after the prior 140 more samples each. On the HW grid of 96-256 px inputs, all 800 from
    # the prior (iterations 0), seeds 0 / 1: 96.5 / 95.0 % against 94.5 (the session before) / 96.5 % for 500 +
    # 2 x 150: the same again. Smaller rounds around more points (50 x 3, seed 0): 94.0 %.
    init_samples: int = setting(500, "configurations drawn from the prior per kernel before adaptive rounds",
                                minimum=1)
    # 200 because a conv kernel fitted on its family scored 97.9 / 98.2 / 98.2 / 97.9 % within +-10 % on its own
    # 571 held-out configs with 100 / 200 / 300 / all (545-713) samples of its own (6 conv kernels, one-off).
    member_samples: int = setting(200, "prior configurations, and no adaptive rounds, for a kernel of a family "
                                       "after the family's first one in `kernels` (in the order of `nnmeter-build "
                                       "kernels`: conv-bn-relu, dwconv-bn-relu, bnrelu, addrelu), when "
                                       "pool_family fits it on the whole family's measurements: its own samples "
                                       "only need to tell it apart (0: the full budget, as the first)", minimum=0)
    finegrained_samples: int = setting(10, "configurations added around each point whose error is above "
                                           "error_threshold, per adaptive round", minimum=0)
    iterations: int = setting(2, "adaptive sampling rounds (at most; see target_accuracy)", minimum=0)
    error_threshold: float = setting(0.1, "relative error above which a training point gets more samples "
                                          "around it (judged on out-of-fold predictions)", minimum=0.0)
    noise_floor_ms: float = setting(0.001, "an error smaller than this many ms never counts as large: it is "
                                           "near the timer's resolution and nothing in a whole model's latency",
                                    minimum=0.0)
    max_refined_points: int = setting(15, "at most this many large-error points get fine-grained samples per "
                                          "round (the worst first), so one round costs at most "
                                          "max_refined_points * finegrained_samples measurements", minimum=1)
    target_accuracy: float = setting(0.95, "stop the adaptive rounds of a kernel once this share of its held-out "
                                           "configs is predicted within +-10 % (1: run every round)",
                                     minimum=0.0, maximum=1.0)
    regressor: str = setting("gbt-cost-ratio", "regressor per kernel: gbt-cost-ratio (gradient-boosted trees on "
                                               "log latency over a linear cost model, the default), "
                                               "et-cost-ratio (extra-trees, same target), nn-meter-rf "
                                               "(nn-Meter's random forest, the baseline)",
                             choices=("gbt-cost-ratio", "et-cost-ratio", "nn-meter-rf"))
    pool_family: bool = setting(True, "fit each kernel's packaged regressor on its whole family's measurements "
                                      "(kernels with the same main op and config: conv-*, dwconv-*, add/addrelu, "
                                      "bn/bnrelu), told apart by WITH_<op> features, and score it on the kernel's "
                                      "own held-out configs; nn-meter-rf, the baseline, always trains on its kernel "
                                      "alone, as nn-Meter does")
    validation_fraction: float = setting(0.2, "share of the prior samples held out to score the regressor "
                                              "(never trained on, never used to choose samples)",
                                         minimum=0.05, maximum=0.9)
    min_train_samples: int = setting(20, "fewest measured training samples a kernel needs to be trained",
                                     minimum=2)
    keep_models: bool = setting(False, "keep each converted kernel model once it is measured (a default "
                                       "campaign's take tens of GB); without, a model needed again (another "
                                       "protocol, another device) is rebuilt from its config")
    seed: int = setting(0, "random seed of sampling and training", minimum=0)


@dataclass(frozen=True)
class EvaluationSettings:
    """The ``evaluation`` section: real models whose measured latency the predictor is scored on."""

    families: list[str] = setting([name for name, family in zoo.FAMILIES.items() if family.evaluated_by_default],
                                  "model families of the evaluation set: keras.applications "
                                  "architectures and seeded NAS-style spaces (nas-*)", choices=tuple(zoo.FAMILIES))
    resolutions: list[int] = setting([160, 192, 224], "input resolutions (height = width)",
                                     minimum=32, maximum=ops.HW_RANGE[1])
    models_per_family: int = setting(4, "models drawn per family (an application has at most one per "
                                        "resolution and width multiplier)", minimum=1)
    repeats: int = setting(2, "independent measurements of each model; with 2, the agreement of the two is "
                              "reported as the repeatability of the ground truth", choices=(1, 2))
    seed: int = setting(0, "random seed of the model variants drawn per family", minimum=0)

"""The adaptive training loop of one kernel's regressor, and the fit on a kernel family's measurements.

Per kernel (:func:`adaptive_training`; measuring is the caller's ``measure`` callable):

1. draw ``init_samples`` configs from the prior (seeded: the same list on every run) and measure them;
2. hold out a fixed share of the *prior* samples (by a hash of the config, so the split never changes
   between runs or rounds); they are never trained on and never used to choose new samples, so their
   score is an honest estimate;
3. train on the rest and score on the held-out configs;
4. find training points with a large error (relative error above ``error_threshold`` and absolute error
   above ``noise_floor_ms``) from out-of-fold predictions: nn-Meter judges the points on its test split
   and then trains near them, which makes its test score optimistic;
5. draw ``finegrained_samples`` configs around each of the worst ``max_refined_points`` of them
   (nn-Meter's rule: channels in [0.4 c, 1.2 c]), measure them, and go back to 3 for ``iterations``
   rounds, or until the held-out +-10 % accuracy reaches ``target_accuracy``;
6. fit the final regressor on every sample.

Families (``pool_family``): kernels that run the same main op on the same config (every ``conv-*``,
every ``dwconv-*``, ...) differ only in what follows it, so each kernel's packaged regressor can be
fitted on its whole family's measurements (:func:`pooled_fit`), the ``WITH_<op>`` features telling the
members apart, and scored on the kernel's own held-out configs. Only a family's first kernel then runs
the whole loop; the others draw ``member_samples`` prior configs (:func:`kernel_settings`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.model_selection import KFold

from nnmeter import ops
from nnmeter.errors import WorkFailed
from nnmeter.kernel_gen.samplers import sample_configs
from nnmeter.predictor.features import feature_matrix
from nnmeter.training.metrics import LatencyMetrics, latency_metrics
from nnmeter.training.regressors import KernelRegressor, make_regressor, regressor_class
from nnmeter.training.settings import KernelTrainingSettings

#: Folds of the out-of-fold predictions that find large-error points.
ERROR_FOLDS = 5


class TrainingError(WorkFailed):
    """A kernel cannot be trained: too few samples, every measurement failed, nothing held out."""


@dataclass(frozen=True)
class Sample:
    """A kernel config and its measured latency (None when measuring or converting it failed)."""

    config: Mapping[str, Any]
    latency_ms: float | None
    device_seconds: float = 0.0
    error: str = ""


#: Measure configs of one kernel: (configs, what they are, for progress) -> one Sample per config, in order.
MeasureConfigs = Callable[[Sequence[Mapping[str, Any]], str], list[Sample]]


@dataclass(frozen=True)
class RoundScore:
    round: int
    samples: int  # measured samples (with a latency) after this round's measurements
    validation: LatencyMetrics


@dataclass
class TrainingOutcome:
    """What :func:`adaptive_training` produced for one kernel."""

    kernel: str
    regressor: KernelRegressor  # fitted on every sample
    validation: LatencyMetrics  # of the model trained without the held-out configs
    train_samples: int
    validation_samples: int
    failed: int
    device_seconds: float
    rounds: list[RoundScore] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return self.train_samples + self.validation_samples


def config_key(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True)


def held_out(config: Mapping[str, Any], fraction: float, seed: int) -> bool:
    """Whether a prior config belongs to the held-out set: a hash of config and seed, stable forever."""
    return _holdout_score(config, seed) < fraction


def _holdout_score(config: Mapping[str, Any], seed: int) -> float:
    digest = hashlib.sha256(f"{seed}/{config_key(config)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def kernel_settings(kernel: str, settings: KernelTrainingSettings) -> KernelTrainingSettings:
    """The settings ``kernel`` is sampled and trained with: a kernel after the first of its family among
    ``settings.kernels`` (in :data:`nnmeter.ops.KERNELS` order, whatever the YAML's) gets ``member_samples``
    prior configs and no adaptive rounds when pooling fits it on the whole family (see the module doc); any
    other kernel, the campaign's settings."""
    family = [k for k in ops.kernel_family(kernel) if k in settings.kernels]
    if not (pools_families(settings) and settings.member_samples and kernel in family[1:]):
        return settings
    return dataclasses.replace(settings, init_samples=min(settings.init_samples, settings.member_samples), iterations=0)


def pools_families(settings: KernelTrainingSettings) -> bool:
    return settings.pool_family and regressor_class(settings.regressor).family_aware


def prior_configs(kernel: str, settings: KernelTrainingSettings) -> list[dict]:
    """The kernel's prior sample: the same list for the same settings, on every run."""
    return sample_configs(kernel, settings.init_samples, "prior", seed=settings.seed)


def large_error_configs(
    kernel: str,
    regressor_name: str,
    configs: Sequence[Mapping[str, Any]],
    y: np.ndarray,
    settings: KernelTrainingSettings,
) -> list[Mapping[str, Any]]:
    """Training configs whose out-of-fold prediction misses by more than the thresholds, worst first."""
    X = feature_matrix(kernel, configs)
    splits = list(KFold(min(ERROR_FOLDS, len(y)), shuffle=True, random_state=settings.seed).split(X))
    # nothing is measured while the loop fits, so the folds may use every core (the same fits, ~40 % less time)
    workers = min(len(splits), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    folds = Parallel(n_jobs=workers)(
        delayed(_out_of_fold)(kernel, regressor_name, settings.seed, X, y, train, test) for train, test in splits
    )
    predicted = np.empty_like(y)
    for (_, test), fold in zip(splits, folds):
        predicted[test] = fold
    rel = np.abs(predicted - y) / y
    large = (rel > settings.error_threshold) & (np.abs(predicted - y) > settings.noise_floor_ms)
    worst = [i for i in np.argsort(-rel) if large[i]][: settings.max_refined_points]
    return [configs[i] for i in worst]


def _out_of_fold(
    kernel: str, regressor_name: str, seed: int, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> np.ndarray:
    return make_regressor(regressor_name, kernel, random_state=seed).fit(X[train], y[train]).predict(X[test])


def finegrained_configs(
    kernel: str, around: Sequence[Mapping[str, Any]], settings: KernelTrainingSettings, round_: int, known: set[str]
) -> list[dict]:
    """``finegrained_samples`` new configs around each of ``around``, none already in ``known``."""
    out: list[dict] = []
    for i, config in enumerate(around):
        seed = settings.seed * 1_000_003 + round_ * 10_007 + i
        for new in sample_configs(kernel, settings.finegrained_samples, "finegrained", seed=seed, around=config):
            key = config_key(new)
            if key not in known:
                known.add(key)
                out.append(new)
    return out


def adaptive_training(
    kernel: str,
    settings: KernelTrainingSettings,
    measure: MeasureConfigs,
    *,
    refinements: list[list[dict]] | None = None,
    save_refinements: Callable[[list[list[dict]]], None] | None = None,
    on_round: Callable[[RoundScore], None] | None = None,
) -> TrainingOutcome:
    """Run the loop of the module doc for ``kernel``; ``refinements`` are fine-grained lists planned earlier.

    ``save_refinements`` is called with every list as soon as it is planned (before
    it is measured), so that a resumed run measures the same configs.
    """
    refinements = list(refinements or [])
    regressor_name = settings.regressor
    make_regressor(regressor_name, kernel)  # a bad name fails before anything is measured
    prior = prior_configs(kernel, settings)
    if not prior:
        raise TrainingError(f"kernel {kernel}: the prior sampler gave no configs")
    samples = measure(prior, "prior samples")
    prior_keys = {config_key(c) for c in prior}
    known = set(prior_keys)
    rounds: list[RoundScore] = []
    for round_ in range(settings.iterations + 1):
        train, validation = _split(kernel, samples, prior_keys, settings)
        X_train, y_train = feature_matrix(kernel, [s.config for s in train]), _latencies(train)
        model = make_regressor(regressor_name, kernel, random_state=settings.seed).fit(X_train, y_train)
        scores = latency_metrics(
            _latencies(validation), model.predict(feature_matrix(kernel, [s.config for s in validation]))
        )
        score = RoundScore(round_, len(train) + len(validation), scores)
        rounds.append(score)
        if on_round is not None:
            on_round(score)
        reached = settings.target_accuracy < 1 and scores.acc10 >= settings.target_accuracy
        if round_ == settings.iterations or settings.finegrained_samples == 0 or reached:
            break
        if round_ < len(refinements):
            planned = refinements[round_]
        else:
            worst = large_error_configs(kernel, regressor_name, [s.config for s in train], y_train, settings)
            planned = finegrained_configs(kernel, worst, settings, round_ + 1, set(known))
            refinements.append(planned)
            if save_refinements is not None:
                save_refinements(refinements)
        known.update(config_key(c) for c in planned)
        if not planned:  # every training point is within the thresholds
            break
        samples += measure(planned, f"fine-grained round {round_ + 1}")
    train, validation = _split(kernel, samples, prior_keys, settings)
    everything = train + validation
    final = make_regressor(regressor_name, kernel, random_state=settings.seed).fit(
        feature_matrix(kernel, [s.config for s in everything]), _latencies(everything)
    )
    return TrainingOutcome(
        kernel=kernel,
        regressor=final,
        validation=rounds[-1].validation,
        train_samples=len(train),
        validation_samples=len(validation),
        failed=sum(s.latency_ms is None for s in samples),
        device_seconds=sum(s.device_seconds for s in samples),
        rounds=rounds,
    )


def _split(
    kernel: str, samples: Sequence[Sample], prior_keys: set[str], settings: KernelTrainingSettings
) -> tuple[list[Sample], list[Sample]]:
    """Measured samples split into training and held-out; a clear error when either is unusable."""
    measured = [s for s in samples if s.latency_ms is not None and s.latency_ms > 0]
    if not measured:
        first = next((s.error for s in samples if s.error), "no error text")
        raise TrainingError(
            f"kernel {kernel}: all {len(samples)} measurements failed; first error: {first}",
            "look at the failures with `nnmeter-build status WS`; check the backend with `nnmeter-build connect WS`",
        )
    validation = [
        s
        for s in measured
        if config_key(s.config) in prior_keys and held_out(s.config, settings.validation_fraction, settings.seed)
    ]
    if not validation and len(measured) > settings.min_train_samples:
        # a small budget can miss the hashed share (14 samples at 0.2: 4 % of kernels): hold out the prior
        # sample nearest to it, still by the same hash, so that the regressor is scored at all
        prior = [s for s in measured if config_key(s.config) in prior_keys]
        validation = sorted(prior, key=lambda s: _holdout_score(s.config, settings.seed))[:1]
    held = {id(s) for s in validation}
    train = [s for s in measured if id(s) not in held]
    failed = len(samples) - len(measured)
    if len(train) < settings.min_train_samples:
        raise TrainingError(
            f"kernel {kernel}: only {len(train)} measured training samples "
            f"({failed} of {len(samples)} measurements failed); "
            f"training needs at least {settings.min_train_samples}",
            "raise kernels.init_samples in campaign.yaml (or pass --init N)",
        )
    if not validation:
        raise TrainingError(
            f"kernel {kernel}: no measured held-out sample to score the regressor on",
            "raise kernels.init_samples or kernels.validation_fraction",
        )
    return train, validation


def _latencies(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.latency_ms for s in samples], dtype=np.float64)


def pooled_fit(
    kernel: str,
    family: Mapping[str, Sequence[Sample]],
    settings: KernelTrainingSettings,
) -> tuple[KernelRegressor, LatencyMetrics]:
    """``kernel``'s regressor fitted on the samples of its whole family (``family[kernel]`` are its own), and
    its score on ``kernel``'s own held-out prior configs, from a fit that saw no sample of those configs."""
    prior_keys = {config_key(c) for c in prior_configs(kernel, settings)}
    _, validation = _split(kernel, family[kernel], prior_keys, settings)
    held = {config_key(s.config) for s in validation}

    def fitted(excluded: set[str]) -> KernelRegressor:
        X, y = [], []
        for member, samples in family.items():
            kept = [s for s in samples if s.latency_ms and config_key(s.config) not in excluded]
            X.append(feature_matrix(member, [s.config for s in kept]))
            y.append(_latencies(kept))
        return make_regressor(settings.regressor, kernel, random_state=settings.seed).fit(
            np.vstack(X), np.concatenate(y)
        )

    scores = latency_metrics(
        _latencies(validation), fitted(held).predict(feature_matrix(kernel, [s.config for s in validation]))
    )
    return fitted(set()), scores

"""Kernel regressors: sample, measure, train and adaptively refine one regressor per kernel.

Per kernel (:func:`adaptive_training`):

1. draw ``init_samples`` configs from the prior (seeded: the same list on every run);
2. build, convert and measure them (the store skips what is already measured);
3. hold out a fixed share of the *prior* samples (by a hash of the config, so the
   split never changes between runs or rounds); they are never trained on and
   never used to choose new samples, so their score is an honest estimate;
4. train on the rest and score on the held-out configs;
5. find training points with a large error -- relative error above
   ``error_threshold`` and absolute error above ``noise_floor_ms`` -- from
   out-of-fold (5-fold) predictions: nn-Meter judges the points on its test split
   and then trains near them, which makes its test score optimistic;
6. draw ``finegrained_samples`` configs around each of the worst
   ``max_refined_points`` of them (nn-Meter's rule: channels in [0.4 c, 1.2 c]);
   measure them, and go back to 4 for ``iterations`` rounds, or until the
   held-out +-10 % accuracy reaches ``target_accuracy`` (easy kernels -- relu,
   add, ... -- stop after the prior sample and spend no refinement budget);
7. fit the final regressor on every sample (the held-out score is that of the
   model trained without them; more data can only help the packaged one).

Families (``pool_family``, on by default): kernels that run the same main op on
the same config (every ``conv-*``, every ``dwconv-*``, ...) differ only in what
follows it, so once the loop has run for every kernel, each kernel's packaged
regressor is fitted again on its whole family's measurements (:func:`pooled_fit`),
the ``WITH_<op>`` features telling the members apart. It is scored on the kernel's
own held-out configs, and no sample of those configs, the kernel's own or a
sibling's, is trained on for that score. So only the first kernel of a family
that the campaign trains, in ``ops.KERNELS`` order (``conv-bn-relu``,
``dwconv-bn-relu``, ...), runs the whole loop; the others draw ``member_samples``
prior configs and no fine-grained rounds (:func:`kernel_settings`): with the
family's measurements, a member's own samples only need to tell it apart, and it
costs a fraction of a full budget.

Kernels faster than ~0.05 ms: the measurement protocol keeps invoking a model
within each round until ``min_round_ms`` has passed, so a 0.01 ms kernel is
timed over hundreds of invocations per round, not one; the loop does not chase
errors smaller than ``noise_floor_ms``; and the metrics report the +-10 %
accuracy of kernels under 0.05 ms apart (:class:`~nnmeter.builder.regressors.LatencyMetrics`).

Resuming: the prior list is recomputed from the seed, the fine-grained lists are
saved in the store's state as soon as they are planned, and every measurement is
in the store; a killed run started again measures only what is missing and
trains the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from nnmeter import ops
from nnmeter.builder.regressors import (
    KernelRegressor, LatencyMetrics, latency_metrics, make_regressor, regressor_class,
)
from nnmeter.builder.settings import KernelTrainingSettings
from nnmeter.builder.store import LATENCY_READING_VERSION
from nnmeter.errors import NnmeterError
from nnmeter.predictor.features import FEATURE_SCHEMA_VERSION, feature_matrix
from nnmeter.predictor.regressor_format import FORMAT_VERSION as TREE_FORMAT_VERSION, save_ensemble

if TYPE_CHECKING:
    from nnmeter.backends.base import Backend
    from nnmeter.builder.store import ModelRecord
    from nnmeter.builder.workspace import Workspace

#: Folder of a workspace's predictor/ that holds the trained regressors until they are packaged.
TRAINED_DIR = "regressors"
#: Folds of the out-of-fold predictions that find large-error points.
ERROR_FOLDS = 5


class TrainingError(NnmeterError):
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
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def kernel_settings(kernel: str, settings: KernelTrainingSettings) -> KernelTrainingSettings:
    """The settings ``kernel`` is sampled and trained with: a kernel after the first of its family among
    ``settings.kernels`` (in :data:`nnmeter.ops.KERNELS` order, whatever the YAML's) gets ``member_samples``
    prior configs and no adaptive rounds when pooling fits it on the whole family (see the module doc); any
    other kernel, the campaign's settings."""
    family = [k for k in ops.kernel_family(kernel) if k in settings.kernels]
    if not (_pools_families(settings) and settings.member_samples and kernel in family[1:]):
        return settings
    return dataclasses.replace(settings, init_samples=min(settings.init_samples, settings.member_samples),
                               iterations=0)


def _pools_families(settings: KernelTrainingSettings) -> bool:
    return settings.pool_family and regressor_class(settings.regressor).family_aware


def prior_configs(kernel: str, settings: KernelTrainingSettings) -> list[dict]:
    from nnmeter.kernel_gen.samplers import sample_configs

    return sample_configs(kernel, settings.init_samples, "prior", seed=settings.seed)


def large_error_configs(kernel: str, regressor_name: str, configs: Sequence[Mapping[str, Any]], y: np.ndarray,
                        settings: KernelTrainingSettings) -> list[Mapping[str, Any]]:
    """Training configs whose out-of-fold prediction misses by more than the thresholds, worst first."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import KFold

    X = feature_matrix(kernel, configs)
    splits = list(KFold(min(ERROR_FOLDS, len(y)), shuffle=True, random_state=settings.seed).split(X))
    # nothing is measured while the loop fits, so the folds may use every core (the same fits, ~40 % less time)
    workers = min(len(splits), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    folds = Parallel(n_jobs=workers)(delayed(_out_of_fold)(kernel, regressor_name, settings.seed, X, y, train, test)
                                     for train, test in splits)
    predicted = np.empty_like(y)
    for (_, test), fold in zip(splits, folds):
        predicted[test] = fold
    rel = np.abs(predicted - y) / y
    large = (rel > settings.error_threshold) & (np.abs(predicted - y) > settings.noise_floor_ms)
    worst = [i for i in np.argsort(-rel) if large[i]][: settings.max_refined_points]
    return [configs[i] for i in worst]


def _out_of_fold(kernel: str, regressor_name: str, seed: int, X: np.ndarray, y: np.ndarray, train: np.ndarray,
                 test: np.ndarray) -> np.ndarray:
    return make_regressor(regressor_name, kernel, random_state=seed).fit(X[train], y[train]).predict(X[test])


def finegrained_configs(kernel: str, around: Sequence[Mapping[str, Any]], settings: KernelTrainingSettings,
                        round_: int, known: set[str]) -> list[dict]:
    """``finegrained_samples`` new configs around each of ``around``, none already in ``known``."""
    from nnmeter.kernel_gen.samplers import sample_configs

    out: list[dict] = []
    for i, config in enumerate(around):
        seed = settings.seed * 1_000_003 + round_ * 10_007 + i
        for new in sample_configs(kernel, settings.finegrained_samples, "finegrained", seed=seed, around=config):
            key = config_key(new)
            if key not in known:
                known.add(key)
                out.append(new)
    return out


def adaptive_training(kernel: str, settings: KernelTrainingSettings, measure: MeasureConfigs, *,
                      refinements: list[list[dict]] | None = None,
                      save_refinements: Callable[[list[list[dict]]], None] | None = None,
                      on_round: Callable[[RoundScore], None] | None = None) -> TrainingOutcome:
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
        scores = latency_metrics(_latencies(validation),
                                 model.predict(feature_matrix(kernel, [s.config for s in validation])))
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
        # the measured samples come back from the store too: with the new batches' drift anchors their labels
        # move a little, and every round (like a resumed run) trains on the labels as they stand now
        relabeled = iter(measure([s.config for s in samples if s.latency_ms is not None] + planned,
                                 f"fine-grained round {round_ + 1}"))
        samples = [s if s.latency_ms is None else next(relabeled) for s in samples] + list(relabeled)
    train, validation = _split(kernel, samples, prior_keys, settings)
    everything = train + validation
    final = make_regressor(regressor_name, kernel, random_state=settings.seed).fit(
        feature_matrix(kernel, [s.config for s in everything]), _latencies(everything))
    return TrainingOutcome(
        kernel=kernel, regressor=final, validation=rounds[-1].validation, train_samples=len(train),
        validation_samples=len(validation), failed=sum(s.latency_ms is None for s in samples),
        device_seconds=sum(s.device_seconds for s in samples), rounds=rounds,
    )


def _split(kernel: str, samples: Sequence[Sample], prior_keys: set[str],
           settings: KernelTrainingSettings) -> tuple[list[Sample], list[Sample]]:
    """Measured samples split into training and held-out; a clear error when either is unusable."""
    measured = [s for s in samples if s.latency_ms is not None and s.latency_ms > 0]
    if not measured:
        first = next((s.error for s in samples if s.error), "no error text")
        raise TrainingError(f"kernel {kernel}: all {len(samples)} measurements failed; first error: {first}",
                            "look at the failures with `nnmeter-build status WS`; check the backend with "
                            "`nnmeter-build connect WS`")
    validation = [s for s in measured
                  if config_key(s.config) in prior_keys and held_out(s.config, settings.validation_fraction,
                                                                     settings.seed)]
    if not validation and len(measured) > settings.min_train_samples:
        # a small budget can miss the hashed share (14 samples at 0.2: 4 % of kernels): hold out the prior
        # sample nearest to it, still by the same hash, so that the regressor is scored at all
        prior = [s for s in measured if config_key(s.config) in prior_keys]
        validation = sorted(prior, key=lambda s: _holdout_score(s.config, settings.seed))[:1]
    held = {id(s) for s in validation}
    train = [s for s in measured if id(s) not in held]
    failed = len(samples) - len(measured)
    if len(train) < settings.min_train_samples:
        raise TrainingError(f"kernel {kernel}: only {len(train)} measured training samples "
                            f"({failed} of {len(samples)} measurements failed); "
                            f"training needs at least {settings.min_train_samples}",
                            "raise kernels.init_samples in campaign.yaml (or pass --init N)")
    if not validation:
        raise TrainingError(f"kernel {kernel}: no measured held-out sample to score the regressor on",
                            "raise kernels.init_samples or kernels.validation_fraction")
    return train, validation


def _latencies(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.latency_ms for s in samples], dtype=np.float64)


def pooled_fit(kernel: str, family: Mapping[str, Sequence[Sample]], settings: KernelTrainingSettings,
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
        return make_regressor(settings.regressor, kernel, random_state=settings.seed).fit(np.vstack(X),
                                                                                           np.concatenate(y))

    scores = latency_metrics(_latencies(validation),
                             fitted(held).predict(feature_matrix(kernel, [s.config for s in validation])))
    return fitted(set()), scores


# --- on a workspace ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelResult:
    """A kernel's trained regressor as recorded in the store's state (what ``package`` reads)."""

    kernel: str
    regressor: str
    samples: int
    train_samples: int
    validation_samples: int
    failed: int
    device_seconds: float
    metrics: Mapping[str, Any]  # LatencyMetrics.to_dict() on the held-out configs
    rounds: tuple[Mapping[str, Any], ...]
    file: str  # the regressor file, relative to the workspace
    sha256: str
    feature_schema_version: int
    trained_at: float
    settings: Mapping[str, Any] = field(default_factory=dict)  # the kernels settings it was trained with
    #: measured samples per family kernel it was fitted on (:func:`pooled_fit`); empty: its own samples alone
    pooled_with: Mapping[str, int] = field(default_factory=dict)

    @property
    def family_samples(self) -> int:
        """Samples of the other kernels of its family that its regressor was fitted on, too."""
        return sum(n for k, n in self.pooled_with.items() if k != self.kernel)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "KernelResult":
        """From :meth:`to_dict`; a result stored before a field existed gets the field's default."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def setup_key(device: str, backend: str, protocol_key: str) -> str:
    return f"{backend}|{device}|{protocol_key}"


def state_key(kind: str, setup: str, kernel: str) -> str:
    return f"kernels/{kind}/{setup}/{kernel}"


#: State key of the device/backend/protocol the latest training ran on (``package`` reads it).
LATEST_SETUP_KEY = "kernels/latest-setup"


def workspace_measure(ws: "Workspace", backend: "Backend", kernel: str, workers: int | None = None,
                      progress: "_Progress | None" = None) -> MeasureConfigs:
    """Measure configs of ``kernel`` through the workspace: build, convert, measure, all kept in its store.

    Without ``progress`` (a :class:`_Progress` with a task for ``kernel``), one rich bar per step.
    """
    from nnmeter.builder.measuring import measure_models
    from nnmeter.builder.models import kernel_spec, prepare_models, spec_model_id

    protocol = ws.campaign.protocol
    keep_files = ws.campaign.kernels.keep_models
    progress = progress or _Progress(None, [kernel], bars=False)

    def measure(configs: Sequence[Mapping[str, Any]], what: str) -> list[Sample]:
        specs = [kernel_spec(kernel, c) for c in configs]
        ids = [spec_model_id(backend, s) for s in specs]
        # measured models are not built again: their files may be gone (keep_models), their records are not
        records = _measured_records(ws, backend, kernel, ids)
        done = set(records)
        todo = [s for s, i in zip(specs, ids) if i not in done]
        progress.phase(kernel, f"converting {what}", len(todo))
        prepared = {p.id: p for p in prepare_models(ws, backend, todo, workers, progress=progress.callback(kernel))}
        records.update((i, p.record) for i, p in prepared.items() if p.ok)
        progress.phase(kernel, f"measuring {what}", len(records) - len(done))
        measured = measure_models(ws.store, backend, list(records.values()), protocol, workspace_root=ws.root,
                                  progress=progress.callback(kernel)) if records else []
        by_id = {m.model_id: m for m in measured}
        if not keep_files:
            _remove_measured_files(ws, backend, [records[m.model_id] for m in measured
                                                 if m.model_id not in done and m.latency_ms is not None])
        samples = []
        for config, mid in zip(configs, ids):
            m = by_id.get(mid)
            if m is None:
                samples.append(Sample(config, None, 0.0, prepared[mid].error or "not converted"))
            else:
                samples.append(Sample(config, m.latency_ms, m.device_seconds, m.error))
        return samples

    return measure


def _measured_records(ws: "Workspace", backend: "Backend", kernel: str, ids: Sequence[str]) -> dict[str, "ModelRecord"]:
    """The records of the models among ``ids`` that have a measurement on this device, backend and protocol."""
    measured = ws.store.measured_ids(backend.device_info.device, backend.name, ws.campaign.protocol.key(),
                                     kind="kernel", name=kernel)
    return {i: ws.store.get_model(i) for i in ids if i in measured}


def _stored_samples(ws: "Workspace", backend: "Backend", kernel: str, settings: KernelTrainingSettings,
                    setup: str) -> list[Sample]:
    """The measured samples of ``kernel``'s training plan (its prior and saved fine-grained lists), read from
    the store: nothing is built or measured."""
    from nnmeter.builder.measuring import measure_models
    from nnmeter.builder.models import kernel_spec, spec_model_id

    refined = _saved_refinements(ws, setup, kernel, settings)
    configs = {config_key(c): c for c in prior_configs(kernel, settings) + [c for r in refined for c in r]}
    ids = {spec_model_id(backend, kernel_spec(kernel, c)): c for c in configs.values()}
    records = _measured_records(ws, backend, kernel, list(ids))
    measured = measure_models(ws.store, backend, list(records.values()), ws.campaign.protocol,
                              workspace_root=ws.root, progress=lambda *_: None) if records else []
    return [Sample(ids[m.model_id], m.latency_ms, m.device_seconds, m.error) for m in measured
            if m.latency_ms is not None]


def _pool_families(ws: "Workspace", backend: "Backend", results: Sequence[KernelResult],
                   settings: KernelTrainingSettings, setup: str, progress: "_Progress") -> list[KernelResult]:
    """``results`` with each kernel's regressor fitted again on its family's measurements (:func:`pooled_fit`);
    a kernel whose family has no other measured kernel, or was fitted on these samples already, is kept."""
    from nnmeter.predictor.artifact import sha256_file

    stored: dict[str, list[Sample]] = {}

    def samples(kernel: str) -> list[Sample]:
        if kernel not in stored:
            stored[kernel] = _stored_samples(ws, backend, kernel, kernel_settings(kernel, settings), setup)
        return stored[kernel]

    out = []
    for result in results:
        kernel = result.kernel
        members = ops.kernel_family(kernel)
        family = {k: s for k in members if (s := samples(k))} if len(members) > 1 else {}
        counts = {k: len(s) for k, s in family.items()}
        if len(family) < 2 or kernel not in family or dict(result.pooled_with) == counts:
            out.append(result)
            continue
        progress.phase(kernel, f"fitting on its family ({sum(counts.values())})", 1)
        regressor, scores = pooled_fit(kernel, family, kernel_settings(kernel, settings))
        path = save_ensemble(regressor.to_ensemble(), ws.root / result.file)
        pooled = dataclasses.replace(result, metrics=scores.to_dict(), sha256=sha256_file(path), pooled_with=counts,
                                     trained_at=time.time())
        ws.store.set_state(state_key("result", setup, kernel), pooled.to_dict())
        progress.done(kernel, pooled)
        out.append(pooled)
    return out


def _remove_measured_files(ws: "Workspace", backend: "Backend", records: Sequence["ModelRecord"]) -> None:
    """Delete the converted files of measured kernel models; the store keeps their records and measurements,
    and :func:`~nnmeter.builder.models.prepare_models` rebuilds a file from its config if it is needed again."""
    for record in records:
        path = record.path(backend.model_format, ws.root)
        if path is not None:
            path.unlink(missing_ok=True)


def train_workspace_kernels(ws: "Workspace", kernels: Sequence[str] | None = None, *, init: int | None = None,
                            iterations: int | None = None, workers: int | None = None, console: Any = None,
                            ) -> tuple[list[KernelResult], dict[str, str]]:
    """Train the campaign's kernels that the device forms (:func:`kernels_to_train`), or ``kernels``, on its
    backend; results and errors per kernel.

    A kernel that cannot be trained (:class:`TrainingError`) is reported in the
    errors and the others go on.
    """
    settings = ws.campaign.kernels
    overrides = {k: v for k, v in (("init_samples", init), ("iterations", iterations)) if v is not None}
    if overrides:  # a budget given on the command line is every named kernel's, family members' too
        settings = dataclasses.replace(settings, **overrides, member_samples=0)
    if not kernels:  # a family's first kernel that the device forms leads it (kernel_settings)
        settings = dataclasses.replace(settings, kernels=kernels_to_train(ws)[0])
    names = list(kernels) if kernels else list(settings.kernels)
    for k in names:
        if k not in ops.KERNELS:
            raise NnmeterError(f"{k!r} is not a kernel; known: {', '.join(ops.KERNELS)}",
                               "list them with `nnmeter-build kernels`")
    backend = ws.connect()
    try:
        info = backend.device_info
        protocol = ws.campaign.protocol
        setup = setup_key(info.device, backend.name, protocol.key())
        ws.store.set_state(LATEST_SETUP_KEY, {
            "setup": setup, "backend": backend.name, "protocol_key": protocol.key(),
            "protocol": dataclasses.asdict(protocol), "device": _device_dict(info)})
        results, errors = [], {}
        with _Progress(console, names) as progress:
            for kernel in names:
                try:
                    results.append(_train_one(ws, backend, kernel, kernel_settings(kernel, settings), setup,
                                              progress, workers))
                except TrainingError as err:
                    errors[kernel] = str(err)
                    progress.failed(kernel, err.message)
            if _pools_families(settings):
                results = _pool_families(ws, backend, results, settings, setup, progress)
    finally:
        backend.close()
    return results, errors


def kernels_to_train(ws: "Workspace") -> tuple[list[str], dict[str, str]]:
    """The campaign's kernels that the device's measured fusion rules form, and the others with why not. A model
    is cut into kernels only across fused op pairs, so a kernel type with an unfused pair in it (conv-bn-hswish
    where conv -> hswish runs as two kernels) is never predicted on this device, and training it would spend
    device time on a regressor no prediction uses. Without measured rules every campaign kernel is kept."""
    from nnmeter.predictor.detection import unfused_pairs
    from nnmeter.predictor.rules import load_rules

    names = list(ws.campaign.kernels.kernels)
    if not ws.rules_file.is_file():
        return names, {}
    rules = load_rules(ws.rules_file)
    unformed = {k: ", ".join(f"{a} -> {b}" for a, b in pairs) + " not fused"
                for k in names if (pairs := unfused_pairs(k, rules))}
    return [k for k in names if k not in unformed], unformed


def _train_one(ws: "Workspace", backend: "Backend", kernel: str, settings: KernelTrainingSettings, setup: str,
               progress: "_Progress", workers: int | None) -> KernelResult:
    store = ws.store
    stored = store.get_state(state_key("result", setup, kernel))
    finished = None if stored is None else KernelResult.from_dict(stored)
    if finished is not None and _up_to_date(ws, finished, kernel, settings):  # a resumed run: not trained again
        progress.done(kernel, finished)
        return finished
    plan_key = state_key("plan", setup, kernel)
    outcome = adaptive_training(
        kernel, settings, workspace_measure(ws, backend, kernel, workers, progress),
        refinements=_saved_refinements(ws, setup, kernel, settings),
        save_refinements=lambda r: store.set_state(plan_key, {"settings": _plan_settings(kernel, settings),
                                                              "refinements": r}),
        on_round=lambda score: progress.scored(kernel, score),
    )
    out_dir = ws.models_dir / TRAINED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_ensemble(outcome.regressor.to_ensemble(), out_dir / f"{kernel}.npz")
    from nnmeter.predictor.artifact import sha256_file

    result = KernelResult(
        kernel=kernel, regressor=settings.regressor, samples=outcome.samples,
        train_samples=outcome.train_samples, validation_samples=outcome.validation_samples, failed=outcome.failed,
        device_seconds=outcome.device_seconds, metrics=outcome.validation.to_dict(),
        rounds=tuple({"round": r.round, "samples": r.samples, **r.validation.to_dict()} for r in outcome.rounds),
        file=path.relative_to(ws.root).as_posix(), sha256=sha256_file(path),
        feature_schema_version=FEATURE_SCHEMA_VERSION, trained_at=time.time(),
        settings=_result_settings(kernel, settings),
    )
    store.set_state(state_key("result", setup, kernel), result.to_dict())
    progress.done(kernel, result)
    return result


def trainer_version(settings: KernelTrainingSettings) -> dict[str, Any]:
    """What trained regressors depend on besides the campaign's settings and the store: the regressor's
    parameters, how measurements are read into labels, the feature schema and the tree format. A new version
    of nnmeter that changes any of them trains the kernels again (what the store holds is not measured
    again)."""
    params = regressor_class(settings.regressor)(kernel="").get_params()
    del params["kernel"]
    return {"regressor_params": params, "latency_reading": LATENCY_READING_VERSION,
            "feature_schema": FEATURE_SCHEMA_VERSION, "tree_format": TREE_FORMAT_VERSION}


def _result_settings(kernel: str, settings: KernelTrainingSettings) -> dict[str, Any]:
    """The settings a trained kernel depends on (all but which kernels to train and whether to keep files), its
    prior list and :func:`trainer_version`."""
    return {**{k: v for k, v in dataclasses.asdict(settings).items() if k not in ("kernels", "keep_models")},
            **trainer_version(settings), "prior": _prior_digest(kernel, settings)}


def _up_to_date(ws: "Workspace", result: KernelResult, kernel: str, settings: KernelTrainingSettings) -> bool:
    """Whether ``result`` was trained with these settings, prior and feature schema, and its file is intact."""
    from nnmeter.predictor.artifact import sha256_file

    path = ws.root / result.file
    return (result.settings == _result_settings(kernel, settings)
            and result.feature_schema_version == FEATURE_SCHEMA_VERSION
            and path.is_file() and sha256_file(path) == result.sha256)


def _saved_refinements(ws: "Workspace", setup: str, kernel: str, settings: KernelTrainingSettings) -> list[list[dict]]:
    """The fine-grained lists planned for ``kernel`` under these settings (none when they were planned under
    others)."""
    plan = ws.store.get_state(state_key("plan", setup, kernel), {})
    return plan.get("refinements", []) if plan.get("settings") == _plan_settings(kernel, settings) else []


def _plan_settings(kernel: str, settings: KernelTrainingSettings) -> dict[str, Any]:
    """The settings and prior list a saved fine-grained plan depends on; another value makes the loop plan anew."""
    keys = ("init_samples", "finegrained_samples", "error_threshold", "noise_floor_ms", "max_refined_points",
            "regressor", "validation_fraction", "seed")
    return {**{k: getattr(settings, k) for k in keys}, "prior": _prior_digest(kernel, settings)}


def _prior_digest(kernel: str, settings: KernelTrainingSettings) -> str:
    """A digest of ``kernel``'s prior list: another sampler or prior table (a new nnmeter) plans and trains anew."""
    keys = "\n".join(config_key(c) for c in prior_configs(kernel, settings))
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def _device_dict(info: Any) -> dict[str, Any]:
    return {"id": info.device, "description": info.description, "runtime": info.runtime,
            "runtime_versions": dict(info.runtime_versions), "facts": dict(info.facts)}


def trained_kernels(ws: "Workspace") -> tuple[Mapping[str, Any] | None, list[KernelResult]]:
    """The latest training setup (device, backend, protocol) and the kernels trained under it."""
    latest = ws.store.get_state(LATEST_SETUP_KEY)
    if latest is None:
        return None, []
    results = []
    for kernel in ops.KERNELS:
        data = ws.store.get_state(state_key("result", latest["setup"], kernel))
        if data is not None:
            results.append(KernelResult.from_dict(data))
    return latest, results


def results_table(results: Sequence[KernelResult], errors: Mapping[str, str] | None = None) -> Any:
    """The final rich table: kernel, samples, RMSE, RMSPE, +-5 %, +-10 % (held-out), regressor."""
    from rich.table import Table

    table = Table(title="kernel regressors (scores on held-out prior configs)")
    for col in ("kernel", "samples", "RMSE ms", "RMSPE %", "±5 %", "±10 %", "±10 % <0.05 ms", "device min",
                "regressor"):
        table.add_column(col, justify="left" if col in ("kernel", "regressor") else "right")
    for r in results:
        m = r.metrics
        fast = "-" if m["acc10_fast"] is None else f"{100 * m['acc10_fast']:.0f} % of {m['fast']}"
        table.add_row(r.kernel, f"{r.samples}" + (f" ({r.failed} failed)" if r.failed else "")
                      + (f" + {r.family_samples} family" if r.family_samples else ""),
                      f"{m['rmse_ms']:.4f}", f"{m['rmspe']:.1f}", f"{100 * m['acc5']:.1f}",
                      f"{100 * m['acc10']:.1f}", fast, f"{r.device_seconds / 60:.1f}", r.regressor)
    for kernel, message in (errors or {}).items():
        table.add_row(kernel, "-", "-", "-", "-", "-", "-", "-", f"[red]{message.splitlines()[0]}[/red]")
    return table


class _Progress:
    """A rich progress bar per kernel: its phase, samples measured, current held-out accuracy.

    With ``bars=False`` it shows nothing and lets each step draw its own bar (measuring does). On a
    console that is not a terminal (a log file, CI), where a bar shows only its last state once the
    whole step is over, hours later for a phone's campaign, it writes one line per round and per
    kernel instead, and the steps draw their own bars, each written when it ends.
    """

    def __init__(self, console: Any, kernels: Sequence[str], bars: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._console = console or Console()
        live = bars and self._console.is_terminal
        self._lines = bars and not live
        self._bar = Progress(TextColumn("{task.fields[kernel]:<16}"), TextColumn("{task.description:<32}"),
                             BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[score]}"),
                             TimeElapsedColumn(), console=self._console, disable=not live)
        self._enabled = live
        self._tasks = {k: self._bar.add_task("waiting", total=None, kernel=k, score="", start=False)
                       for k in kernels}

    def __enter__(self) -> "_Progress":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def _line(self, text: str, style: str | None = None) -> None:
        if self._lines:
            self._console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def phase(self, kernel: str, description: str, total: int) -> None:
        task = self._tasks[kernel]
        self._bar.start_task(task)
        self._bar.update(task, description=description, total=total, completed=0)

    def callback(self, kernel: str) -> Callable[[int, int], None] | None:
        """A ``(done, total)`` callback advancing ``kernel``'s bar; None when the steps draw their own."""
        if not self._enabled:
            return None
        return lambda done, total: self._bar.update(self._tasks[kernel], completed=done, total=total)

    def scored(self, kernel: str, score: RoundScore) -> None:
        text = f"round {score.round}: {score.samples} samples, ±10 % {100 * score.validation.acc10:.1f} %"
        self._bar.update(self._tasks[kernel], score=text)
        self._line(f"{kernel}: {text} of its held-out configs")

    def done(self, kernel: str, result: KernelResult) -> None:
        self._bar.update(self._tasks[kernel], description="done", total=1, completed=1)
        family = result.family_samples
        self._line(f"{kernel}: done: {result.samples} samples" + (f" + {family} of its family" if family else "")
                   + f", ±10 % {100 * result.metrics['acc10']:.1f} % of its held-out configs, "
                   f"{result.device_seconds / 60:.1f} device min")

    def failed(self, kernel: str, message: str) -> None:
        self._bar.update(self._tasks[kernel], description="[red]failed[/red]", total=1, completed=0,
                         score=message.splitlines()[0][:60])
        self._line(f"{kernel}: failed: {message.splitlines()[0]}", style="red")


__all__ = ["KernelResult", "MeasureConfigs", "RoundScore", "Sample", "TrainingError", "TrainingOutcome",
           "adaptive_training", "held_out", "kernel_settings", "kernels_to_train", "large_error_configs",
           "finegrained_configs", "pooled_fit", "prior_configs", "results_table", "train_workspace_kernels",
           "trained_kernels", "workspace_measure"]

"""The kernels step on a workspace: sample, measure and train one regressor per kernel, resumably.

:func:`train_workspace_kernels` runs :func:`nnmeter.training.adaptive_training` for each kernel the device's
measured fusion rules form (:func:`kernels_to_train`), measuring through the workspace's store, then fits
each kernel's regressor on its family's measurements (``kernels.pool_family``). Results go to the store's
state as soon as a kernel is done.

Resuming: the prior list is recomputed from the seed, the fine-grained lists are saved in the store's
state as soon as they are planned, and every measurement is in the store; a killed run started again
measures only what is missing and trains the same data to the same regressor files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from nnmeter import ops
from nnmeter.backends.base import DeviceInfo
from nnmeter.builder import state
from nnmeter.builder.workspace import Workspace
from nnmeter.errors import NnmeterError
from nnmeter.measurement import LATENCY_READING_VERSION, MeasuringSession, ModelRecord, kernel_spec, spec_model_id
from nnmeter.predictor.artifact import sha256_file
from nnmeter.predictor.detection import unfused_pairs
from nnmeter.predictor.features import FEATURE_SCHEMA_VERSION
from nnmeter.predictor.regressor_format import FORMAT_VERSION as TREE_FORMAT_VERSION
from nnmeter.predictor.regressor_format import save_ensemble
from nnmeter.predictor.rules import load_rules
from nnmeter.progress import SILENT, Reporter, Task
from nnmeter.training import (
    KernelTrainingSettings,
    LatencyMetrics,
    MeasureConfigs,
    RoundScore,
    Sample,
    TrainingError,
    adaptive_training,
    config_key,
    kernel_settings,
    pooled_fit,
    pools_families,
    prior_configs,
    regressor_class,
)

#: Folder of a workspace's models/ that holds the trained regressors until they are packaged.
TRAINED_DIR = "regressors"


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
    metrics: LatencyMetrics  # on the kernel's held-out configs
    rounds: tuple[RoundScore, ...]
    file: str  # the regressor file, relative to the workspace
    sha256: str
    feature_schema_version: int
    trained_at: float
    settings: Mapping[str, Any] = field(default_factory=dict)  # what it was trained with (_result_settings)
    #: measured samples per family kernel it was fitted on (:func:`pooled_fit`); empty: its own samples alone
    pooled_with: Mapping[str, int] = field(default_factory=dict)

    @property
    def family_samples(self) -> int:
        """Samples of the other kernels of its family that its regressor was fitted on, too."""
        return sum(n for k, n in self.pooled_with.items() if k != self.kernel)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rounds"] = [{"round": r.round, "samples": r.samples, **r.validation.to_dict()} for r in self.rounds]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelResult:
        """From :meth:`to_dict`; a result stored before a field existed gets the field's default."""
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["metrics"] = LatencyMetrics.from_dict(data["metrics"])
        values["rounds"] = tuple(
            RoundScore(r["round"], r["samples"], LatencyMetrics.from_dict(r)) for r in data["rounds"]
        )
        return cls(**values)


@dataclass(frozen=True)
class KernelTraining:
    """What the kernels step did: the trained kernels, the ones that failed (kernel -> why), and the campaign
    kernels left out because the device's rules never form them (kernel -> which pairs are not fused)."""

    results: tuple[KernelResult, ...]
    errors: Mapping[str, str]
    unformed: Mapping[str, str]


def train_workspace_kernels(
    ws: Workspace,
    kernels: Sequence[str] | None = None,
    *,
    init: int | None = None,
    iterations: int | None = None,
    workers: int | None = None,
    reporter: Reporter = SILENT,
) -> KernelTraining:
    """Train the campaign's kernels that the device forms (:func:`kernels_to_train`), or ``kernels`` whether it
    forms them or not, on the campaign's backend. A kernel that cannot be trained (:class:`TrainingError`) is
    reported in the errors and the others go on. ``init`` and ``iterations`` override the campaign's budget
    for every kernel, family members' too. Holds the workspace's lock."""
    with ws.lock():
        return _train_kernels(ws, kernels, init, iterations, workers, reporter)


def _train_kernels(
    ws: Workspace,
    kernels: Sequence[str] | None,
    init: int | None,
    iterations: int | None,
    workers: int | None,
    reporter: Reporter,
) -> KernelTraining:
    settings = ws.campaign.kernels
    overrides = {k: v for k, v in (("init_samples", init), ("iterations", iterations)) if v is not None}
    if overrides:
        settings = dataclasses.replace(settings, **overrides, member_samples=0)
    formed, unformed = kernels_to_train(ws)
    if not kernels:  # a family's first kernel that the device forms leads it (kernel_settings)
        settings = dataclasses.replace(settings, kernels=formed)
    names = list(kernels) if kernels else list(settings.kernels)
    for k in names:
        if k not in ops.KERNELS:
            raise NnmeterError(
                f"{k!r} is not a kernel; known: {', '.join(ops.KERNELS)}", "list them with `nnmeter-build kernels`"
            )
    results: list[KernelResult] = []
    errors: dict[str, str] = {}
    with ws.connect() as backend:
        session = ws.session(backend, workers=workers, reporter=reporter)
        info = backend.device_info
        assert info is not None
        setup = state.setup_key(info.device, backend.name, session.protocol.key())
        ws.store.set_state(
            state.LATEST_TRAINING,
            {
                "setup": setup,
                "backend": backend.name,
                "protocol_key": session.protocol.key(),
                "protocol": dataclasses.asdict(session.protocol),
                "device": _device_dict(info),
            },
        )
        for kernel in names:
            task = reporter.task("waiting", label=kernel)
            try:
                results.append(_train_one(ws, session, kernel, kernel_settings(kernel, settings), setup, task))
            except TrainingError as err:
                errors[kernel] = str(err)
                task.finish(f"failed: {err.message.splitlines()[0]}", failed=True)
        if pools_families(settings):
            results = _pool_families(ws, session, results, settings, setup)
    return KernelTraining(tuple(results), errors, {} if kernels else unformed)


def kernels_to_train(ws: Workspace) -> tuple[list[str], dict[str, str]]:
    """The campaign's kernels that the device's measured fusion rules form, and the others with why not. A model
    is cut into kernels only across fused op pairs, so a kernel type with an unfused pair in it (conv-bn-hswish
    where conv -> hswish runs as two kernels) is never predicted on this device. Without measured rules every
    campaign kernel is kept."""
    names = list(ws.campaign.kernels.kernels)
    if not ws.rules_file.is_file():
        return names, {}
    rules = load_rules(ws.rules_file)
    unformed = {
        k: ", ".join(f"{a} -> {b}" for a, b in pairs) + " not fused"
        for k in names
        if (pairs := unfused_pairs(k, rules))
    }
    return [k for k in names if k not in unformed], unformed


def trained_kernels(ws: Workspace) -> tuple[Mapping[str, Any] | None, list[KernelResult]]:
    """The latest training setup (device, backend, protocol) and the kernels trained under it."""
    latest = ws.store.get_state(state.LATEST_TRAINING)
    if latest is None:
        return None, []
    results = []
    for kernel in ops.KERNELS:
        data = ws.store.get_state(state.kernel_result_key(latest["setup"], kernel))
        if data is not None:
            results.append(KernelResult.from_dict(data))
    return latest, results


def trainer_version(settings: KernelTrainingSettings) -> dict[str, Any]:
    """What trained regressors depend on besides the campaign's settings and the store: the regressor's
    parameters, how measurements are read into labels, the feature schema and the tree format. A new nnmeter
    that changes any of them trains the kernels again (measuring nothing again)."""
    params = regressor_class(settings.regressor)(kernel="").get_params()
    del params["kernel"]
    return {
        "regressor_params": params,
        "latency_reading": LATENCY_READING_VERSION,
        "feature_schema": FEATURE_SCHEMA_VERSION,
        "tree_format": TREE_FORMAT_VERSION,
    }


def workspace_measure(
    ws: Workspace,
    session: MeasuringSession,
    kernel: str,
    task: Task | None = None,
) -> MeasureConfigs:
    """Measure configs of ``kernel`` in ``session``: build, convert, measure, all kept in the workspace's store;
    converted files are deleted once measured unless ``kernels.keep_models``. ``task`` shows each call's
    phase and counts."""
    keep_files = ws.campaign.kernels.keep_models
    task = task or Task()

    def measure(configs: Sequence[Mapping[str, Any]], what: str) -> list[Sample]:
        specs = [kernel_spec(kernel, c) for c in configs]
        ids = [spec_model_id(session.backend, s) for s in specs]
        # measured models are not built again: their files may be gone (keep_models), their records are not
        records = _measured_records(session, kernel, ids)
        done = set(records)
        todo = [s for s, i in zip(specs, ids) if i not in done]
        task.describe(f"converting {what}", len(todo))
        prepared = {p.id: p for p in session.prepare(todo, progress=task.update)}
        records.update((i, p.record) for i, p in prepared.items() if p.record is not None and p.ok)
        task.describe(f"measuring {what}", len(records) - len(done))
        measured = session.measure(list(records.values()), progress=task.update) if records else []
        by_id = {m.model_id: m for m in measured}
        if not keep_files:
            _remove_measured_files(
                session, [records[m.model_id] for m in measured if m.model_id not in done and m.latency_ms is not None]
            )
        samples = []
        for config, mid in zip(configs, ids):
            m = by_id.get(mid)
            if m is None:
                samples.append(Sample(config, None, 0.0, prepared[mid].error or "not converted"))
            else:
                samples.append(Sample(config, m.latency_ms, m.device_seconds, m.error))
        return samples

    return measure


def _train_one(
    ws: Workspace, session: MeasuringSession, kernel: str, settings: KernelTrainingSettings, setup: str, task: Task
) -> KernelResult:
    store = ws.store
    stored = store.get_state(state.kernel_result_key(setup, kernel))
    finished = None if stored is None else KernelResult.from_dict(stored)
    if finished is not None and _up_to_date(ws, finished, kernel, settings):  # a resumed run: not trained again
        task.finish(_done_text(finished))
        return finished
    plan_key = state.kernel_plan_key(setup, kernel)
    outcome = adaptive_training(
        kernel,
        settings,
        workspace_measure(ws, session, kernel, task),
        refinements=_saved_refinements(ws, setup, kernel, settings),
        save_refinements=lambda r: store.set_state(
            plan_key, {"settings": _plan_settings(kernel, settings), "refinements": r}
        ),
        on_round=lambda score: task.status(
            f"round {score.round}: {score.samples} samples, "
            f"±10 % {100 * score.validation.acc10:.1f} % of its held-out configs"
        ),
    )
    out_dir = ws.models_dir / TRAINED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_ensemble(outcome.regressor.to_ensemble(), out_dir / f"{kernel}.npz")
    result = KernelResult(
        kernel=kernel,
        regressor=settings.regressor,
        samples=outcome.samples,
        train_samples=outcome.train_samples,
        validation_samples=outcome.validation_samples,
        failed=outcome.failed,
        device_seconds=outcome.device_seconds,
        metrics=outcome.validation,
        rounds=tuple(outcome.rounds),
        file=path.relative_to(ws.root).as_posix(),
        sha256=sha256_file(path),
        feature_schema_version=FEATURE_SCHEMA_VERSION,
        trained_at=time.time(),
        settings=_result_settings(kernel, settings),
    )
    store.set_state(state.kernel_result_key(setup, kernel), result.to_dict())
    task.finish(_done_text(result))
    return result


def _done_text(result: KernelResult) -> str:
    family = result.family_samples
    return (
        f"done: {result.samples} samples"
        + (f" + {family} of its family" if family else "")
        + f", ±10 % {100 * result.metrics.acc10:.1f} % of its held-out configs, "
        f"{result.device_seconds / 60:.1f} device min"
    )


def _pool_families(
    ws: Workspace,
    session: MeasuringSession,
    results: Sequence[KernelResult],
    settings: KernelTrainingSettings,
    setup: str,
) -> list[KernelResult]:
    """``results`` with each kernel's regressor fitted again on its family's measurements (:func:`pooled_fit`);
    a kernel whose family has no other measured kernel, or was fitted on these samples already, is kept."""
    stored: dict[str, list[Sample]] = {}

    def samples(kernel: str) -> list[Sample]:
        if kernel not in stored:
            stored[kernel] = _stored_samples(ws, session, kernel, kernel_settings(kernel, settings), setup)
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
        with session.reporter.task(f"fitting on its family ({sum(counts.values())} samples)", 1, label=kernel) as task:
            regressor, scores = pooled_fit(kernel, family, kernel_settings(kernel, settings))
            path = save_ensemble(regressor.to_ensemble(), ws.root / result.file)
            pooled = dataclasses.replace(
                result, metrics=scores, sha256=sha256_file(path), pooled_with=counts, trained_at=time.time()
            )
            ws.store.set_state(state.kernel_result_key(setup, kernel), pooled.to_dict())
            task.finish(_done_text(pooled))
        out.append(pooled)
    return out


def _measured_records(session: MeasuringSession, kernel: str, ids: Sequence[str]) -> dict[str, ModelRecord]:
    """The records of the models among ``ids`` that have a measurement on this device, backend and protocol."""
    store = session.store
    measured = store.measured_ids(
        session.device, session.backend.name, session.protocol.key(), kind="kernel", name=kernel
    )
    return {i: record for i in ids if i in measured and (record := store.get_model(i)) is not None}


def _stored_samples(
    ws: Workspace, session: MeasuringSession, kernel: str, settings: KernelTrainingSettings, setup: str
) -> list[Sample]:
    """The measured samples of ``kernel``'s training plan (its prior and saved fine-grained lists), read from
    the store: nothing is built or measured."""
    refined = _saved_refinements(ws, setup, kernel, settings)
    configs = {config_key(c): c for c in prior_configs(kernel, settings) + [c for r in refined for c in r]}
    ids = {spec_model_id(session.backend, kernel_spec(kernel, c)): c for c in configs.values()}
    records = _measured_records(session, kernel, list(ids))
    measured = session.measure(list(records.values()), progress=lambda *_: None) if records else []
    return [
        Sample(ids[m.model_id], m.latency_ms, m.device_seconds, m.error) for m in measured if m.latency_ms is not None
    ]


def _remove_measured_files(session: MeasuringSession, records: Sequence[ModelRecord]) -> list[str]:
    """Delete the converted files of measured kernel models; the store keeps their records and measurements,
    and the session rebuilds a file from its config if it is needed again.

    A path comes from the store, which is only a file: a record whose path does not resolve inside the
    workspace's models/ folder (``../../x``, an absolute path, a link out of it) is not deleted but skipped,
    with a warning; the paths skipped."""
    models = (Path(session.root) / "models").resolve()
    skipped = []
    for record in records:
        path = record.path(session.backend.model_format, session.root)
        if path is None:
            continue
        resolved = path.resolve()
        if resolved == models or not resolved.is_relative_to(models):
            rel = record.files.get(session.backend.model_format)
            skipped.append(str(rel))
            session.reporter.note(
                f"model {record.id} ({record.name}): its file {rel!r} in the store is outside {models}; "
                "not deleted (check the store: nnmeter writes its models under models/)",
                warning=True,
            )
            continue
        path.unlink(missing_ok=True)
    return skipped


def _result_settings(kernel: str, settings: KernelTrainingSettings) -> dict[str, Any]:
    """The settings a trained kernel depends on (all but which kernels to train and whether to keep files), its
    prior list and :func:`trainer_version`."""
    return {
        **{k: v for k, v in dataclasses.asdict(settings).items() if k not in ("kernels", "keep_models")},
        **trainer_version(settings),
        "prior": _prior_digest(kernel, settings),
    }


def _up_to_date(ws: Workspace, result: KernelResult, kernel: str, settings: KernelTrainingSettings) -> bool:
    """Whether ``result`` was trained with these settings, prior and feature schema, and its file is intact."""
    path = ws.root / result.file
    return (
        result.settings == _result_settings(kernel, settings)
        and result.feature_schema_version == FEATURE_SCHEMA_VERSION
        and path.is_file()
        and sha256_file(path) == result.sha256
    )


def _saved_refinements(
    ws: Workspace,
    setup: str,
    kernel: str,
    settings: KernelTrainingSettings,
) -> list[list[dict]]:
    """The fine-grained lists planned for ``kernel`` under these settings (none when planned under others)."""
    plan = ws.store.get_state(state.kernel_plan_key(setup, kernel), {})
    return plan.get("refinements", []) if plan.get("settings") == _plan_settings(kernel, settings) else []


def _plan_settings(kernel: str, settings: KernelTrainingSettings) -> dict[str, Any]:
    """The settings and prior list a saved fine-grained plan depends on; another value makes the loop plan anew."""
    keys = (
        "init_samples",
        "finegrained_samples",
        "error_threshold",
        "noise_floor_ms",
        "max_refined_points",
        "regressor",
        "validation_fraction",
        "seed",
    )
    return {**{k: getattr(settings, k) for k in keys}, "prior": _prior_digest(kernel, settings)}


def _prior_digest(kernel: str, settings: KernelTrainingSettings) -> str:
    """A digest of ``kernel``'s prior list: another sampler or prior table (a new nnmeter) plans and trains anew."""
    keys = "\n".join(config_key(c) for c in prior_configs(kernel, settings))
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def _device_dict(info: DeviceInfo) -> dict[str, Any]:
    return {
        "id": info.device,
        "description": info.description,
        "runtime": info.runtime,
        "runtime_versions": dict(info.runtime_versions),
        "facts": dict(info.facts),
    }

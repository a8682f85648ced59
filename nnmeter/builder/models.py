"""The one path from model specs to converted models recorded in the workspace store.

Every part that needs generated models (``sample``, the rule tester, kernel
training, evaluation) calls :func:`prepare_models`. A model's id is the content
hash of its kind, name, config, the backend's model format and the converter
version (:func:`nnmeter.kernel_gen.cache.model_id`); a model whose store record
already has its file on disk is never rebuilt. The others are converted as one
batch by ``backend.convert`` (parallel worker processes, off the measuring
cores) and recorded in the store as soon as the batch is done; a failed
conversion is a result with its error text, not an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nnmeter.backends.base import Backend, ConversionJob, ModelFile, ProgressCallback
from nnmeter.backends.converters import converter_version
from nnmeter.builder.store import ModelRecord, Store
from nnmeter.builder.workspace import Workspace
from nnmeter.kernel_gen.cache import model_dir, model_id


@dataclass(frozen=True)
class ModelSpec:
    """A model to generate: ``build(*build_args)`` (module-level, picklable) returns the Keras model.

    ``kind`` is a store model kind ('kernel', 'rule-case', ...), ``name`` the kernel
    or test case, ``config`` what identifies the model (JSON-serialisable).
    """

    kind: str
    name: str
    config: Mapping[str, Any]
    build: Callable[..., Any]
    build_args: tuple = ()


@dataclass(frozen=True)
class PreparedModel:
    """A spec and what became of it: its store record and file, or the conversion error."""

    spec: ModelSpec
    id: str
    record: ModelRecord | None
    file: ModelFile | None
    error: str = ""
    reused: bool = False  # found converted in the store, not built by this call

    @property
    def ok(self) -> bool:
        return self.file is not None


def kernel_spec(kernel: str, config: Mapping[str, Any]) -> ModelSpec:
    """The spec of a kernel model (kind 'kernel') built by :func:`nnmeter.kernel_gen.build_kernel_model`."""
    from nnmeter.kernel_gen.builders import build_kernel_model

    return ModelSpec("kernel", kernel, dict(config), build_kernel_model, (kernel, dict(config)))


#: Drift anchors: fixed kernels measured in every batch (see :mod:`nnmeter.builder.measuring`). Three kinds
#: of work (a compute-bound 3x3 conv, a memory-bound depthwise conv, a 1x1 conv with 0.5 MB of weights),
#: each 0.05-0.5 ms on a CPU, so that no single kernel's quirk sets a batch's factor.
ANCHOR_KERNELS: tuple[tuple[str, Mapping[str, int]], ...] = (
    ("conv-bn-relu", {"HW": 14, "CIN": 64, "COUT": 64, "KERNEL_SIZE": 3, "STRIDES": 1}),
    ("dwconv-bn-relu", {"HW": 56, "CIN": 64, "KERNEL_SIZE": 3, "STRIDES": 1}),
    ("conv-bn-relu", {"HW": 7, "CIN": 256, "COUT": 512, "KERNEL_SIZE": 1, "STRIDES": 1}),
)


def anchor_specs() -> list[ModelSpec]:
    """The specs of the drift anchors (kind 'anchor')."""
    from nnmeter.kernel_gen.builders import build_kernel_model

    return [ModelSpec("anchor", kernel, dict(config), build_kernel_model, (kernel, dict(config)))
            for kernel, config in ANCHOR_KERNELS]


def spec_model_id(backend: Backend, spec: ModelSpec) -> str:
    """The store id the model of ``spec`` has (or will have) for ``backend``'s model format."""
    fmt = backend.model_format
    return model_id(spec.kind, spec.name, spec.config, fmt, converter_version(fmt))


def prepare_models(workspace: Workspace, backend: Backend, specs: Sequence[ModelSpec], workers: int | None = None,
                   progress: ProgressCallback | None = None) -> list[PreparedModel]:
    """One :class:`PreparedModel` per spec, in order: reused from the store, or built and converted now.

    ``workers`` None leaves the number of conversion processes to the backend's config.
    """
    return prepare_models_in(workspace.store, workspace.root, backend, specs, workers, progress)


def prepare_models_in(store: Store, root: Path, backend: Backend, specs: Sequence[ModelSpec],
                      workers: int | None = None, progress: ProgressCallback | None = None) -> list[PreparedModel]:
    """:func:`prepare_models` for the workspace whose store is ``store`` and whose folder is ``root``."""
    root = Path(root)
    fmt = backend.model_format
    ids = [spec_model_id(backend, s) for s in specs]
    done: dict[str, PreparedModel] = {}
    jobs: dict[str, ConversionJob] = {}
    for spec, mid in zip(specs, ids):
        if mid in done or mid in jobs:
            continue
        existing = _existing(root, store.get_model(mid), fmt)
        if existing is not None:
            done[mid] = PreparedModel(spec, mid, existing[0], existing[1], reused=True)
        else:
            jobs[mid] = ConversionJob(mid, model_dir(root / "models", spec.kind, spec.name),
                                      build=spec.build, build_args=tuple(spec.build_args))

    def report(converted: int, _total: int) -> None:
        if progress:
            progress(len(done) + converted, len(done) + len(jobs))

    report(0, len(jobs))
    if jobs:
        results = backend.convert(list(jobs.values()), workers, report)
        spec_of = {mid: spec for spec, mid in zip(specs, ids)}
        records = []
        for result in results:
            spec = spec_of[result.job_id]
            if result.model is None:
                done[result.job_id] = PreparedModel(spec, result.job_id, None, None, result.error or "conversion failed")
                continue
            rel = Path(result.model.path).resolve().relative_to(root.resolve()).as_posix()
            records.append((spec, result.model, ModelRecord(result.job_id, spec.kind, spec.name, dict(spec.config),
                                                            files={fmt: rel})))
        stored = store.add_models([r for _, _, r in records])
        for (spec, file, _), record in zip(records, stored):
            done[record.id] = PreparedModel(spec, record.id, record, file)
    return [_for_spec(done[mid], spec) for spec, mid in zip(specs, ids)]


def _existing(root: Path, record: ModelRecord | None, fmt: str) -> tuple[ModelRecord, ModelFile] | None:
    """The stored record and its file in ``fmt``, when the file is still on disk."""
    path = record.path(fmt, root) if record is not None else None
    if path is None or not path.exists():
        return None
    return record, ModelFile(record.id, path, fmt)  # type: ignore[union-attr]


def _for_spec(prepared: PreparedModel, spec: ModelSpec) -> PreparedModel:
    """``prepared`` with ``spec`` as its own (two equal specs share one model)."""
    return prepared if prepared.spec is spec else PreparedModel(spec, prepared.id, prepared.record, prepared.file,
                                                               prepared.error, prepared.reused)

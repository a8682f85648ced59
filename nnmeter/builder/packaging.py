"""``nnmeter-build package``: a workspace's trained kernel regressors and fusion rules as a predictor artifact.

Reads what :mod:`nnmeter.builder.training` recorded for the latest training setup
(device, backend, protocol), checks each regressor file against the checksum
recorded when it was trained, and writes the folder of
:mod:`nnmeter.predictor.artifact` (by default ``ws/predictor/artifact``).
The device is connected for one measurement, the fixed cost of an invocation
(:func:`invoke_overhead_ms`); when it cannot be reached, the artifact records 0 and
the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from nnmeter.builder.training import trained_kernels
from nnmeter.errors import NnmeterError
from nnmeter.predictor.artifact import KernelPayload, sha256_file, write_artifact
from nnmeter.predictor.features import FEATURE_SCHEMA_VERSION
from nnmeter.predictor.regressor_format import load_ensemble
from nnmeter.predictor.rules import default_rules, load_rules

if TYPE_CHECKING:
    from nnmeter.builder.workspace import Workspace

#: Where ``package`` writes when no -o is given.
ARTIFACT_DIR = "artifact"
RULES_FILE = "fusion_rules.json"


@dataclass(frozen=True)
class PackageResult:
    path: Path
    kernels: tuple[str, ...]
    rules_source: str  # the rules file packaged, or "default" when the workspace has none
    skipped: tuple[str, ...]  # campaign kernels without a trained regressor
    invoke_overhead_ms: float = 0.0
    overhead_error: str = ""  # why the overhead could not be measured (then it is 0)


def default_artifact_dir(ws: "Workspace") -> Path:
    return ws.predictor_dir / ARTIFACT_DIR


#: The trivial model whose latency is the device's fixed cost of one invocation: a one-element add.
OVERHEAD_KERNEL = ("add", {"HW": 1, "CIN": 1})


def invoke_overhead_ms(ws: "Workspace") -> float:
    """The fixed cost of one invocation on the campaign's device and protocol: the latency of
    :data:`OVERHEAD_KERNEL`, converted and measured through the store like every kernel (a stored
    measurement is reused). Raises NnmeterError when the device cannot measure it."""
    from nnmeter.builder.measuring import measure_models
    from nnmeter.builder.models import kernel_spec, prepare_models

    with ws.connect() as backend:
        prepared = prepare_models(ws, backend, [kernel_spec(*OVERHEAD_KERNEL)])[0]
        if not prepared.ok:
            raise NnmeterError(f"the trivial model ({OVERHEAD_KERNEL[0]} {OVERHEAD_KERNEL[1]}) does not convert: "
                               f"{prepared.error}")
        record = measure_models(ws.store, backend, [prepared.record], ws.campaign.protocol,
                                workspace_root=ws.root, progress=lambda *_: None)[0]
    if record.latency_ms is None:
        raise NnmeterError(f"the trivial model could not be measured: {record.status.value}: {record.error}")
    return record.latency_ms


def package_workspace(ws: "Workspace", out_dir: Path | None = None, *, name: str | None = None,
                      version: str = "1.0", kernels: Sequence[str] | None = None,
                      overwrite: bool = False) -> PackageResult:
    """Write the predictor artifact of ``ws``; NnmeterError when nothing (valid) is trained."""
    setup, results = trained_kernels(ws)
    if setup is None or not results:
        raise NnmeterError(f"{ws.root}: no trained kernel regressors", f"train them first: nnmeter-build train {ws.root}")
    wanted = list(kernels) if kernels else list(ws.campaign.kernels.kernels)
    by_kernel = {r.kernel: r for r in results}
    missing = [k for k in (kernels or []) if k not in by_kernel]
    if missing:
        raise NnmeterError(f"no trained regressor for {', '.join(missing)} (trained: {', '.join(by_kernel)})",
                           f"nnmeter-build train {ws.root} --kernel {missing[0]}")
    payloads = {}
    for kernel in wanted:
        result = by_kernel.get(kernel)
        if result is None:
            continue
        path = ws.root / result.file
        if result.feature_schema_version != FEATURE_SCHEMA_VERSION:
            raise NnmeterError(f"kernel {kernel} was trained with feature schema {result.feature_schema_version}, "
                               f"this nnmeter computes {FEATURE_SCHEMA_VERSION}",
                               f"train it again: nnmeter-build train {ws.root} --kernel {kernel}")
        if not path.is_file() or sha256_file(path) != result.sha256:
            raise NnmeterError(f"{path}: missing or changed since kernel {kernel} was trained",
                               f"train it again: nnmeter-build train {ws.root} --kernel {kernel}")
        payloads[kernel] = KernelPayload(load_ensemble(path), samples=result.samples, metrics=result.metrics)
    rules_path = ws.rules_dir / RULES_FILE
    rules = load_rules(rules_path) if rules_path.is_file() else default_rules()
    device = setup["device"]
    out = Path(out_dir) if out_dir is not None else default_artifact_dir(ws)
    overhead, overhead_error = 0.0, ""
    try:
        overhead = invoke_overhead_ms(ws)
    except NnmeterError as err:  # a phone that is not plugged in: the predictor is still usable, a bit high
        overhead_error = str(err)
    written = write_artifact(
        out, name=name or _default_name(setup["backend"], device.get("id", "")), version=version, device=device,
        backend=setup["backend"], protocol={"key": setup["protocol_key"], **setup["protocol"]}, rules=rules,
        kernels=payloads, overwrite=overwrite, invoke_overhead_ms=overhead,
        description=f"kernel regressors of {ws.root.resolve().name}; fusion rules: "
                    f"{'measured' if rules_path.is_file() else 'defaults (no measured rules in the workspace)'}",
    )
    return PackageResult(written, tuple(payloads), str(rules_path) if rules_path.is_file() else "default",
                         tuple(k for k in wanted if k not in payloads), overhead, overhead_error)


def _default_name(backend: str, device: str) -> str:
    """``<backend>-<device>`` made safe as a folder and registry name."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{backend}-{device}").strip("-")

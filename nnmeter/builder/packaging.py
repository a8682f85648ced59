"""``nnmeter-build package``: a workspace's trained kernel regressors and fusion rules as a predictor artifact.

Reads what :mod:`nnmeter.builder.training` recorded for the latest training setup
(device, backend, protocol), checks each regressor file against the checksum
recorded when it was trained, and writes the folder of
:mod:`nnmeter.predictor.artifact` (by default ``ws/predictor/artifact``).
The device need not be connected.
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


def default_artifact_dir(ws: "Workspace") -> Path:
    return ws.predictor_dir / ARTIFACT_DIR


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
    written = write_artifact(
        out, name=name or _default_name(setup["backend"], device.get("id", "")), version=version, device=device,
        backend=setup["backend"], protocol={"key": setup["protocol_key"], **setup["protocol"]}, rules=rules,
        kernels=payloads, overwrite=overwrite,
        description=f"kernel regressors of {ws.root.resolve().name}; fusion rules: "
                    f"{'measured' if rules_path.is_file() else 'defaults (no measured rules in the workspace)'}",
    )
    return PackageResult(written, tuple(payloads), str(rules_path) if rules_path.is_file() else "default",
                         tuple(k for k in wanted if k not in payloads))


def _default_name(backend: str, device: str) -> str:
    """``<backend>-<device>`` made safe as a folder and registry name."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{backend}-{device}").strip("-")

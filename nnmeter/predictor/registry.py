"""Installed predictors: where they live, listing them, finding one by name.

Predictors are looked for in the folders of ``NNMETER_PREDICTORS_PATH``
(separated by ``os.pathsep``, searched first, in order), then in the user
folder ``$XDG_DATA_HOME/nnmeter/predictors`` (``~/.local/share/nnmeter/predictors``).
Each predictor is a sub-folder with a ``manifest.yaml`` (see
:mod:`nnmeter.predictor.artifact`); it is known by the manifest's name and
version, not by its folder name. ``name@version`` picks a version; ``name``
alone the highest.

Listing reads only each manifest, boundedly (:func:`nnmeter.predictor.artifact.read_manifest`): a folder whose
manifest cannot be read is listed with its one-line ``error``, and never stops the listing or the search for
another predictor. Installing copies folders and regular files only, and refuses a folder that holds a symbolic
link or anything else.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nnmeter.predictor.artifact import MANIFEST, ArtifactError, check_regular_tree, load_artifact, read_manifest

ENV_VAR = "NNMETER_PREDICTORS_PATH"


@dataclass(frozen=True)
class InstalledPredictor:
    """One predictor folder found on the search path (``error`` set when its manifest is unreadable)."""

    path: Path
    name: str = ""
    version: str = ""
    device: str = ""
    device_description: str = ""
    backend: str = ""
    kernels: int = 0
    metrics: Mapping[str, Any] = field(default_factory=dict)  # summary over kernels, see _summary
    error: str = ""
    digest: str = ""  # sha256 of its manifest.yaml: pins the whole predictor (nnmeter.predictor.artifact)
    origin: str = ""  # where it comes from when nnmeter did not build it (the manifest's origin)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def user_predictors_dir() -> Path:
    """The user folder predictors are installed into."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "nnmeter" / "predictors"


def search_paths() -> list[Path]:
    """Folders searched for predictors, in order: ``NNMETER_PREDICTORS_PATH`` entries, then the user folder."""
    paths = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    user = user_predictors_dir()
    return paths + ([user] if user not in paths else [])


def installed_predictors() -> list[InstalledPredictor]:
    """Every predictor folder on the search path, in search order (a folder itself or its sub-folders)."""
    found: list[InstalledPredictor] = []
    for root in search_paths():
        if not root.is_dir():
            continue
        try:
            candidates = (
                [root]
                if _has_manifest(root)  # (a dot folder is one being written or installed: not yet a predictor)
                else sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            )
            found.extend(_describe(folder) for folder in candidates if _has_manifest(folder))
        except OSError:  # a folder on the path that cannot be listed holds no predictor we can use
            continue
    return found


def find_predictor(name_or_path: str | os.PathLike) -> Path:
    """The folder of a predictor given by path, ``name`` (highest version) or ``name@version``."""
    as_path = Path(name_or_path).expanduser()
    if as_path.is_dir():
        if not (as_path / MANIFEST).is_file():
            raise ArtifactError(f"{as_path}: not a predictor folder (no {MANIFEST})")
        return as_path
    text = str(name_or_path)
    name, _, version = text.partition("@")
    installed = [p for p in installed_predictors() if not p.error]
    matches = [p for p in installed if p.name == name and (not version or p.version == version)]
    if matches:  # the search path order decides among equal versions
        return max(matches, key=lambda p: _version_key(p.version)).path
    known = ", ".join(f"{p.label} ({p.device or 'unknown device'})" for p in installed) or "none"
    where = ", ".join(str(p) for p in search_paths())
    raise ArtifactError(
        f"no predictor {text!r} (neither a folder nor an installed predictor); installed: {known}",
        f"searched {where}; install one with `nnmeter-build package WS -o DIR --install` "
        f"or add its parent folder to {ENV_VAR}",
    )


def install_predictor(folder: str | os.PathLike, root: Path | None = None, overwrite: bool = False) -> Path:
    """Copy the (verified) predictor ``folder`` into ``root`` (the user folder) as ``<name>-<version>``.

    Only folders and regular files are copied; a symbolic link or any other kind of entry in ``folder`` is
    refused (:func:`~nnmeter.predictor.artifact.load_artifact` refuses them too). The copy is made aside,
    verified again and renamed into place, so a refused or failed install leaves nothing."""
    artifact = load_artifact(folder)
    root = root or user_predictors_dir()
    dest = root / f"{_safe(artifact.manifest.name)}-{_safe(artifact.manifest.version)}"
    if dest.exists() and not overwrite:
        raise ArtifactError(
            f"{dest} already exists ({artifact.manifest.name}@{artifact.manifest.version} is installed)",
            "give the predictor another --version, or pass --force",
        )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=root))
    try:
        _copy_regular(artifact.path, staging)
        if load_artifact(staging).digest != artifact.digest:  # changed while it was copied
            raise ArtifactError(f"{artifact.path}: changed while it was being installed", "install it again")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _copy_regular(source: Path, dest: Path) -> None:
    """Copy the folders and regular files under ``source`` into ``dest``; ArtifactError on anything else."""
    for path in check_regular_tree(source):
        target = dest / path.relative_to(source)
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            target.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISREG(mode):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target, follow_symlinks=False)
        else:  # became something else since it was checked
            raise ArtifactError(f"{path}: is not a regular file or a folder; a predictor folder holds only those")


def _has_manifest(folder: Path) -> bool:
    manifest = folder / MANIFEST
    return manifest.is_symlink() or manifest.exists()


def _describe(folder: Path) -> InstalledPredictor:
    """The listing entry of ``folder``: its manifest's facts, or ``error`` (one line) when it cannot be read."""
    try:
        m = read_manifest(folder)
    except ArtifactError as err:
        return InstalledPredictor(path=folder, error=err.message.splitlines()[0] if err.message else "unreadable")
    except OSError as err:  # a folder that cannot be looked at (permissions)
        return InstalledPredictor(path=folder, error=f"{folder}: cannot read ({err.strerror or err})")
    return InstalledPredictor(
        path=folder,
        name=m.name,
        version=m.version,
        device=m.device_id,
        device_description=str(m.device.get("description", "")),
        backend=m.backend,
        kernels=len(m.kernels),
        metrics=_summary(m.kernels),
        digest=m.digest,
        origin=m.origin,
    )


def _summary(kernels: Mapping[str, Any]) -> dict[str, Any]:
    """Median and worst +-10 % accuracy over the kernels (held-out configs), and the worst kernel."""
    acc = {k: float(v) for k, e in kernels.items() if _is_fraction(v := e.metrics.get("acc10"))}
    if not acc:
        return {}
    values = sorted(acc.values())
    worst = min(acc, key=acc.__getitem__)
    return {"acc10_median": values[len(values) // 2], "acc10_worst": acc[worst], "worst_kernel": worst}


def _is_fraction(value: Any) -> bool:
    """A number a metric may be (a manifest is shared input: its metrics may be anything)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _version_key(version: str) -> tuple:
    """Natural order: 1.10 after 1.9; numbers before words at the same place."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|[A-Za-z]+", version))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "predictor"

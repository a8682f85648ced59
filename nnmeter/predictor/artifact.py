"""The predictor artifact: a folder with a manifest, the fusion rules and one regressor file per kernel.

Layout::

    <predictor>/
      manifest.yaml          what it is, where it was measured, how well it does, a sha256 per file
      fusion_rules.json      the device's fusion rules (nnmeter.predictor.rules)
      kernels/<kernel>.npz   one tree-ensemble regressor per kernel (nnmeter.predictor.regressor_format)

``manifest.yaml`` keys: ``format`` (``nnmeter-predictor``), ``format_version``,
``name``, ``version``, ``created`` (UTC, ISO 8601), ``description``, ``device``
(id, description, runtime, runtime versions, facts), ``backend``, ``protocol``
(its key and settings), ``libraries`` (versions of nnmeter, numpy,
scikit-learn and Python that built it), ``feature_schema_version``, ``rules``
(the rules file), ``kernels`` (per kernel: ``file``, ``regressor``,
``features`` (names, in order), ``samples``, ``metrics``), ``files``
(relative path -> sha256 of every file other than the manifest) and
``invoke_overhead_ms``: the fixed cost of one invocation on the device, measured
on a trivial model (a one-element add). Every kernel regressor learned it once per
kernel (each kernel was measured as a model of its own); a model pays it once, so
the engine takes it off every kernel and adds it once per model; 0 (the default)
changes nothing. ``model_correction`` (optional;
absent reads as none): what a whole model pays beyond the sum of its standalone
kernels (see :class:`ModelCorrection`), fitted on the device on calibration
models. ``origin`` (optional): where the predictor comes from when nnmeter did not
build it (``imported from nn-Meter ...``). ``detection`` (optional, ``nnmeter`` when
absent): how models are cut into kernels for this predictor's regressors; a predictor
imported from nn-Meter has ``nnmeter-compat``, nn-Meter's detection and features
(:mod:`nnmeter.compat`), and :func:`load_artifact` loads it only when asked for that mode.

Loading (:func:`load_artifact`) never executes code from the folder and never
leaves it: the manifest is read with :func:`nnmeter.yamlfile.load_yaml` (no
aliases, no duplicate keys, at most 1 MB, bounded nesting), regressors as plain
arrays whose sizes are checked before they are read
(:mod:`nnmeter.predictor.regressor_format`), and a pickle in place of a regressor
is refused. Nothing inside the folder may be a symbolic link or anything but a
folder or a regular file (the folder itself may be reached through a link). It
checks the format, every checksum, the feature schema version and each kernel's
feature names, and says which file is wrong and why. It imports neither
TensorFlow nor scikit-learn.

The checksums in the manifest catch accidents only: whoever changes a file can
change its checksum too. The *digest* of a predictor is the sha256 of its
``manifest.yaml`` bytes; as the manifest lists the sha256 of every file the
predictor reads, and loading verifies them, the digest pins the whole predictor.
``load_artifact(path, sha256=DIGEST)`` (and ``nnmeter.load_predictor(...,
sha256=...)``) refuses a predictor whose digest differs; ``nnmeter-build
package`` prints the digest and ``nnmeter-build predictors`` lists it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import yaml

from nnmeter import __version__, ops
from nnmeter.errors import ConfigError, NnmeterError
from nnmeter.predictor.features import FEATURE_SCHEMA_VERSION, feature_names
from nnmeter.predictor.regressor_format import (
    RegressorFormatError,
    TreeEnsemble,
    check_not_pickle,
    load_ensemble,
    save_ensemble,
)
from nnmeter.predictor.rules import FusionRules, load_rules, save_rules
from nnmeter.yamlfile import MAX_YAML_BYTES, load_yaml

ARTIFACT_FORMAT = "nnmeter-predictor"
ARTIFACT_FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"
RULES_FILE = "fusion_rules.json"
KERNELS_DIR = "kernels"
#: The most entries (files and folders) a predictor folder may hold: it has a few dozen.
MAX_ENTRIES = 10_000
#: The largest manifest read (one of 39 kernels takes about 50 KB). Listing installed predictors reads every
#: manifest, and PyYAML's strict loader reads about 150 KB of the worst YAML per second.
MAX_MANIFEST_BYTES = min(256 << 10, MAX_YAML_BYTES)
#: The detection of predictors nnmeter builds (the default of the manifest's ``detection``).
DETECTION_NNMETER = "nnmeter"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ArtifactError(NnmeterError):
    """A predictor folder that cannot be used: missing, damaged, foreign, or built for other features."""


@dataclass(frozen=True)
class KernelEntry:
    """A kernel's regressor as the manifest describes it."""

    name: str
    file: str  # relative to the artifact folder
    regressor: str
    features: tuple[str, ...]
    samples: int
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "regressor": self.regressor,
            "features": list(self.features),
            "samples": self.samples,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class ModelCorrection:
    """What a whole model pays beyond the sum of its kernels measured standalone: its kernels take ``scale``
    times as long (inside a model other layers have used the caches their operands sat in), plus
    ``ms_per_refetched_mb`` per MB of *refetched* weights -- those of kernels small enough (bytes read and
    written at most ``private_cache_mb``) to keep their weights in the core's private cache between standalone
    invocations, which inside a model fetch them again from the shared cache because the layers in between
    evicted them -- plus ``ms_per_mb`` per MB of the model's weight bytes above ``threshold_mb`` (weights too many
    to stay in the last-level cache between inferences come from DRAM). ``scale`` 1 and both slopes 0 change
    nothing."""

    ms_per_mb: float
    threshold_mb: float
    fitted_on: int = 0  # calibration models it was fitted on
    residual: float = 0.0  # RMS relative error (fraction) of the corrected predictions on them
    scale: float = 1.0
    ms_per_refetched_mb: float = 0.0
    private_cache_mb: float = 0.0  # the device's private cache per core; 0: unknown, no refetch term
    #: half-width, in log ratio, of the interval around a model's corrected prediction that held the measured
    #: latency of the calibration models (each predicted from its predicted kernels, the correction fitted
    #: without it) at the manifest's ``interval_coverage``; None: not calibrated
    interval_log_ratio: float | None = None

    def extra_ms(self, weight_bytes: Any, refetched_bytes: Any = 0.0) -> Any:
        """The weight terms for a model's weight bytes and refetched weight bytes (numbers, or arrays)."""
        return (
            self.ms_per_mb * np.maximum(0.0, np.asarray(weight_bytes) / 1e6 - self.threshold_mb)
            + self.ms_per_refetched_mb * np.asarray(refetched_bytes) / 1e6
        )

    def apply(self, kernels_ms: Any, weight_bytes: Any, refetched_bytes: Any = 0.0) -> Any:
        """A model's latency from the sum of its kernels' standalone latencies, its weight bytes and its
        refetched weight bytes (:func:`nnmeter.predictor.engine.refetched_weight_bytes`; numbers, or arrays)."""
        return self.scale * np.asarray(kernels_ms) + self.extra_ms(weight_bytes, refetched_bytes)

    def describe(self) -> str:
        """The correction in one line, e.g. ``kernels x 1.080 + 22.5 us/MB refetched (kernels <= 2.1 MB) +
        71.6 us/MB of weights above 13.0 MB (fitted on 20 calibration models, residual 2.1 %)``."""
        text = f"kernels x {self.scale:.3f}"
        if self.ms_per_refetched_mb > 0:
            text += (
                f" + {1000 * self.ms_per_refetched_mb:.1f} us/MB refetched (kernels <= {self.private_cache_mb:.1f} MB)"
            )
        if self.ms_per_mb > 0:
            text += f" + {1000 * self.ms_per_mb:.1f} us/MB of weights above {self.threshold_mb:.1f} MB"
        return f"{text} (fitted on {self.fitted_on} calibration models, residual {100 * self.residual:.1f} %)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "ms_per_mb": self.ms_per_mb,
            "threshold_mb": self.threshold_mb,
            "ms_per_refetched_mb": self.ms_per_refetched_mb,
            "private_cache_mb": self.private_cache_mb,
            "fitted_on": self.fitted_on,
            "residual": self.residual,
            **({"interval_log_ratio": self.interval_log_ratio} if self.interval_log_ratio is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCorrection:
        correction = cls(
            float(data["ms_per_mb"]),
            float(data["threshold_mb"]),
            int(data.get("fitted_on", 0)),
            float(data.get("residual", 0.0)),
            float(data.get("scale", 1.0)),
            float(data.get("ms_per_refetched_mb", 0.0)),
            float(data.get("private_cache_mb", 0.0)),
            check_interval_log_ratio(data.get("interval_log_ratio"), "model_correction: interval_log_ratio"),
        )
        if not (
            correction.ms_per_mb >= 0
            and correction.threshold_mb >= 0
            and correction.scale > 0  # NaN too
            and correction.ms_per_refetched_mb >= 0
            and correction.private_cache_mb >= 0
        ):
            raise ValueError(
                f"model_correction: ms_per_mb, threshold_mb, ms_per_refetched_mb and private_cache_mb "
                f"must be >= 0 and scale > 0, got {dict(data)}"
            )
        return correction


#: The widest interval a predictor may state, in log ratio (a factor of e^5 ~ 148 either way).
MAX_INTERVAL_LOG_RATIO = 5.0


def check_interval_log_ratio(value: Any, where: str) -> float | None:
    """``value`` as an interval half-width in log ratio (None stays None); ValueError naming ``where`` unless it is
    a number in 0..:data:`MAX_INTERVAL_LOG_RATIO`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_INTERVAL_LOG_RATIO:
        raise ValueError(f"{where}: {_short(value)} is not a number in 0..{MAX_INTERVAL_LOG_RATIO:g}")
    return float(value)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.yaml`` (see the module doc)."""

    name: str
    version: str
    device: Mapping[str, Any]
    backend: str
    protocol: Mapping[str, Any]
    kernels: Mapping[str, KernelEntry]
    files: Mapping[str, str]
    feature_schema_version: int = FEATURE_SCHEMA_VERSION
    libraries: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    description: str = ""
    rules: str = RULES_FILE
    invoke_overhead_ms: float = 0.0
    model_correction: ModelCorrection | None = None
    format: str = ARTIFACT_FORMAT
    format_version: int = ARTIFACT_FORMAT_VERSION
    digest: str = ""  # sha256 of the manifest.yaml bytes it was read from (not a key of the file)
    origin: str = ""  # where it comes from when nnmeter did not build it; empty: built by nnmeter
    detection: str = DETECTION_NNMETER  # how models are cut into kernels for its regressors (see the module doc)
    #: the nominal coverage of its intervals (the kernels' ``interval_log_ratio`` metric and the model
    #: correction's); 0: it states none
    interval_coverage: float = 0.0

    @property
    def device_id(self) -> str:
        return str(self.device.get("id", ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "description": self.description,
            "device": dict(self.device),
            "backend": self.backend,
            "protocol": dict(self.protocol),
            "libraries": dict(self.libraries),
            "feature_schema_version": self.feature_schema_version,
            "rules": self.rules,
            "invoke_overhead_ms": self.invoke_overhead_ms,
            **({"model_correction": self.model_correction.to_dict()} if self.model_correction else {}),
            **({"origin": self.origin} if self.origin else {}),
            **({"detection": self.detection} if self.detection != DETECTION_NNMETER else {}),
            **({"interval_coverage": self.interval_coverage} if self.interval_coverage else {}),
            "kernels": {k: e.to_dict() for k, e in self.kernels.items()},
            "files": dict(self.files),
        }


@dataclass(frozen=True)
class KernelPayload:
    """What :func:`write_artifact` needs per kernel: the fitted regressor and its record."""

    ensemble: TreeEnsemble
    samples: int
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified predictor: its manifest, fusion rules and kernel regressors."""

    path: Path
    manifest: Manifest
    rules: FusionRules
    regressors: Mapping[str, TreeEnsemble]

    @property
    def kernels(self) -> frozenset[str]:
        """Names of the kernels this predictor has a regressor for."""
        return frozenset(self.regressors)

    @property
    def digest(self) -> str:
        """The predictor's digest: the sha256 of its manifest.yaml, which pins every file (see the module doc)."""
        return self.manifest.digest

    @property
    def invoke_overhead_ms(self) -> float:
        """The device's fixed cost of one invocation (see the module doc)."""
        return self.manifest.invoke_overhead_ms

    @property
    def model_correction(self) -> ModelCorrection | None:
        """The device's whole-model correction (see :class:`ModelCorrection`); None when not calibrated."""
        return self.manifest.model_correction

    @property
    def interval_coverage(self) -> float:
        """The nominal coverage of the intervals this predictor states (0: none)."""
        return self.manifest.interval_coverage

    def interval_log_ratio(self, kernel: str) -> float | None:
        """Half-width, in log ratio, of ``kernel``'s interval at :attr:`interval_coverage`; None: not stated."""
        if not self.manifest.interval_coverage:
            return None
        return self.manifest.kernels[kernel].metrics.get("interval_log_ratio")

    def predict(self, kernel: str, X: Any) -> np.ndarray:
        """Latency (ms) of each row of ``X``, the :func:`~nnmeter.predictor.features.feature_matrix` of ``kernel``."""
        try:
            ensemble = self.regressors[kernel]
        except KeyError:
            raise ArtifactError(
                f"predictor {self.manifest.name} has no regressor for kernel {kernel!r}; "
                f"it has: {', '.join(sorted(self.regressors))}"
            ) from None
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != ensemble.n_features:
            raise ValueError(
                f"kernel {kernel}: expected a feature matrix of {ensemble.n_features} columns "
                f"({', '.join(self.manifest.kernels[kernel].features)}), got shape {X.shape}"
            )
        return ensemble.predict(X)


# --- writing -------------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    """Versions of what built (and can check) an artifact; scikit-learn only if it is already imported."""
    import sys

    versions = {"nnmeter": __version__, "numpy": np.__version__, "python": platform.python_version()}
    sklearn = sys.modules.get("sklearn")
    if sklearn is not None:
        versions["scikit-learn"] = sklearn.__version__
    return versions


def write_artifact(
    out_dir: str | os.PathLike,
    *,
    name: str,
    version: str,
    device: Mapping[str, Any],
    backend: str,
    protocol: Mapping[str, Any],
    rules: FusionRules,
    kernels: Mapping[str, KernelPayload],
    description: str = "",
    overwrite: bool = False,
    invoke_overhead_ms: float = 0.0,
    model_correction: ModelCorrection | None = None,
    interval_coverage: float = 0.0,
    origin: str = "",
    detection: str = DETECTION_NNMETER,
    kernel_features: Mapping[str, tuple[str, ...]] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a predictor folder at ``out_dir`` (written aside and renamed into place: never half a folder).

    ``kernel_features``: each kernel's feature names when they are not nnmeter's (a ``detection`` other than
    nnmeter's); ``extra_files``: more files (relative path -> bytes), listed with their checksums."""
    out = Path(out_dir)
    if not kernels:
        raise ArtifactError("no trained kernel regressors to package", "train first: nnmeter-build train WS")
    if out.exists() and any(out.iterdir()) and not overwrite:  # (a workspace's predictor/ starts empty)
        raise ArtifactError(f"{out} already exists", "choose another -o folder, or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_rules(rules, staging / RULES_FILE)
        (staging / KERNELS_DIR).mkdir()
        entries: dict[str, KernelEntry] = {}
        for kernel in sorted(kernels):
            payload = kernels[kernel]
            names = kernel_features[kernel] if kernel_features is not None else feature_names(kernel)
            if payload.ensemble.n_features != len(names):
                raise ArtifactError(
                    f"kernel {kernel}: regressor takes {payload.ensemble.n_features} features, "
                    f"feature schema {FEATURE_SCHEMA_VERSION} has {len(names)}",
                    "train the kernel again with this nnmeter",
                )
            rel = f"{KERNELS_DIR}/{kernel}.npz"
            save_ensemble(payload.ensemble, staging / rel)
            entries[kernel] = KernelEntry(
                kernel, rel, payload.ensemble.regressor, names, int(payload.samples), dict(payload.metrics)
            )
        for rel, data in (extra_files or {}).items():
            target = _inside(staging, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        manifest = Manifest(
            name=name,
            version=str(version),
            device=dict(device),
            backend=backend,
            protocol=dict(protocol),
            kernels=entries,
            files=files,
            libraries=library_versions(),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            description=description,
            invoke_overhead_ms=float(invoke_overhead_ms),
            model_correction=model_correction,
            origin=origin,
            detection=detection,
            interval_coverage=float(interval_coverage),
        )
        (staging / MANIFEST).write_text(yaml.safe_dump(manifest.to_dict(), sort_keys=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- reading -------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The manifest of the predictor folder ``path`` (checked for form, files not verified); every problem is an
    :class:`ArtifactError` whose message is one line naming the file."""
    folder = Path(path)
    file = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such predictor folder")
    if file.is_symlink():
        raise ArtifactError(f"{file}: is a symbolic link; nothing inside a predictor folder may be one")
    if not file.is_file():
        raise ArtifactError(
            f"{folder}: not a predictor folder (no {MANIFEST})", "make one with `nnmeter-build package WS -o DIR`"
        )
    try:
        with open(file, "rb", opener=_no_follow) as fh:
            text = fh.read(MAX_MANIFEST_BYTES + 1)  # a huge file is not read whole
        if len(text) > MAX_MANIFEST_BYTES:
            raise ArtifactError(
                f"{file}: damaged manifest: more than the {MAX_MANIFEST_BYTES:,} bytes a manifest may have"
            )
        data = load_yaml(text, str(file))
    except ConfigError as err:
        problem = err.message[len(f"{file}: ") :] if err.message.startswith(f"{file}: ") else err.message
        raise ArtifactError(f"{file}: damaged manifest: {_first_line(ValueError(problem))}") from None
    except OSError as err:
        raise ArtifactError(f"{file}: cannot read the manifest ({err.strerror or err})") from None
    if not isinstance(data, Mapping) or data.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{file}: not an nnmeter predictor manifest (format is "
            f"{_short(data.get('format')) if isinstance(data, Mapping) else None!r}, "
            f"expected {ARTIFACT_FORMAT!r})"
        )
    if data.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"{file}: predictor format version {_short(data.get('format_version'))} is not supported "
            f"(this nnmeter reads version {ARTIFACT_FORMAT_VERSION})",
            "upgrade nnmeter",
        )
    try:
        kernels = {
            _text(k, "kernels"): KernelEntry(
                _text(k, "kernels"),
                _text(e["file"], f"kernels: {k}: file"),
                _text(e.get("regressor", ""), f"kernels: {k}: regressor"),
                tuple(_text(f, f"kernels: {k}: features") for f in _sequence(e["features"], f"kernels: {k}: features")),
                _integer(e.get("samples", 0), f"kernels: {k}: samples"),
                _kernel_metrics(e.get("metrics") or {}, f"kernels: {k}: metrics"),
            )
            for k, e in _mapping(data["kernels"], "kernels").items()
        }
        coverage = data.get("interval_coverage", 0.0)
        if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 <= coverage < 1:
            raise ValueError(f"interval_coverage: {_short(coverage)} is not a share in 0..1 (0: no intervals)")
        files = {_text(k, "files"): _text(v, f"files: {k}") for k, v in _mapping(data["files"], "files").items()}
        bad = next((k for k, v in files.items() if not _SHA256.fullmatch(v)), None)
        if bad is not None:
            raise ValueError(f"files: {bad}: {_short(files[bad])} is not a sha256 (64 hexadecimal digits)")
        return Manifest(
            name=_text(data["name"], "name"),
            version=_text(data["version"], "version"),
            device=dict(_mapping(data.get("device") or {}, "device")),
            backend=_text(data.get("backend", ""), "backend"),
            protocol=dict(_mapping(data.get("protocol") or {}, "protocol")),
            kernels=kernels,
            files=files,
            feature_schema_version=_integer(data["feature_schema_version"], "feature_schema_version"),
            libraries={str(k): str(v) for k, v in _mapping(data.get("libraries") or {}, "libraries").items()},
            created=str(data.get("created", "")),
            description=str(data.get("description", "")),
            rules=_text(data.get("rules", RULES_FILE), "rules"),
            invoke_overhead_ms=_nonnegative(data.get("invoke_overhead_ms") or 0.0, "invoke_overhead_ms"),
            # ``memory_correction``: the weight term alone, as artifacts before the factor wrote it
            model_correction=(
                ModelCorrection.from_dict(_mapping(correction, "model_correction"))
                if (correction := data.get("model_correction") or data.get("memory_correction"))
                else None
            ),
            digest=hashlib.sha256(text).hexdigest(),
            origin=_text(data.get("origin", ""), "origin"),
            detection=_text(data.get("detection", DETECTION_NNMETER), "detection"),
            interval_coverage=float(coverage),
        )
    except KeyError as err:
        raise ArtifactError(f"{file}: damaged manifest (missing key {_short(err.args[0])})") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as err:
        raise ArtifactError(f"{file}: damaged manifest (bad key: {_first_line(err)})") from None


def _kernel_metrics(value: Any, where: str) -> dict[str, Any]:
    """A kernel's metrics as the manifest records them; the interval, which the engine uses, checked."""
    metrics = dict(_mapping(value, where))
    check_interval_log_ratio(metrics.get("interval_log_ratio"), f"{where}: interval_log_ratio")
    return metrics


def artifact_digest(path: str | os.PathLike) -> str:
    """The digest of the predictor folder ``path``: the sha256 of its manifest.yaml (see the module doc)."""
    return read_manifest(path).digest


def normalize_digest(sha256: str) -> str:
    """A digest as given by a user (any case, around spaces, an optional ``sha256:``) as 64 lower-case hex digits;
    ArtifactError when it is not one."""
    text = str(sha256).strip().lower()
    text = text[len("sha256:") :] if text.startswith("sha256:") else text
    if not _SHA256.fullmatch(text):
        raise ArtifactError(f"{_short(sha256)} is not a sha256 digest (64 hexadecimal digits)")
    return text


def load_artifact(path: str | os.PathLike, sha256: str | None = None, detection: str = DETECTION_NNMETER) -> Artifact:
    """Load and verify the predictor folder at ``path``; :class:`ArtifactError` says what is wrong.

    ``sha256``: the digest the predictor must have (see the module doc); a predictor whose manifest has another is
    refused before any other file of it is read. ``detection``: the manifest's detection the caller runs; a
    predictor of another is refused naming both. The feature schema and the kernels' names and features are
    checked against nnmeter's for the ``nnmeter`` detection only: another detection's caller checks them."""
    folder = Path(path)
    pinned = normalize_digest(sha256) if sha256 is not None else None
    manifest = read_manifest(folder)
    if pinned is not None and manifest.digest != pinned:
        raise ArtifactError(
            f"{folder}: predictor digest {manifest.digest} is not the expected {pinned}",
            "the predictor is not the one that digest was taken of: get it again from its source",
        )
    where = folder / MANIFEST
    if manifest.detection != detection:
        raise ArtifactError(
            f"{where}: detection {_short(manifest.detection)}: this predictor"
            f"{' (' + _short(manifest.origin) + ')' if manifest.origin else ''} cuts models into kernels another "
            f"way than {detection!r}",
            "load it with nnmeter.compat.load_predictor (nnmeter-build predict does)"
            if detection == DETECTION_NNMETER
            else f"load it with nnmeter.load_predictor ({manifest.detection} detection)",
        )
    ours = detection == DETECTION_NNMETER
    check_regular_tree(folder)
    if ours and manifest.feature_schema_version != FEATURE_SCHEMA_VERSION:
        raise ArtifactError(
            f"{folder}: predictor built with feature schema version {manifest.feature_schema_version}, "
            f"this nnmeter computes version {FEATURE_SCHEMA_VERSION}",
            "use the nnmeter version that built it, or package it again from its workspace "
            "(`nnmeter-build train` then `package`)",
        )
    referenced = {manifest.rules, *(e.file for e in manifest.kernels.values())}
    unlisted = sorted(referenced - set(manifest.files))
    if unlisted:
        raise ArtifactError(f"{where}: files has no checksum for {', '.join(_short(u) for u in unlisted[:5])}")
    for kernel, entry in manifest.kernels.items():
        if ours and kernel not in ops.KERNELS:
            raise ArtifactError(
                f"{where}: kernel {_short(kernel)} is unknown to this nnmeter; known: {', '.join(ops.KERNELS)}",
                "upgrade nnmeter",
            )
        if ours and entry.features != feature_names(kernel):
            raise ArtifactError(
                f"{where}: kernel {kernel} lists features {_short(', '.join(entry.features))}; "
                f"this nnmeter computes {', '.join(feature_names(kernel))}",
                "package the predictor again from its workspace",
            )
        try:  # a pickle is refused by what it is, before the checksum says only "changed"
            check_not_pickle(_inside(folder, entry.file))
        except RegressorFormatError as err:
            raise ArtifactError(str(err)) from None
    for rel, expected in manifest.files.items():
        file = _inside(folder, rel)
        if not file.is_file():
            raise ArtifactError(f"{folder}: {_short(rel)} is missing (the manifest lists it)")
        if sha256_file(file) != expected:
            raise ArtifactError(
                f"{file}: damaged or changed since packaging (sha256 differs from the manifest)",
                "package the predictor again, or copy it anew",
            )
    try:
        rules = load_rules(_inside(folder, manifest.rules))
        regressors = {k: load_ensemble(_inside(folder, e.file)) for k, e in manifest.kernels.items()}
    except RegressorFormatError as err:
        raise ArtifactError(str(err)) from None
    for kernel, ensemble in regressors.items():
        if ensemble.n_features != len(manifest.kernels[kernel].features):
            raise ArtifactError(
                f"{folder / manifest.kernels[kernel].file}: regressor takes {ensemble.n_features} "
                f"features, the manifest lists {len(manifest.kernels[kernel].features)}"
            )
    return Artifact(path=folder, manifest=manifest, rules=rules, regressors=regressors)


def check_regular_tree(folder: Path) -> list[Path]:
    """The entries of ``folder``, at any depth, folders first; ArtifactError when one is a symbolic link or
    anything but a folder or a regular file, or when there are more than :data:`MAX_ENTRIES`. ``folder``
    itself may be reached through a link."""
    entries: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                children = sorted(listing, key=lambda e: e.name)
        except OSError as err:
            raise ArtifactError(f"{current}: cannot list the predictor folder ({err.strerror or err})") from None
        for entry in children:
            path = Path(entry.path)
            if entry.is_symlink():
                raise ArtifactError(
                    f"{path}: is a symbolic link; nothing inside a predictor folder may be one",
                    "copy the file it points to in its place",
                )
            mode = entry.stat(follow_symlinks=False).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ArtifactError(f"{path}: is not a regular file or a folder; a predictor folder holds only those")
            entries.append(path)
            if len(entries) > MAX_ENTRIES:
                raise ArtifactError(f"{folder}: holds more than {MAX_ENTRIES:,} files and folders: not a predictor")
            if stat.S_ISDIR(mode):
                pending.append(path)
    return entries


def _inside(folder: Path, rel: str) -> Path:
    """``folder / rel``, refusing paths that leave the folder (a manifest cannot point elsewhere)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in rel or _CONTROL.search(rel):
        raise ArtifactError(f"{folder / MANIFEST}: file path {_short(rel)} points outside the predictor folder")
    return folder.joinpath(*pure.parts)


def _no_follow(path: str, flags: int) -> int:
    """An ``open`` opener that refuses a symbolic link (where the system can tell)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def _text(value: Any, what: str) -> str:
    """A name, version or path of the manifest: a string (or a number, as YAML reads ``1.0``) of one line."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"{what}: {_short(value)} is not a text")
    text = str(value)
    if _CONTROL.search(text):
        raise ValueError(f"{what}: {_short(text)} holds control characters")
    return text


def _nonnegative(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{what}: {_short(value)} is not a finite number >= 0")
    return float(value)


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: {_short(value)} is not an integer")
    return value


def _mapping(value: Any, what: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: {_short(value)} is not a mapping")
    return value


def _sequence(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: {_short(value)} is not a list")
    return value


def _short(value: Any) -> str:
    """``value`` for a one-line message: control characters as spaces, at most 80 characters."""
    try:
        text = repr(value) if not isinstance(value, str) else value
    except ValueError:  # an integer of more digits than Python prints
        text = "a huge integer"
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."

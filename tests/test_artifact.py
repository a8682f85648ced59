"""The predictor artifact: round trip, verification on load, and the registry of installed predictors."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import synthetic_latency

from nnmeter.predictor import registry
from nnmeter.predictor.artifact import (
    MANIFEST,
    ArtifactError,
    KernelPayload,
    load_artifact,
    read_manifest,
    write_artifact,
)
from nnmeter.predictor.features import FEATURE_SCHEMA_VERSION, feature_matrix, feature_names
from nnmeter.predictor.rules import default_rules
from nnmeter.training import latency_metrics, make_regressor

DEVICE = {"id": "local:test-host", "description": "test CPU", "runtime": "ai-edge-litert (XNNPACK)"}

pytestmark = pytest.mark.unit


def _fc_configs(rng: np.random.Generator, n: int) -> list[dict]:
    return [{"CIN": int(rng.integers(16, 2048)), "COUT": int(rng.integers(16, 2048))} for _ in range(n)]


@pytest.fixture(scope="module")
def trained():
    """Two kernels fitted on synthetic latencies: one with the default regressor, one with the baseline."""
    rng = np.random.default_rng(3)
    out = {}
    for kernel, name in (("fc", "gbt-cost-ratio"), ("add", "nn-meter-rf")):
        configs = (
            _fc_configs(rng, 120)
            if kernel == "fc"
            else [{"HW": int(rng.choice([7, 14, 28, 56])), "CIN": int(rng.integers(8, 512))} for _ in range(120)]
        )
        X = feature_matrix(kernel, configs)
        y = synthetic_latency(kernel, X, per_flop=1e-10, per_byte=2e-10)
        regressor = make_regressor(name, kernel).fit(X, y)
        out[kernel] = (regressor, X, y)
    return out


def _write(trained, path, **kw):
    kernels = {
        k: KernelPayload(r.to_ensemble(), samples=len(y), metrics=latency_metrics(y, r.predict(X)).to_dict())
        for k, (r, X, y) in trained.items()
    }
    args = dict(
        name="test-cpu",
        version="1.0",
        device=DEVICE,
        backend="tflite-local",
        protocol={"key": "abc123", "rounds": 40},
        rules=default_rules(),
        kernels=kernels,
    )
    args.update(kw)
    return write_artifact(path, **args)


def test_round_trip_predicts_what_was_trained(trained, tmp_path):
    folder = _write(trained, tmp_path / "pred")
    artifact = load_artifact(folder)
    assert artifact.kernels == {"fc", "add"}
    m = artifact.manifest
    assert (m.name, m.version, m.backend, m.device_id) == ("test-cpu", "1.0", "tflite-local", "local:test-host")
    assert m.feature_schema_version == FEATURE_SCHEMA_VERSION
    assert m.kernels["fc"].regressor == "gbt-cost-ratio" and m.kernels["fc"].samples == 120
    assert m.kernels["fc"].metrics["acc10"] > 0.9
    assert m.invoke_overhead_ms == artifact.invoke_overhead_ms == 0.0  # not given: changes nothing
    assert load_artifact(_write(trained, tmp_path / "pred2", invoke_overhead_ms=0.0012)).invoke_overhead_ms == 0.0012
    assert set(m.files) == {"fusion_rules.json", "kernels/fc.npz", "kernels/add.npz"}
    assert {"nnmeter", "numpy", "scikit-learn", "python"} <= set(m.libraries)
    assert artifact.rules.fused("conv", "bn")
    for kernel, (regressor, X, _) in trained.items():
        np.testing.assert_array_equal(artifact.predict(kernel, X), regressor.predict(X))
    with pytest.raises(ArtifactError, match="no regressor for kernel 'conv-bn-relu'; it has: add, fc"):
        artifact.predict("conv-bn-relu", np.zeros((1, 9)))
    with pytest.raises(ValueError, match=f"expected a feature matrix of {len(feature_names('fc'))} columns"):
        artifact.predict("fc", np.zeros((1, 3)))
    with pytest.raises(ArtifactError, match="already exists"):
        _write(trained, folder)


def test_tampered_file_is_refused(trained, tmp_path):
    folder = _write(trained, tmp_path / "pred")
    rules = folder / "fusion_rules.json"
    rules.write_text(rules.read_text().replace("true", "false", 1))
    with pytest.raises(ArtifactError, match="fusion_rules.json: damaged or changed since packaging"):
        load_artifact(folder)


def test_missing_regressor_file_is_named(trained, tmp_path):
    folder = _write(trained, tmp_path / "pred")
    (folder / "kernels" / "add.npz").unlink()
    with pytest.raises(ArtifactError, match="add.npz"):
        load_artifact(folder)


def test_pickle_in_place_of_a_regressor_is_refused_not_loaded(trained, tmp_path):
    folder = _write(trained, tmp_path / "pred")

    class Bomb:  # unpickling this would create a file: it must never happen
        def __reduce__(self):
            return (open, (str(tmp_path / "pickle-was-loaded"), "w"))

    (folder / "kernels" / "fc.npz").write_bytes(pickle.dumps(Bomb()))
    with pytest.raises(ArtifactError, match="fc.npz: is a Python pickle, refused"):
        load_artifact(folder)
    assert not (tmp_path / "pickle-was-loaded").exists()


def test_other_feature_schema_version_is_refused(trained, tmp_path):
    folder = _write(trained, tmp_path / "pred")
    manifest = yaml.safe_load((folder / MANIFEST).read_text())
    manifest["feature_schema_version"] = FEATURE_SCHEMA_VERSION + 1
    (folder / MANIFEST).write_text(yaml.safe_dump(manifest))
    with pytest.raises(ArtifactError, match=f"feature schema version {FEATURE_SCHEMA_VERSION + 1}"):
        load_artifact(folder)


def test_foreign_and_damaged_manifests_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="not a predictor folder"):
        load_artifact(tmp_path)
    (tmp_path / MANIFEST).write_text("format: something-else\n")
    with pytest.raises(ArtifactError, match="not an nnmeter predictor manifest"):
        load_artifact(tmp_path)
    (tmp_path / MANIFEST).write_text("format: nnmeter-predictor\nformat_version: 1\nname: x\n")
    with pytest.raises(ArtifactError, match="damaged manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{unclosed")
    with pytest.raises(ArtifactError, match="damaged manifest"):
        read_manifest(tmp_path)


def test_manifest_cannot_point_outside_the_folder(trained, tmp_path):
    folder = _write(trained, tmp_path / "pred")
    manifest = yaml.safe_load((folder / MANIFEST).read_text())
    manifest["kernels"]["fc"]["file"] = "../outside.npz"
    manifest["files"]["../outside.npz"] = "0" * 64
    (folder / MANIFEST).write_text(yaml.safe_dump(manifest))
    with pytest.raises(ArtifactError, match="points outside the predictor folder"):
        load_artifact(folder)


def test_registry_lists_finds_and_installs(trained, tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv(registry.ENV_VAR, str(extra))
    _write(trained, extra / "a", version="1.9")
    _write(trained, extra / "b", version="1.10")
    (extra / "junk").mkdir()
    (extra / "junk" / MANIFEST).write_text("format: nope\n")
    listed = registry.installed_predictors()
    assert [(p.name, p.version) for p in listed if not p.error] == [("test-cpu", "1.9"), ("test-cpu", "1.10")]
    assert [p.path.name for p in listed if p.error] == ["junk"]
    assert listed[0].metrics["acc10_worst"] <= listed[0].metrics["acc10_median"]
    assert registry.find_predictor("test-cpu") == extra / "b"  # the highest version
    assert registry.find_predictor("test-cpu@1.9") == extra / "a"
    assert registry.find_predictor(extra / "a") == extra / "a"
    with pytest.raises(ArtifactError, match=r"no predictor 'other'.*installed: test-cpu@1.9 \(local:test-host\)"):
        registry.find_predictor("other")
    installed = registry.install_predictor(extra / "a")
    assert installed == tmp_path / "data" / "nnmeter" / "predictors" / "test-cpu-1.9"
    assert load_artifact(installed).manifest.version == "1.9"
    with pytest.raises(ArtifactError, match="already exists"):
        registry.install_predictor(extra / "a")


def test_loading_imports_neither_sklearn_nor_tensorflow(trained, tmp_path):
    folder = _write(trained, tmp_path / "pred")
    code = (
        "import sys\n"
        "from nnmeter.predictor.artifact import load_artifact\n"
        "from nnmeter.predictor.features import feature_matrix\n"
        f"a = load_artifact({str(folder)!r})\n"
        "print(a.predict('fc', feature_matrix('fc', [{'CIN': 64, 'COUT': 64}]))[0])\n"
        "print(sorted(m for m in ('sklearn', 'tensorflow', 'keras', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert float(out[0]) > 0
    assert out[1] == "[]"

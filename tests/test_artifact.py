"""The predictor artifact: round trip, verification on load, and the registry of installed predictors."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
import zipfile

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


# --- hostile predictor folders: bounded loading, no links, a digest to pin ----------------------------------------


def _npy(array=None, *, descr: str = "", shape: tuple = (), data: bytes = b"") -> bytes:
    """The bytes of a .npy member: of ``array``, or a header declaring ``descr`` and ``shape`` followed by ``data``."""
    buffer = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
        return buffer.getvalue()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def _members(path) -> tuple[dict, dict]:
    """The JSON header and the arrays of a regressor file."""
    with np.load(path) as npz:
        return json.loads(str(npz["header"])), {n: npz[n] for n in npz.files if n != "header"}


def _npz(path, header: dict | str, arrays: dict, **raw: bytes):
    """A regressor file of ``header`` and ``arrays``, with the members in ``raw`` written as they are."""
    text = header if isinstance(header, str) else json.dumps(header)
    members = {"header": _npy(np.array(text)), **{n: _npy(a) for n, a in arrays.items()}, **raw}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, blob in members.items():
            archive.writestr(f"{name}.npy", blob)
    return path


@pytest.fixture
def fc_file(trained, tmp_path):
    """The fc regressor (gradient-boosted trees over a linear base) saved alone."""
    from nnmeter.predictor.regressor_format import save_ensemble

    return save_ensemble(trained["fc"][0].to_ensemble(), tmp_path / "fc.npz")


def test_a_member_declaring_gigabytes_is_refused_from_its_header(fc_file, tmp_path):
    """Before: numpy allocated what a member's .npy header declared (3 GB for a 0.2 MB file; 10^11 values was a
    MemoryError) and only then were shapes checked."""
    from nnmeter.predictor.regressor_format import RegressorFormatError, load_ensemble

    header, arrays = _members(fc_file)
    n = len(arrays["feature"])
    for count in (750_000_000, 10**11):
        bomb = _npy(descr="<i4", shape=(count,), data=bytes(1 << 18))
        path = _npz(
            tmp_path / f"bomb-{count}.npz", header, {k: v for k, v in arrays.items() if k != "feature"}, feature=bomb
        )
        assert path.stat().st_size < 300_000
        with pytest.raises(RegressorFormatError, match=rf"feature has shape \({count},\), expected \({n},\)"):
            load_ensemble(path)
    # the right shape, but a dtype the format has no use for, or a member with more bytes than its array
    for name, blob, problem in (
        ("value", _npy(arrays["value"].astype(np.complex128)), "value has dtype <c16"),
        ("value", _npy(arrays["value"]) + bytes(1 << 20), "value declares .* bytes uncompressed, its array takes"),
        ("tree_offsets", _npy(np.arange(2**15, dtype=np.int64)), r"tree_offsets has shape \(32768,\)"),
    ):
        path = _npz(tmp_path / "odd.npz", header, {k: v for k, v in arrays.items() if k != name}, **{name: blob})
        with pytest.raises(RegressorFormatError, match=problem):
            load_ensemble(path)


def test_a_zip_bomb_member_is_refused_by_its_declared_size(fc_file, tmp_path):
    """A 256 MB header that compresses to 0.3 MB: refused by the size its zip entry declares, never inflated."""
    from nnmeter.predictor.regressor_format import RegressorFormatError, load_ensemble

    header, arrays = _members(fc_file)
    path = _npz(tmp_path / "bomb.npz", header, {k: v for k, v in arrays.items()})
    with zipfile.ZipFile(path) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist() if i.filename != "header.npy"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("header.npy", "w", force_zip64=True) as member:
            member.write(_npy(descr="<U67108864", shape=()))
            chunk = bytes(1 << 22)
            for _ in range(64):
                member.write(chunk)
        for name, blob in members.items():
            archive.writestr(name, blob)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(RegressorFormatError, match="header declares 268,435,.* bytes uncompressed, more than"):
        load_ensemble(path)


def _fc_with(fc_file, tmp_path, change):
    header, arrays = _members(fc_file)
    arrays = {k: v.copy() for k, v in arrays.items()}
    header = change(header, arrays) or header
    return _npz(tmp_path / "changed.npz", header, arrays)


def _first_inner(arrays) -> int:
    return int(np.flatnonzero(arrays["children_left"] >= 0)[0])


def _set(arrays, name, index, value):
    arrays[name][index] = value


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda h, a: h.update(max_depth=200_000), r"max_depth 200000 is not in 0\.\.256"),
        (lambda h, a: h.update(max_depth=1), "max_depth 1 is less than the trees' depth"),
        (lambda h, a: h.update(max_depth="5"), "max_depth: '5' is not an integer"),
        (lambda h, a: _set(a, "feature", _first_inner(a), 999), "a feature index is out of range"),
        (lambda h, a: _set(a, "feature", -1, 3), r"a feature index .*\(or a leaf's is not -2\)"),
        (lambda h, a: _set(a, "children_left", _first_inner(a), 0), "points outside its tree, or back"),
        (lambda h, a: _set(a, "children_right", _first_inner(a), 10**6), "points outside its tree"),
        (lambda h, a: _set(a, "children_right", 0, a["children_left"][0]), "the child of no node or of several"),
        (lambda h, a: _set(a, "threshold", 0, np.nan), "non-finite thresholds"),
        (lambda h, a: _set(a, "value", -1, np.inf), "non-finite values"),
        (lambda h, a: h["base"]["columns"].__setitem__(0, 999), "base: column 999 is out of range"),
        (lambda h, a: h["base"].update(gemm_columns=[0, 1, 999]), "base: column 999 is out of range"),
        (lambda h, a: h["base"].update(half_tile_column=999), "base: column 999 is out of range"),
        (lambda h, a: h["base"].update(coef="1"), "base coef: '1' is not a list"),
        (lambda h, a: h.update(n_features=10**9), "n_features 1000000000 is not in"),
        (lambda h, a: h.update(scale=float("nan")), "NaN is not a number a header may hold"),
        (lambda h, a: h.update(regressor=json.loads("[" * 50 + "]" * 50)), "header nested deeper than 8 levels"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_trees_and_headers_are_refused_on_load(fc_file, tmp_path, change, problem):
    """Before: the header's max_depth was trusted (200k levels took 1.4 s for 50 rows), indices were not
    range-checked (an IndexError at predict), NaN thresholds and cycles loaded."""
    from nnmeter.predictor.regressor_format import RegressorFormatError, load_ensemble

    path = _fc_with(fc_file, tmp_path, change)
    with pytest.raises(RegressorFormatError, match=problem) as err:
        load_ensemble(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_deeply_nested_header_is_a_format_error(fc_file, tmp_path):
    """Before: json.loads of a header nested 100,000 deep raised RecursionError."""
    from nnmeter.predictor.regressor_format import RegressorFormatError, load_ensemble

    header, arrays = _members(fc_file)
    path = _npz(tmp_path / "deep.npz", "[" * 30_000 + "]" * 30_000, arrays)
    with pytest.raises(RegressorFormatError, match="nested deeper than 8 levels"):
        load_ensemble(path)
    path = _npz(tmp_path / "long.npz", json.dumps({**header, "regressor": "x" * 70_000}), arrays)
    with pytest.raises(RegressorFormatError, match="header declares 281,948 bytes uncompressed, more than the"):
        load_ensemble(path)


def _billion_laughs(levels: int) -> str:
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_manifest_aliases_are_refused_and_listed_as_unreadable(trained, tmp_path, monkeypatch):
    """Before: yaml.safe_load expanded nested aliases (1 s and 78 MB at 7 levels, x10 per level), and listing the
    installed predictors read every manifest, so one bad predictor stalled every load_predictor("name")."""
    import time

    root = tmp_path / "predictors"
    _write(trained, root / "good")
    bad = root / "bad"
    bad.mkdir()
    (bad / MANIFEST).write_text("format: nnmeter-predictor\nformat_version: 1\n" + _billion_laughs(7) + "name: *a7\n")
    started = time.perf_counter()
    with pytest.raises(ArtifactError, match=r"manifest.yaml: damaged manifest: .*aliases \(\*name\) are not allowed"):
        read_manifest(bad)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv(registry.ENV_VAR, str(root))
    listed = {p.path.name: p for p in registry.installed_predictors()}
    assert "aliases" in listed["bad"].error and "\n" not in listed["bad"].error
    assert listed["good"].name == "test-cpu" and not listed["good"].error
    assert registry.find_predictor("test-cpu") == root / "good"
    assert time.perf_counter() - started < 2
    (bad / MANIFEST).write_text("format: nnmeter-predictor\nname: x\nname: y\n")  # a key given twice
    with pytest.raises(ArtifactError, match="duplicate key 'name'"):
        read_manifest(bad)


def test_manifest_values_of_the_wrong_type_are_named(trained, tmp_path, monkeypatch):
    folder = _write(trained, tmp_path / "pred")
    original = yaml.safe_load((folder / MANIFEST).read_text())
    for key, value, problem in (
        ("kernels", ["fc"], "kernels: .* is not a mapping"),
        ("files", {"kernels/fc.npz": "abc"}, "is not a sha256"),
        ("name", {"a": 1}, "name: .* is not a text"),
        ("name", "two\nlines", "name: .* holds control characters"),
        ("invoke_overhead_ms", float("nan"), "invoke_overhead_ms: nan is not a finite number"),
    ):
        (folder / MANIFEST).write_text(yaml.safe_dump({**original, key: value}))
        with pytest.raises(ArtifactError, match=problem) as err:
            read_manifest(folder)
        assert "\n" not in err.value.message
    manifest = {**original, "kernels": {**original["kernels"]}}
    manifest["kernels"]["fc"] = {**manifest["kernels"]["fc"], "metrics": {"acc10": "high"}}
    (folder / MANIFEST).write_text(yaml.safe_dump(manifest))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv(registry.ENV_VAR, str(folder))
    (entry,) = registry.installed_predictors()  # a metric that is not a number is left out, not an exception
    assert not entry.error and entry.metrics["worst_kernel"] == "add"


def test_symbolic_links_inside_a_predictor_are_refused(trained, tmp_path, monkeypatch):
    """Before: a listed file or kernels/ itself could be a link (followed on load), and install_predictor copied a
    linked folder's whole target into the install."""
    folder = _write(trained, tmp_path / "pred")
    outside = tmp_path / "outside"
    outside.mkdir()
    # a listed file that is a link to an identical copy: its checksum matches, it is still refused
    shutil.copy(folder / "kernels" / "fc.npz", outside / "fc.npz")
    (folder / "kernels" / "fc.npz").unlink()
    (folder / "kernels" / "fc.npz").symlink_to(outside / "fc.npz")
    with pytest.raises(ArtifactError, match=r"kernels/fc.npz: is a symbolic link") as err:
        load_artifact(folder)
    assert "\n" not in err.value.message
    # kernels/ itself
    folder = _write(trained, tmp_path / "pred2")
    shutil.move(folder / "kernels", outside / "kernels")
    (folder / "kernels").symlink_to(outside / "kernels")
    with pytest.raises(ArtifactError, match=r"pred2/kernels: is a symbolic link"):
        load_artifact(folder)
    # the manifest
    folder = _write(trained, tmp_path / "pred3")
    shutil.move(folder / MANIFEST, outside / MANIFEST)
    (folder / MANIFEST).symlink_to(outside / MANIFEST)
    with pytest.raises(ArtifactError, match=r"manifest.yaml: is a symbolic link"):
        load_artifact(folder)
    # the folder itself may be reached through a link
    folder = _write(trained, tmp_path / "pred4")
    (tmp_path / "via-link").symlink_to(folder)
    assert load_artifact(tmp_path / "via-link").kernels == {"fc", "add"}
    # install: an unlisted link to a folder is refused, and nothing is installed
    (folder / "extra").symlink_to(outside)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with pytest.raises(ArtifactError, match=r"pred4/extra: is a symbolic link"):
        registry.install_predictor(folder)
    assert not (tmp_path / "data" / "nnmeter" / "predictors" / "test-cpu-1.0").exists()
    (folder / "extra").unlink()
    installed = registry.install_predictor(folder)
    assert sorted(p.name for p in installed.rglob("*")) == sorted(p.name for p in folder.rglob("*"))


def test_the_digest_pins_the_whole_predictor(trained, tmp_path):
    """Checksums in the manifest catch accidents only; the digest (sha256 of the manifest, which lists every
    file's sha256) is what a user pins."""
    import hashlib

    from nnmeter.predictor.artifact import artifact_digest

    folder = _write(trained, tmp_path / "pred")
    digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    assert artifact_digest(folder) == load_artifact(folder).digest == digest
    assert load_artifact(folder, sha256=digest.upper()).digest == digest  # any case
    other = "0" * 64
    with pytest.raises(ArtifactError, match=f"predictor digest {digest} is not the expected {other}"):
        load_artifact(folder, sha256=other)
    with pytest.raises(ArtifactError, match="abc is not a sha256 digest"):
        load_artifact(folder, sha256="abc")
    # a changed file with its checksum updated passes the checksums, not the pinned digest
    rules = folder / "fusion_rules.json"
    rules.write_text(rules.read_text().replace("true", "false", 1))
    manifest = yaml.safe_load((folder / MANIFEST).read_text())
    manifest["files"]["fusion_rules.json"] = hashlib.sha256(rules.read_bytes()).hexdigest()
    (folder / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert load_artifact(folder).digest != digest
    with pytest.raises(ArtifactError, match=f"is not the expected {digest}"):
        load_artifact(folder, sha256=digest)


def test_cli_lists_and_verifies_digests(trained, tmp_path, monkeypatch, capsys):
    import nnmeter
    from nnmeter.cli import main
    from nnmeter.predictor.artifact import artifact_digest

    root = tmp_path / "predictors"
    folder = _write(trained, root / "pred")
    digest = artifact_digest(folder)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv(registry.ENV_VAR, str(root))
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["predictors", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["digest"] == digest and listed["name"] == "test-cpu"
    assert main(["predictors"]) == 0
    assert digest in capsys.readouterr().out
    assert main(["predictors", "--verify", "test-cpu", digest]) == 0
    assert f"verified: test-cpu@1.0 at {folder} has digest {digest}" in capsys.readouterr().out
    assert main(["predictors", "--verify", str(folder), "f" * 64]) == 2
    assert f"predictor digest {digest} is not the expected {'f' * 64}" in capsys.readouterr().err
    assert nnmeter.load_predictor("test-cpu", sha256=digest).name == "test-cpu"
    with pytest.raises(ArtifactError, match=f"is not the expected {'f' * 64}"):
        nnmeter.load_predictor("test-cpu", sha256="f" * 64)

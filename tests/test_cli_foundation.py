"""init, connect, profile, status, backends through the real entry point, on tflite-local."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nnmeter.builder.workspace import tiny_model_path
from nnmeter.measurement.store import Store

pytestmark = pytest.mark.e2e


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnmeter.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**__import__("os").environ, "COLUMNS": "120"},
    )


def quick_protocol(ws: Path) -> None:
    """Few short rounds: these tests check the plumbing, not the numbers."""
    path = ws / "campaign.yaml"
    data = yaml.safe_load(path.read_text())
    data["protocol"].update(warmup_runs=1, rounds=4, runs_per_round=2, min_round_ms=0.0, max_remeasures=0)
    path.write_text(yaml.safe_dump(data))


def store_rows(ws: Path) -> tuple[int, int]:
    """Models and measurements in the store, the drift anchors (measured in every batch) left out."""
    with Store(ws / "store.sqlite") as store:
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return (
            store._db.execute("SELECT COUNT(*) FROM models WHERE kind != 'anchor'").fetchone()[0],
            store._db.execute(
                "SELECT COUNT(*) FROM measurements JOIN models ON models.id = model_id WHERE kind != 'anchor'"
            ).fetchone()[0],
        )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_init_backends_status(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    done = cli("init", ws, "--backend", "tflite-local")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in ws.iterdir()} == {
        "campaign.yaml",
        "store.sqlite",
        "models",
        "rules",
        "predictor",
        "reports",
        ".nnmeter.lock",  # the writer lock, released (empty) once init is done
    }
    assert "name: tflite-local" in (ws / "campaign.yaml").read_text()

    again = cli("init", ws)
    assert again.returncode == 2 and "already a workspace" in again.stderr and "--force" in again.stderr
    assert cli("init", ws, "--backend", "openvino-local", "--force").returncode == 0
    assert "name: openvino-local" in (ws / "campaign.yaml").read_text()

    bad = cli("init", tmp_path / "other", "--backend", "tflite-locl")
    assert bad.returncode == 2 and not (tmp_path / "other").exists()
    assert bad.stderr.startswith("nnmeter-build init: error: ")
    assert "'tflite-locl' is not a backend; known: " in bad.stderr and "tflite-local" in bad.stderr

    listing = cli("backends")
    assert listing.returncode == 0
    rows = {
        line.split()[0]: line.split()[1]
        for line in listing.stdout.splitlines()
        if line.strip().startswith(("tflite-", "openvino-"))
    }
    assert rows["tflite-local"] == "yes" and rows["openvino-local"] == "yes"

    status = cli("status", ws)
    assert status.returncode == 0 and "no models yet" in status.stdout
    missing = cli("status", tmp_path / "nowhere")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "nnmeter-build init" in missing.stderr


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory) -> Path:
    """A tiny .keras file (conv + dense), built in a subprocess so this process stays free of TensorFlow."""
    path = tmp_path_factory.mktemp("models") / "small.keras"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"""
import keras
keras.utils.set_random_seed(1)
inp = keras.Input((16, 16, 3), batch_size=1)
x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
out = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
keras.Model(inp, out).save({str(path)!r})
""",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return path


def test_connect_profile_status(tmp_path: Path, keras_model: Path) -> None:
    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    quick_protocol(ws)

    connected = cli("connect", ws)
    assert connected.returncode == 0, connected.stderr
    assert "tflite-local on local:" in connected.stdout and "ai-edge-litert" in connected.stdout
    [row] = [line.split() for line in connected.stdout.splitlines() if line.startswith("tiny_cnn.tflite")]
    assert row[-1] in ("ok", "unstable")  # four rounds are too few for a tight confidence interval
    assert store_rows(ws) == (1, 1)

    profiled = cli("profile", ws, tiny_model_path(), keras_model, "--runs", "6")
    assert profiled.returncode == 0, profiled.stderr + profiled.stdout
    table = {
        line.split()[0]: line.split()
        for line in profiled.stdout.splitlines()
        if line.startswith(("tiny_cnn.tflite", "small.keras"))
    }
    assert set(table) == {"tiny_cnn.tflite", "small.keras"}
    for row in table.values():  # model median mean std min p90 runs rounds spread status
        median, minimum, p90 = float(row[1]), float(row[4]), float(row[5])
        assert 0 < minimum <= median <= p90
        assert (row[6], row[7]) == ("6", "3") and row[9] in ("ok", "unstable")
    # --runs 6 is a protocol of its own: the tiny model is measured under it, next to connect's measurement
    assert store_rows(ws) == (2, 3)
    with Store(ws / "store.sqlite") as store:
        [keras_record] = store.models(name="small.keras")
        assert set(keras_record.files) == {"keras", "tflite"} and (ws / keras_record.files["tflite"]).is_file()

    assert cli("profile", ws, tiny_model_path(), keras_model, "--runs", "6").returncode == 0
    assert store_rows(ws) == (2, 3)  # both already measured under this device/backend/protocol
    assert cli("profile", ws, keras_model, "--runs", "6", "--remeasure").returncode == 0
    assert store_rows(ws) == (2, 4)

    status = cli("status", ws)
    assert status.returncode == 0
    user_row = next(line.split() for line in status.stdout.splitlines() if line.startswith("user"))
    assert user_row[:2] == ["user", "2"] and sum(map(int, user_row[2:])) == 2  # ok or unstable, none failed
    assert "error" not in status.stdout
    assert status.stdout.count("tflite-local") == 2  # two protocol setups: connect's and --runs 6


def test_bad_input_leaves_the_store_intact(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    quick_protocol(ws)
    assert cli("profile", ws, tiny_model_path()).returncode == 0
    before = store_rows(ws)
    store_digest = digest(ws / "store.sqlite")

    text = tmp_path / "notes.tflite"
    text.write_text("not a model at all\n" * 10)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    empty_dir = tmp_path / "folder"
    empty_dir.mkdir()
    for bad, message in [
        (tmp_path / "missing.tflite", "missing.tflite: no such file"),
        (text, "notes.tflite: is not a valid .tflite model"),
        (other, "notes.txt: not a model file nnmeter reads"),
        (empty_dir, "folder: is a folder but not a SavedModel"),
    ]:
        done = cli("profile", ws, tiny_model_path(), bad)
        assert done.returncode == 2, done.stdout
        first, *rest = done.stderr.strip().splitlines()
        assert first.startswith("nnmeter-build profile: error: ") and message in first
        assert all(line.strip().startswith("hint:") for line in rest)
    assert cli("profile", ws, tiny_model_path(), "--runs", "0").returncode == 2
    assert digest(ws / "store.sqlite") == store_digest and store_rows(ws) == before

    campaign = ws / "campaign.yaml"
    campaign.write_text(campaign.read_text().replace("name: tflite-local", "name: tflite-locl"))
    for command in (("status", ws), ("connect", ws), ("profile", ws, tiny_model_path())):
        done = cli(*command)
        assert done.returncode == 2
        assert "backend.name: 'tflite-locl' is not a backend; known: " in done.stderr
    campaign.write_text("backend: {name: tflite-local}\nprotocol:\n  rounds: [3\n")
    done = cli("status", ws)
    assert done.returncode == 2 and "malformed YAML at line" in done.stderr
    assert digest(ws / "store.sqlite") == store_digest and store_rows(ws) == before

"""Shared fixtures: tiny Keras model builders (module-level, so conversion workers can import them), and the
test tiers: every test is marked ``unit``, ``integration`` or ``e2e`` (pyproject.toml says what each means)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# no user model cache in tests unless a test sets one (a conversion is then always a conversion)
os.environ.setdefault("NNMETER_MODEL_CACHE", "off")

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that is in no tier or in several: ``make test-fast`` must know what it leaves out."""
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: marked {sorted(tiers) or 'with no tier'}; mark it with "
                f"exactly one of {', '.join(TIERS)}"
            )


def tiny_conv_model(hw: int = 8, cin: int = 4, cout: int = 8):
    """conv 3x3 + relu on a hw x hw x cin input: a model that converts and runs in milliseconds."""
    import keras

    inputs = keras.Input((hw, hw, cin), batch_size=1)
    outputs = keras.layers.Conv2D(cout, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, outputs)


def tiny_two_input_model(hw: int = 8, cin: int = 4):
    """Two inputs concatenated on channels: checks multi-input conversion."""
    import keras

    a = keras.Input((hw, hw, cin), batch_size=1)
    b = keras.Input((hw, hw, cin), batch_size=1)
    return keras.Model([a, b], keras.layers.Concatenate()([a, b]))


def failing_model():
    """A build function that fails, as a kernel builder can on a bad config."""
    raise ValueError("no such kernel configuration")


@pytest.fixture
def workspace_dir(tmp_path):
    """An empty directory for a test's models and stores."""
    path = tmp_path / "ws"
    path.mkdir()
    return path


def make_workspace(root: Path, backend: str = "tflite-local", **sections: dict) -> Path:
    """A workspace at ``root`` whose campaign.yaml has each given section updated with the given keys."""
    from nnmeter.builder.workspace import Workspace

    Workspace.create(root, backend).close()
    path = root / "campaign.yaml"
    campaign = yaml.safe_load(path.read_text())
    for name, keys in sections.items():
        campaign[name] = {**(campaign.get(name) or {}), **keys}
    path.write_text(yaml.safe_dump(campaign))
    return root


def synthetic_latency(kernel: str, X, per_flop: float = 2e-9, per_byte: float = 1e-9):
    """A latency (ms) the features determine: overhead + FLOPs and bytes moved, read by feature name."""
    from nnmeter.predictor.features import feature_names

    col = {name: X[:, i] for i, name in enumerate(feature_names(kernel))}
    return 0.005 + col["FLOPS"] * per_flop + (col["BYTES_READ"] + col["BYTES_WRITTEN"]) * per_byte


def synthetic_payload(kernel: str, samples: int, trees: int, per_byte: float = 1e-9, metrics=None):
    """A kernel's packaged regressor: a small random forest fitted on :func:`synthetic_latency` of uniformly
    sampled configs (seeded)."""
    from sklearn.ensemble import RandomForestRegressor

    from nnmeter.kernel_gen import sample_configs
    from nnmeter.predictor.artifact import KernelPayload
    from nnmeter.predictor.features import feature_matrix
    from nnmeter.predictor.regressor_format import from_sklearn

    X = feature_matrix(kernel, sample_configs(kernel, samples, sampler="uniform", seed=0))
    y = synthetic_latency(kernel, X, per_byte=per_byte)
    forest = RandomForestRegressor(n_estimators=trees, random_state=0).fit(X, y)
    ensemble = from_sklearn(forest.estimators_, X.shape[1], aggregation="mean", regressor="random-forest")
    return KernelPayload(ensemble, samples=len(y), metrics=metrics or {})


def write_tiny_artifact(payloads, path, **kw):
    """A predictor folder named tiny at ``path`` with ``payloads`` (kernel -> KernelPayload), the default fusion
    rules, and ``kw`` passed to ``write_artifact`` (overhead, model correction, interval coverage)."""
    from nnmeter.predictor.artifact import write_artifact
    from nnmeter.predictor.rules import default_rules

    return write_artifact(
        path,
        name="tiny",
        version="1",
        device={"id": "test"},
        backend="none",
        protocol={},
        rules=default_rules(),
        kernels=payloads,
        **kw,
    )


def cli_process(*args: str, **kwargs) -> subprocess.Popen:
    """``nnmeter-build ARGS`` running in its own session (so a test can signal its whole process group), its
    output and errors in ``stdout``."""
    return subprocess.Popen(
        [sys.executable, "-m", "nnmeter.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def measurement_rows(store: Path) -> list[tuple]:
    """(row id, model kind, model id, protocol key, status, series, model name) of every measurement row of the
    store at ``store``, read only; none before its tables exist."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT me.id, mo.kind, me.model_id, me.protocol_key, me.status, me.series, mo.name "
            "FROM measurements me JOIN models mo ON mo.id = me.model_id ORDER BY me.id"
        ).fetchall()
    except sqlite3.OperationalError:  # the store's tables are not made yet
        return []
    finally:
        db.close()

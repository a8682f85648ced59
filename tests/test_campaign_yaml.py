"""campaign.yaml: the rendered template loads to the defaults; every bad input names file, key path and value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.builder.campaign import SECTIONS, load_campaign, render_campaign
from nnmeter.builder.workspace import Workspace
from nnmeter.errors import ConfigError, NnmeterError
from nnmeter.rule_tester.settings import RuleTestSettings
from nnmeter.training.settings import KernelTrainingSettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("backend", ["tflite-local", "openvino-local"])
def test_rendered_template_loads_to_the_defaults(tmp_path: Path, backend: str) -> None:
    from nnmeter.backends import backend_class

    path = tmp_path / "campaign.yaml"
    path.write_text(render_campaign(backend))
    campaign = load_campaign(path)
    assert campaign.backend_name == backend and campaign.source == path
    assert campaign.backend_options == backend_class(backend).Config()
    for key, cls in SECTIONS.items():
        assert getattr(campaign, key) == cls()


def test_every_key_has_a_comment_from_its_setting_doc() -> None:
    text = render_campaign("tflite-local")
    lines = text.splitlines()
    keys = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped or line.startswith(" " * 4 + "  "):
            continue
        if not line.startswith(" "):  # a section: its comment is the banner above it
            assert any(ln.startswith("# ---") for ln in lines[i - 3 : i]), line
            continue
        keys += 1
        assert lines[i - 1].strip().startswith("#"), f"no comment above {line!r}"
    assert keys > 30
    assert "# rounds per model (the median over rounds is the typical speed) (>= 1)" in text
    assert "fusion threshold: fused when T1 + T2 - T12 > alpha * min(T1, T2)" in text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_campaign(write(tmp_path, text))
    return info.value.message


def test_unknown_backend_is_named_with_the_known_ones(tmp_path: Path) -> None:
    message = load_error(tmp_path, "backend:\n  name: tflite-locl\n")
    assert message.startswith(f"{tmp_path / 'campaign.yaml'}: backend.name: 'tflite-locl' is not a backend; known: ")
    assert "tflite-local" in message and "openvino-local" in message
    assert "backend.name: is required" in load_error(tmp_path, "backend:\n  threads: 1\n")
    assert "backend: expected a mapping" in load_error(tmp_path, "backend: tflite-local\n")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("backend: {name: tflite-local, thread: 2}\n", "backend.thread: unknown key (did you mean 'threads'?)"),
        ("backend: {name: tflite-local, threads: two}\n", "backend.threads: 'two' is not an integer"),
        ("backend: {name: tflite-local, threads: 0}\n", "backend.threads: 0 is below the minimum 1"),
        ("backend: {name: tflite-local}\nprotocol: {rounds: 0}\n", "protocol.rounds: 0 is below the minimum 1"),
        ("backend: {name: tflite-local}\nprotocol: {rounds: many}\n", "protocol.rounds: 'many' is not an integer"),
        (
            "backend: {name: tflite-local}\nprotocol: {round: 3}\n",
            "protocol.round: unknown key (did you mean 'rounds'?)",
        ),
        ("backend: {name: tflite-local}\nrules: {shapes: {HW: 0}}\n", "rules.shapes.HW: 0 is below the minimum 1"),
        (
            "backend: {name: tflite-local}\nrules: {shapes: {KERNEL_SIZE: 4}}\n",
            "rules.shapes.KERNEL_SIZE: 4 is not valid; valid: 1, 3, 5, 7",
        ),
        (
            "backend: {name: tflite-local}\nkernels: {kernels: [fc, fcc]}\n",
            "kernels.kernels[1]: 'fcc' is not valid; valid: ",
        ),
        ("backend: {name: tflite-local}\nrules: {alpha: 2}\n", "rules.alpha: 2.0 is above the maximum 1.0"),
        ("backend: {name: tflite-local}\nkernels: {kernels: conv-bn-relu}\n", "kernels.kernels: expected a list"),
        ("backend: {name: tflite-local}\nkernels: {regressor: svm}\n", "kernels.regressor: 'svm' is not valid"),
        ("backend: {name: tflite-local}\nevaluation: {seed: -1}\n", "evaluation.seed: -1 is below the minimum 0"),
        ("backend: {name: tflite-local}\nprotocl: {}\n", "protocl: unknown section; known: backend, protocol"),
        ("backend: {name: tflite-local}\nprotocol: [1, 2]\n", "protocol: expected a mapping of keys"),
        # experiment switches of earlier versions: refused by name, with what to do
        ("backend: {name: tflite-local}\nprotocol: {cache: evict-all}\n", "protocol.cache: removed (an experiment)"),
        (
            "backend: {name: tflite-local}\nkernels: {regressor: et-cost-ratio}\n",
            "kernels.regressor: 'et-cost-ratio' was removed (an experiment); use gbt-cost-ratio",
        ),
    ],
)
def test_bad_keys_and_values_name_their_path(tmp_path: Path, text: str, expected: str) -> None:
    message = load_error(tmp_path, text)
    assert message.startswith(str(tmp_path / "campaign.yaml") + ": ")
    assert expected in message


def test_missing_malformed_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_campaign(tmp_path / "nope.yaml")
    assert "nope.yaml: no such file" in info.value.message and "nnmeter-build init" in info.value.hint
    message = load_error(tmp_path, "backend:\n  name: tflite-local\nprotocol:\n  rounds: [1, 2\n")
    assert "malformed YAML at line 5, column 1" in message
    message = load_error(tmp_path, "backend: {name: tflite-local}\n  bad indent: 1\n")
    assert "malformed YAML at line 2" in message
    assert "expected a mapping of sections" in load_error(tmp_path, "- backend\n- protocol\n")
    assert "expected a mapping of sections" in load_error(tmp_path, "")


def test_partial_file_takes_defaults(tmp_path: Path) -> None:
    campaign = load_campaign(
        write(
            tmp_path, "backend: {name: tflite-local, threads: 2}\nprotocol: {rounds: 60}\nrules: {shapes: {HW: 14}}\n"
        )
    )
    assert campaign.backend_options.threads == 2
    assert campaign.protocol == dataclasses.replace(MeasurementProtocol(), rounds=60)
    assert campaign.rules.shapes.HW == 14 and campaign.rules.shapes.CIN == 64
    assert campaign.kernels == KernelTrainingSettings() and isinstance(campaign.rules, RuleTestSettings)


def test_workspace_open_validates_before_the_store(tmp_path: Path) -> None:
    with pytest.raises(NnmeterError) as info:
        Workspace.open(tmp_path)
    assert "is not a workspace" in info.value.message and "nnmeter-build init" in info.value.hint
    ws = Workspace.create(tmp_path / "ws", "tflite-local")
    assert {p.name for p in ws.root.iterdir()} == {
        "campaign.yaml",
        "store.sqlite",
        "models",
        "rules",
        "predictor",
        "reports",
    }
    data = yaml.safe_load(ws.campaign_path.read_text())
    data["protocol"]["rounds"] = -3
    ws.campaign_path.write_text(yaml.safe_dump(data))
    (ws.root / "store.sqlite").unlink()
    with pytest.raises(ConfigError, match="protocol.rounds: -3 is below the minimum 1"):
        Workspace.open(ws.root / "campaign.yaml")
    assert not (ws.root / "store.sqlite").exists()  # the bad YAML stopped it before the store was opened
    with pytest.raises(NnmeterError, match="already a workspace"):
        Workspace.create(ws.root, "tflite-local")
    with pytest.raises(ConfigError, match="'tflite-locl' is not a backend"):
        Workspace.create(tmp_path / "other", "tflite-locl")
    assert not (tmp_path / "other").exists()
    Workspace.create(ws.root, "openvino-local", overwrite=True)
    assert Workspace.open(ws.root).campaign.backend_name == "openvino-local"

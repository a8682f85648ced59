"""campaign.yaml: the rendered template loads to the defaults; every bad input names file, key path and value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nnmeter.backends import backend_names
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
    assert "# rounds per model (the median over rounds is the typical speed) (range: 1 .. 100000)" in text
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
    assert {p.name for p in ws.root.iterdir() if not p.name.startswith(".")} == {  # .nnmeter.lock: the writer lock
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


# --- hostile inputs: campaign values -------------------------------------------------------------------------


def rendered(tmp_path: Path, backend: str) -> Path:
    """A freshly rendered campaign.yaml of ``backend``, with the one value a user must fill in (an SSH host)."""
    text = render_campaign(backend)
    if 'host: ""' in text:
        text = text.replace('host: ""', 'host: "board.local"', 1)
    return write(tmp_path, text)


@pytest.mark.parametrize("backend", backend_names())
def test_every_rendered_backend_loads_and_quotes_its_free_text(tmp_path: Path, backend: str) -> None:
    """A value typed between the template's quotes stays text; a value typed bare is refused, not misread."""
    from nnmeter.backends import backend_class

    path = rendered(tmp_path, backend)
    campaign = load_campaign(path)
    config = backend_class(backend).Config
    expected = {f.name: getattr(config(), f.name) for f in dataclasses.fields(config)}
    if "host" in expected:
        expected["host"] = "board.local"
    assert dataclasses.asdict(campaign.backend_options) == expected
    text = path.read_text()
    for section_cls, indent in [(config, "  "), *((cls, "  ") for cls in SECTIONS.values())]:
        for f in dataclasses.fields(section_cls):
            default = getattr(
                section_cls(**({"host": "x"} if section_cls is config and "host" in expected else {})), f.name
            )
            if isinstance(default, str) and f.metadata.get("choices") is None and f.name != "host":
                assert f'\n{indent}{f.name}: "{default}"\n' in text, f"{f.name} is not written in quotes"
    # what a user types into the quotes is read as written
    for key in ("cpu_mask", "serial"):
        if f'{key}: ""' in text:
            campaign = load_campaign(write(tmp_path, text.replace(f'{key}: ""', f'{key}: "0x70"', 1)))
            assert getattr(campaign.backend_options, key) == "0x70"


@pytest.mark.parametrize(
    "backend, line, path, value",
    [
        ("tflite-adb", "cpu_mask: 0x70", "backend.cpu_mask", "112"),
        ("tflite-adb", "cpu_mask: 070", "backend.cpu_mask", "56"),
        ("tflite-adb", "serial: 0123", "backend.serial", "83"),
        ("tflite-adb", "remote_dir: 1.5", "backend.remote_dir", "1.5"),
        ("tflite-ssh", "cpu_mask: 8", "backend.cpu_mask", "8"),
        ("tflite-ssh", "user: yes", "backend.user", "True"),
        ("openvino-ssh", "device: 2024-01-31", "backend.device", "2024-01-31"),
        ("openvino-local", "device: 0", "backend.device", "0"),
    ],
)
def test_numbers_bools_and_dates_for_text_settings_are_refused_with_a_hint_to_quote(
    tmp_path: Path, backend: str, line: str, path: str, value: str
) -> None:
    """YAML 1.1 reads `cpu_mask: 0x70` as 112 (cores 4, 5 and 6 become 1, 4, 8 as hex "112"): never silently."""
    key = path.split(".")[-1]
    text = rendered(tmp_path, backend).read_text()
    text = "\n".join(f"  {line}" if ln.startswith(f"  {key}: ") else ln for ln in text.splitlines()) + "\n"
    with pytest.raises(ConfigError) as info:
        load_campaign(write(tmp_path, text))
    message, hint = info.value.message, info.value.hint
    assert message.startswith(f"{tmp_path / 'campaign.yaml'}: {path}: {value} is ")
    assert "not text" in message and "\n" not in message
    assert info.value.key_path == path
    assert f"{key}: " in hint and "quotes" in hint
    if line == "cpu_mask: 0x70":
        assert '"0x70"' in hint
    if line == "serial: 0123":
        assert '"0123"' in hint


def test_union_settings_keep_their_forms(tmp_path: Path) -> None:
    """`str | list[int]` and `int | str` settings take each of their forms; a wrong one says what they take."""
    base = "backend: {name: tflite-local, %s}\n"
    assert load_campaign(write(tmp_path, base % "measure_cores: auto")).backend_options.measure_cores == "auto"
    assert load_campaign(write(tmp_path, base % "convert_workers: auto")).backend_options.convert_workers == "auto"
    assert load_campaign(write(tmp_path, base % "convert_workers: 2")).backend_options.convert_workers == 2
    assert "backend.measure_cores: 3 is not text or a list" in load_error(tmp_path, base % "measure_cores: 3")
    assert "backend.measure_cores[1]: 'x' is not an integer" in load_error(tmp_path, base % "measure_cores: [0, x]")
    assert "backend.convert_workers: 0 is below the minimum 1" in load_error(tmp_path, base % "convert_workers: 0")
    assert "backend.convert_workers: 4096 is above the maximum 1024" in load_error(
        tmp_path, base % "convert_workers: 4096"
    )
    assert "backend.convert_workers: 2.5 is not an integer or text" in load_error(
        tmp_path, base % "convert_workers: 2.5"
    )
    assert "backend.extra_args[1]: 1 is a number, not text" in load_error(
        tmp_path, "backend: {name: tflite-adb, extra_args: [--num_runs, 1]}\n"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("backend: {name: tflite-adb, command_timeout_s: .nan}\n", "backend.command_timeout_s: nan is not a finite"),
        ("backend: {name: tflite-adb, command_timeout_s: .inf}\n", "backend.command_timeout_s: inf is not a finite"),
        ("backend: {name: tflite-local, command_timeout_s: -.inf}\n", "backend.command_timeout_s: -inf is not a"),
        ("backend: {name: tflite-local}\nprotocol: {min_round_ms: .NaN}\n", "protocol.min_round_ms: nan is not a"),
        ("backend: {name: tflite-local}\nrules: {alpha: .nan}\n", "rules.alpha: nan is not a finite number"),
        ("backend: {name: tflite-local}\nkernels: {error_threshold: .inf}\n", "kernels.error_threshold: inf is not"),
        (
            "backend: {name: tflite-local}\nprotocol: {cooldown_s: 1%s}\n" % ("0" * 400),
            "0000000... is not a finite number",
        ),
        (
            "backend: {name: tflite-local}\nprotocol: {rounds: 1000000000000}\n",
            "protocol.rounds: 1000000000000 is above",
        ),
        (
            "backend: {name: tflite-local, threads: 1000000000}\n",
            "backend.threads: 1000000000 is above the maximum 1024",
        ),
        ("backend: {name: tflite-adb, threads: 1000000000}\n", "backend.threads: 1000000000 is above the maximum 1024"),
        ("backend: {name: tflite-ssh, host: h, threads: 2000}\n", "backend.threads: 2000 is above the maximum 1024"),
        ("backend: {name: tflite-adb, retries: 1000}\n", "backend.retries: 1000 is above the maximum 100"),
        (
            "backend: {name: tflite-adb, command_timeout_s: 1000000000.0}\n",
            "backend.command_timeout_s: 1000000000.0 is above",
        ),
        ("backend: {name: tflite-local}\nprotocol: {max_median_ci: 2}\n", "protocol.max_median_ci: 2.0 is above"),
        ("backend: {name: tflite-local}\nprotocol: {batch_size: 1000000}\n", "protocol.batch_size: 1000000 is above"),
        ("backend: {name: tflite-local}\nkernels: {seed: 4294967296}\n", "kernels.seed: 4294967296 is above"),
        ("backend: {name: tflite-local}\nkernels: {init_samples: 10000000}\n", "kernels.init_samples: 10000000 is"),
        ("backend: {name: tflite-local}\nevaluation: {seed: 4294967296}\n", "evaluation.seed: 4294967296 is above"),
        ("backend: {name: tflite-local}\nrules: {passes: 1000}\n", "rules.passes: 1000 is above the maximum 100"),
    ],
)
def test_non_finite_and_huge_numbers_are_refused_by_key(tmp_path: Path, text: str, expected: str) -> None:
    message = load_error(tmp_path, text)
    assert message.startswith(str(tmp_path / "campaign.yaml") + ": ")
    assert expected in message and "\n" not in message


def test_every_number_setting_is_bounded_above() -> None:
    """Every int and float setting of every section and backend has a maximum (a choice bounds it too)."""
    import typing

    from nnmeter.backends import backend_class
    from nnmeter.rule_tester.settings import RuleTestShapes

    classes = [*SECTIONS.values(), RuleTestShapes, *(backend_class(name).Config for name in backend_names())]
    unbounded = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            numeric = hints[f.name] in (int, float) or typing.get_args(hints[f.name]) == (int, str)
            if numeric and f.metadata.get("maximum") is None and f.metadata.get("choices") is None:
                unbounded.append(f"{cls.__name__}.{f.name}")
    assert not unbounded


@pytest.mark.parametrize(
    "text, expected",
    [
        ("backend: &b {name: tflite-local}\nprotocol: *b\n", "line 2, column 11: aliases (*name) are not allowed"),
        ("backend: {name: tflite-local}\nprotocol: {rounds: 3}\nprotocol: {rounds: 4}\n", "line 3, column 1: dup"),
        ("backend: {name: tflite-local, threads: 1, threads: 2}\n", "line 1, column 43: duplicate key 'threads'"),
        ("backend: {name: tflite-local}\nprotocol:\n  <<: {rounds: 3}\n", "line 3, column 3: merge keys (<<)"),
        ("backend: {name: tflite-local}\nevaluation: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 32"),
        ("backend: {name: tflite-local}\nkernels: {seed: 0b_}\n", "line 2, column 17: cannot read '0b_' as int"),
        ("backend: {name: tflite-adb, serial: 2024-13-01}\n", "cannot read '2024-13-01' as timestamp"),
        ("backend: {name: tflite-local}\nkernels: {seed: !!bool maybe}\n", "cannot read 'maybe' as bool"),
        ("backend: {name: tflite-local}\nkernels: {seed: !!timestamp x}\n", "cannot read 'x' as timestamp"),
        ("backend: {name: tflite-local}\nkernels: {seed: %s}\n" % ("9" * 5000), "line 2, column 17: cannot read"),
        ("backend: {name: tflite-local}\nprotocol: {rounds: \x07}\n", "line 2, column 20: character #x0007"),
    ],
)
def test_yaml_that_safe_load_takes_or_crashes_on_is_a_one_line_config_error(
    tmp_path: Path, text: str, expected: str
) -> None:
    """campaign.yaml is read with nnmeter.yamlfile: no aliases, no duplicate keys (last-wins silently), no
    ValueError/KeyError/AttributeError escaping PyYAML's constructors."""
    message = load_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'campaign.yaml'}: malformed YAML at ") or "nested" in message
    assert expected in message and "\n" not in message


def test_unreadable_oversized_and_binary_files_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_bytes(b"backend: {name: tflite-local}\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"campaign.yaml: not UTF-8 text \(invalid start byte at byte 32\)"):
        load_campaign(path)
    path.write_bytes(b"backend: {name: tflite-local}\n" + b"#" * (1 << 20) + b"\n")
    with pytest.raises(ConfigError, match=r"campaign.yaml: 1,048,607 bytes: larger than the 1,048,576"):
        load_campaign(path)
    text = 'backend: {name: tflite-local}\nprotocol: {"a\\nb": 1}\n'
    assert "protocol.'a\\nb': unknown key" in load_error(tmp_path, text)  # a key path stays one line
    assert "'tflite\\nlocal' is not a backend" in load_error(tmp_path, 'backend: {name: "tflite\\nlocal"}\n')
    huge = "0x" + "f" * 5000  # an integer too long for repr()
    assert "an integer of 20,000 bits: unknown section" in load_error(tmp_path, f"? {huge}\n: 1\n")
    assert "backend.serial: an integer of 20,000 bits is a number, not text" in load_error(
        tmp_path, f"backend: {{name: tflite-adb, serial: {huge}}}\n"
    )

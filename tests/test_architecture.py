"""The parts depend one way (pyproject.toml's import contract, counting function-local imports), and the
contract fails when someone adds a back-edge."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts on the ``nnmeter`` package found in ``package_parent``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=package_parent,
        env={**os.environ, "PYTHONPATH": str(package_parent)},
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "nnmeter", tmp_path / "nnmeter", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_parts_keep_the_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_back_edge_inside_a_function_breaks_it(copy: Path):
    session = copy / "nnmeter" / "measurement" / "session.py"
    session.write_text(
        session.read_text() + "\n\ndef _back_edge():\n    from nnmeter.builder import workspace\n\n"
        "    return workspace\n"
    )
    done = lint_imports(copy)
    assert done.returncode != 0
    assert "nnmeter.measurement.session -> nnmeter.builder.workspace" in done.stdout


def test_rich_outside_the_command_line_breaks_it(copy: Path):
    adaptive = copy / "nnmeter" / "training" / "adaptive.py"
    adaptive.write_text(adaptive.read_text() + "\n\ndef _draw():\n    import rich\n\n    return rich\n")
    done = lint_imports(copy)
    assert done.returncode != 0 and "nnmeter.training.adaptive -> rich" in done.stdout


def test_the_command_line_and_a_campaigns_steps_load_without_tensorflow():
    """TensorFlow takes seconds to import: only building or converting a model may load it, not `--help`,
    `status`, `rules --show` or planning a campaign."""
    code = (
        "import sys\n"
        "from nnmeter.cli.main import build_parser\n"
        "build_parser()\n"
        "import nnmeter.builder.steps, nnmeter.rule_tester.cases, nnmeter.measurement.session\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

"""The report renders from synthetic data, is self-contained, and displays in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nnmeter.builder.report import KernelRow, KernelSamples, StepCost, render_report
from nnmeter.evaluation import FLOPS_LINEAR, NNMETER, NO_FUSION, EvaluationResult, ModelEvaluation
from nnmeter.predictor.rules import FusionRules, Measured, MonRule, PairRule


def _synthetic_report() -> str:
    models = tuple(
        ModelEvaluation(
            f"{fam}_{i}",
            fam,
            f"id{fam}{i}",
            5.0 * (i + 1),
            {
                NNMETER: 5.0 * (i + 1) * (1 + 0.03 * (-1) ** i),
                FLOPS_LINEAR: 4.0 * (i + 1) + 3,
                NO_FUSION: 6.5 * (i + 1),
            },
            repeat_ms=5.0 * (i + 1) * 1.01,
            flops=1e8 * (i + 1),
        )
        for fam in ("nas-mbv2", "mobilenetv2")
        for i in range(4)
    )
    models += (ModelEvaluation("broken<model>", "nas-shuffle", "idx", None, {}, error="conversion failed"),)
    evaluation = EvaluationResult(models, device={"device": "local:test"}, notes={FLOPS_LINEAR: "least squares"})
    rules = FusionRules(
        pairs={
            ("conv", "relu"): PairRule(
                "conv",
                "relu",
                True,
                Measured(1.0, 0.01, 40),
                Measured(0.3, 0.02, 40),
                Measured(1.02, 0.01, 40),
                margin=0.43,
                confidence=1.0,
            ),
            ("add", "conv"): PairRule("add", "conv", None, error="conversion failed"),
        },
        mon=MonRule(1),
        alpha=0.5,
    )
    return render_report(
        title="tflite-local on test",
        workspace="/tmp/ws",
        evaluation=evaluation,
        kernels=[KernelRow("conv-bn-relu", 400, 0.012, 4.2, 0.8, 0.97, "random-forest")],
        rules=rules,
        steps=[StepCost("rules", 30, 30, 1, 2.5), StepCost("kernels", 900, 900, 3, 40.0)],
        samples=[KernelSamples("conv-bn-relu", 400, 20.0)],
        device={"device": "local:test", "cores": "2"},
        generated_at="2026-01-01 00:00 UTC",
    )


@pytest.mark.unit
def test_report_contains_every_section_and_escapes_names():
    html = _synthetic_report()
    for text in (
        "Predicted vs measured",
        "Error distribution",
        "Per family",
        "Kernel regressors",
        "Fusion rules",
        "Campaign cost",
        "Device and runtime",
        "conv-bn-relu",
        "random-forest",
        "broken&lt;model&gt;",
        "undecided",
        "1 (fuse with first consumers)",
    ):
        assert text in html, text
    assert "broken<model>" not in html
    assert html.count("<svg") == 1 + 2 + 3 + 1  # all, per family, 3 histograms, cost
    # 8 scored models: nnmeter is within +-3 %, so 100 % within +-10 %
    assert re.search(r"<b>100\.0 %</b> within", html)
    # self-contained: nothing fetched
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "<script" not in html


@pytest.mark.unit
def test_report_renders_before_any_step_ran():
    html = render_report(title="t", workspace="/tmp/ws", evaluation=None)
    assert "The evaluation has not run yet" in html
    assert "No fusion rules measured yet" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.integration
@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium package (apt-get install chromium)")
def test_report_displays_in_headless_chromium(tmp_path):
    page = tmp_path / "index.html"
    page.write_text(_synthetic_report(), encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "Per family" in dom and dom.count("<circle") >= 8
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    data = Path(shot).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000

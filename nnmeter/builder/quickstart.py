"""The quickstart: a small real campaign on this machine's CPU (tflite-local), in one workspace."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from nnmeter.builder.report import REPORT_FILE
from nnmeter.builder.workspace import CAMPAIGN_FILE, Workspace
from nnmeter.progress import SILENT, Reporter

QUICKSTART_CAMPAIGN = "quickstart.yaml"


def quickstart_workspace(root: str | Path, reporter: Reporter = SILENT) -> Workspace:
    """The quickstart workspace at ``root``: made with the packaged quickstart campaign, or reopened to resume.

    A folder that is already a workspace is reopened as it is (its campaign.yaml is not replaced).
    """
    root = Path(root)
    if (root / CAMPAIGN_FILE).is_file():
        reporter.note(f"resuming the campaign in {root}")
        return Workspace.open(root)
    ws = Workspace.create(root, "tflite-local")
    text = resources.files("nnmeter.configs").joinpath(QUICKSTART_CAMPAIGN).read_text(encoding="utf-8")
    tmp = ws.campaign_path.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(ws.campaign_path)
    reporter.note(f"made the quickstart workspace {root} (campaign: {ws.campaign_path})")
    return Workspace.open(root)


def usage_text(ws: Workspace) -> str:
    """Where the predictor and the report are, and how to use the predictor from Python."""
    artifact = ws.predictor_dir.resolve()
    report = (ws.reports_dir / REPORT_FILE).resolve()
    return f"""
predictor: {artifact}
report:    {report}

Use the predictor from Python:

    import nnmeter
    p = nnmeter.load_predictor("{artifact}")
    r = p.predict("model.tflite")          # or .onnx, .keras, a keras.Model, an nn-Meter IR .json
    print(r.latency_ms)                    # predicted latency on this device, in ms
    for k in r.kernels:                    # per-kernel breakdown
        print(k.kernel, k.config, round(k.ms, 3))

or from the shell:

    nnmeter-build predict --predictor {artifact} model.tflite
"""

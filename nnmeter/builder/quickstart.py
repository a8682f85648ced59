"""The quickstart: a small real campaign on this machine's CPU (tflite-local), in one workspace."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from nnmeter.builder.report import REPORT_FILE
from nnmeter.builder.workspace import CAMPAIGN_FILE, Workspace, write_text_atomic
from nnmeter.errors import NnmeterError
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
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NnmeterError(f"{root}: exists and is not a folder", "pick another path for the workspace") from None
    with Workspace(root).lock():  # made whole, the quickstart campaign in place, before another command sees it
        ws = Workspace.create(root, "tflite-local")
        text = resources.files("nnmeter.configs").joinpath(QUICKSTART_CAMPAIGN).read_text(encoding="utf-8")
        write_text_atomic(ws.campaign_path, text)
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

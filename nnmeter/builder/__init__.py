"""The builder: a workspace, its campaign.yaml, and the steps that turn them into a predictor.

``Workspace.create(DIR, "tflite-local")`` then ``run_campaign(ws)``; each step is also a function of its own
(:func:`run_workspace_rules`, :func:`train_workspace_kernels`, :func:`package_workspace`,
:func:`evaluate_workspace`, :func:`write_report`). Progress goes to a :class:`nnmeter.progress.Reporter`.
Names load on first use.
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("Campaign", "load_campaign", "render_campaign"), "campaign"),
        **dict.fromkeys(
            ("EVALUATION_FILE", "EvaluationModel", "evaluate_workspace", "folder_models", "zoo_models"), "evaluate"
        ),
        **dict.fromkeys(
            (
                "KernelResult",
                "KernelTraining",
                "kernels_to_train",
                "train_workspace_kernels",
                "trained_kernels",
                "trainer_version",
                "workspace_measure",
            ),
            "kernels",
        ),
        **dict.fromkeys(("PackageResult", "package_workspace"), "packaging"),
        **dict.fromkeys(("quickstart_workspace", "usage_text"), "quickstart"),
        **dict.fromkeys(("REPORT_FILE", "campaign_cost", "write_report"), "report"),
        "run_workspace_rules": "rules",
        **dict.fromkeys(("STEPS", "StepResult", "StepStatus", "run_campaign", "step_status"), "steps"),
        **dict.fromkeys(("CAMPAIGN_FILE", "Workspace", "model_file_format", "tiny_model_path"), "workspace"),
    },
)

"""Evaluation: the model families predictors are scored on, the scores, and nn-Meter's two baselines.

Names load on first use (``from nnmeter.evaluation import EvaluationResult``).
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            ("NOTES", "NoFusion", "flops_linear_predictions", "predict_model", "with_flops_baseline"), "baselines"
        ),
        **dict.fromkeys(
            (
                "FLOPS_LINEAR",
                "METHODS",
                "NNMETER",
                "NO_FUSION",
                "REPEATABLE_SHARE",
                "EvaluationResult",
                "Metrics",
                "ModelEvaluation",
                "spearman",
            ),
            "scoring",
        ),
        "EvaluationSettings": "settings",
        **dict.fromkeys(("FAMILIES", "ZooModel", "build_zoo_model", "check_families", "evaluation_set"), "zoo"),
    },
)

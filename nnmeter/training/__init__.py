"""Learning kernel latencies: regressors, the adaptive sampling loop, family fits and their metrics.

No store, no workspace: the loop measures through the ``measure`` callable it is given
(:data:`MeasureConfigs`), so a notebook can drive it with any source of latencies.
Names load on first use (``from nnmeter.training import adaptive_training``).
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            (
                "ERROR_FOLDS",
                "MeasureConfigs",
                "RoundScore",
                "Sample",
                "TrainingError",
                "TrainingOutcome",
                "adaptive_training",
                "config_key",
                "finegrained_configs",
                "held_out",
                "kernel_settings",
                "large_error_configs",
                "pooled_fit",
                "pools_families",
                "prior_configs",
            ),
            "adaptive",
        ),
        **dict.fromkeys(("FAST_KERNEL_MS", "LatencyMetrics", "latency_metrics"), "metrics"),
        **dict.fromkeys(
            (
                "BASELINE_REGRESSOR",
                "DEFAULT_REGRESSOR",
                "REGRESSORS",
                "KernelRegressor",
                "make_regressor",
                "regressor_class",
            ),
            "regressors",
        ),
        "KernelTrainingSettings": "settings",
    },
)

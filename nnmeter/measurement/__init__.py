"""Measurements: the store of models and measurements, model preparation, and measuring sessions.

``MeasuringSession(store, root, backend, protocol)`` is the one path from model specs to
stored measurements; :class:`Store` keeps every model and measurement of a workspace.
Names load on first use (``from nnmeter.measurement import Store``).
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("ANCHOR_KERNELS", "DriftCheck"), "drift"),
        **dict.fromkeys(("BatchDispatcher", "BatchDone", "BatchJob"), "dispatch"),
        **dict.fromkeys(("ModelSpec", "PreparedModel", "anchor_specs", "kernel_spec", "spec_model_id"), "models"),
        **dict.fromkeys(("SOURCE_FORMATS", "MeasuringSession", "measured_formats"), "session"),
        **dict.fromkeys(
            (
                "LATENCY_READING_VERSION",
                "MODEL_KINDS",
                "MeasurementRecord",
                "ModelRecord",
                "Store",
                "StoreError",
                "StoreSummary",
                "UnitCheck",
                "UnitSummary",
                "hash_file",
            ),
            "store",
        ),
    },
)

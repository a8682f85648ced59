"""Moving from nn-Meter: its predictor folders imported safely, its calls kept, its numbers reproduced.

* :func:`import_nnmeter` (``nnmeter-build import-nnmeter``): an nn-Meter predictor folder as an nnmeter predictor,
  its pickled forests read without running them (:mod:`nnmeter.compat.unpickle`);
* :func:`load_predictor`: any installed predictor; an imported one predicts in the ``nnmeter-compat`` mode
  (nn-Meter's detection and numbers) or the ``nnmeter`` mode (:mod:`nnmeter.compat.predictor`);
* :mod:`nnmeter.compat.nn_meter`: nn-Meter's ``load_latency_predictor``, ``list_latency_predictors`` and
  ``predict(model, model_type=...)``.

Names load on first use.
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("import_nnmeter", "MODES"), "nnmeter_format"),
        **dict.fromkeys(("CompatPredictor", "load_compat", "load_predictor"), "predictor"),
        **dict.fromkeys(("UnsafePickleError", "read_forest"), "unpickle"),
    },
)

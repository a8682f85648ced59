"""The kernel generator: Keras builders for ops, op pairs, the MON block and kernels; config samplers.

``from nnmeter.kernel_gen import build_kernel, sample_configs``. Names are loaded
on first use, so that sampling configs does not import TensorFlow.
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "build_kernel": "builders",
        "build_kernel_model": "kernel_models",
        "write_kernel_tflite": "tflite_writer",
        "KernelModel": "builders",
        "build_op_layer": "builders",
        "OpParams": "op_traits",
        "OP_BUILDERS": "builders",
        "TestShapes": "pairs",
        "build_single": "pairs",
        "build_pair": "pairs",
        "build_chain": "pairs",
        "build_mon": "pairs",
        "connectable": "pairs",
        "pair_input_shapes": "pairs",
        "pair_output_channels": "pairs",
        "UnconnectablePair": "pairs",
        "MON_CASES": "pairs",
        "sample_configs": "samplers",
        "SAMPLERS": "samplers",
        "model_id": "cache",
    },
)

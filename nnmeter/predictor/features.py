"""Regressor features of a kernel: defined once, used by training (builder) and prediction (engine).

A kernel's features are its config (``CINS`` of concat expanded to four slots
and a count), its costs from :func:`nnmeter.ops.kernel_cost` (FLOPs, params,
bytes read and bytes written), and derived shape features:

* memory traffic, which nn-Meter's features lack; bandwidth-bound kernels
  (depthwise, element-wise, pooling) need it;
* tile padding of the channel counts (``CIN_PAD8`` = ``ceil(CIN / 8) * 8 / CIN``):
  SIMD kernels work on channel tiles, so a count just above a multiple of the
  tile costs nearly a whole extra tile; trees cannot derive a ceiling from the
  raw count with few samples (on tflite-local conv-bn-relu, 5-fold +-10 %
  accuracy 73 % -> 84 %, dwconv-bn-relu 85 % -> 92 %);
* for kernels that run as a matrix product, the output channels in the last
  column tile of 4-32 (``COUT_TAIL32`` = ``(COUT - 1) % 32 + 1``, ...): on tflite-local (AVX-512) a conv
  or fc whose last 32-column tile holds 1-16 channels ran 1.6x slower than its
  neighbours with 17-32, for the whole layer, not the tail (1x1 convs on 1x1
  maps, the same weight bytes), which the padding ratio cannot express (the
  half-width micro-kernel, below, is what happens there); other convs (indirect GEMM)
  keep the wide micro-kernel, but ran slower with a short last tile too (on the Intel host,
  stride-1 1x1 convs of up to 1024 output pixels with 1-16 channels in the last tile
  ran 18-33 % below the FLOP rate of those with 17-32, stride-2 ones alike; see
  docs/measurement.md). With the column, the default campaign's conv-bn-relu (3 random
  70/30 splits of its samples) went from +-10 % 85.6 % to 90.5 %, fc from 86.3 % to
  96.3 % (other kernels did not gain from it);
* for the same kernels, the output pixels in the last row tile of 4-8 (``GEMM_M_TAIL7`` =
  ``(GEMM_M - 1) % 7 + 1``, ...): the micro-kernel computes ``mr`` output pixels at once
  (XNNPACK's f32 kernels: 4-8 by architecture, 7 on AVX-512) and reads the packed weights
  once per row tile; XNNPACK picks ``mr`` per layer from M (``xnn_get_heuristic_mr_gemm``:
  M itself when a kernel of that many rows exists, else the fewest weighted tiles). With
  them the Intel host's conv-bn-relu went from +-10 % 88.0 to 88.5 % cross-validated on
  1,195 samples (``bench/kernel_accuracy.py --stored``), 84.6 to 85.6 % on the 800 of a
  default campaign, and 82.5 to 83.6 % on 189 held-out prior configs (5 seeds, one-off);
* for the same kernels, whether a fully connected layer (an fc, or a 1x1 conv on a 1x1 map,
  which runtimes run as one) runs on the half-width micro-kernel (``FC_HALF_TILE16``, for
  wide tiles of 8, 16 and 32 columns; :func:`half_tile_chosen` is XNNPACK's rule). That
  kernel takes about a wide tile's time for half its columns, so the layer is ~2x slower:
  on tflite-local (AMD host, AVX2, 16/8 columns) 1x1 convs on 1x1 maps ran at 0.15 ns per
  weight where the rule switches and 0.08 where it does not (1,286 x 673 channels 137 us,
  1,291 x 683 72 us, the same in fresh processes); the last tile's fill alone misses it
  because of the rule's 1 % clause (a multiple of 8 switches below 800 columns, not above).
  The regressors' cost model counts those layers' tiles at half width. With both, the AMD
  host's default campaign (``bench/kernel_accuracy.py --stored``, 5 folds) went from +-10 %
  96.1 to 98.0 % on conv-bn-relu's 2,011 samples and from 99.1 to 100 % on fc's 1,010
  (docs/measurement.md, "Fully connected layers on the half-width micro-kernel");
* the output size and logs of the costs, and the arithmetic intensity
  (``LOG_INTENSITY``, log FLOPs - log bytes read), which says whether a config is
  compute- or memory-bound and, for pooling, how kernel size and stride relate
  (``k^2 / s^2``), neither of which trees build from the separate columns with few
  samples: the default campaign's samples, 3 random 70/30 splits, +-10 % avgpool
  70.4 -> 87.7 %, maxpool 79.9 -> 92.9 %, dwconv-bn 86.7 -> 89.3 %, conv-bn-relu
  90.6 -> 92.0 %, add 95.6 -> 95.1 %;
* for dense conv and fc kernels, the shape of the matrix product they run as
  (``GEMM_M``, ``GEMM_N``, ``GEMM_K``, see :func:`nnmeter.ops.gemm_shape`), from
  which the regressors' cost model counts the work in whole tiles;
* for a kernel with a family (:func:`nnmeter.ops.kernel_family`: ``conv-*``,
  ``dwconv-*``, ``add``/``addrelu``, ``bn``/``bnrelu``), a 0/1 column per op
  that follows the main op in any of them (``WITH_BN``, ``WITH_RELU``, ...):
  constant within one kernel, they let one regressor be trained on the whole
  family's measurements and still tell its members apart.

nn-Meter's own features are the config plus FLOPs and params
(:func:`nnmeter_feature_columns`), which its baseline regressor uses.

The artifact records :data:`FEATURE_SCHEMA_VERSION` and each kernel's feature
names; the engine refuses an artifact whose schema differs.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from nnmeter import ops

#: Bump when the features of any kernel change meaning or order.
FEATURE_SCHEMA_VERSION = 8

_COST_FEATURES = ("FLOPS", "PARAMS", "BYTES_READ", "BYTES_WRITTEN")
_MAX_CONCAT_INPUTS = ops.CONCAT_INPUTS_RANGE[1]
#: Channel tile widths of SIMD kernels (SSE/NEON 4, AVX 8, AVX-512 16, and 32 for unrolled tiles).
_CHANNEL_TILES = (4, 8, 16, 32)
#: Row tiles (output pixels at once) of CPU GEMM micro-kernels.
_ROW_TILES = (4, 5, 6, 7, 8)
#: Widths of the wide micro-kernel whose half-width sibling a fully connected layer may switch to.
_HALF_TILE_WIDTHS = (8, 16, 32)
_STRIDE_KEYS = (ops.STRIDES, ops.POOL_STRIDES)
#: Names of the GEMM view's columns, for the kernels that have one.
GEMM_FEATURES = ("GEMM_M", "GEMM_N", "GEMM_K")


def feature_names(kernel: str) -> tuple[str, ...]:
    """Names of the features of ``kernel``, in the order of :func:`kernel_features`."""
    keys = ops.kernel_type(kernel).keys
    names: list[str] = []
    for key in keys:
        if key == ops.CINS:
            names += [f"CIN{i + 1}" for i in range(_MAX_CONCAT_INPUTS)] + ["NUM_INPUTS"]
        else:
            names.append(key)
    names += _COST_FEATURES
    names += [f"{key}_PAD{tile}" for key in (ops.CIN, ops.COUT) if key in keys for tile in _CHANNEL_TILES]
    if any(key in keys for key in _STRIDE_KEYS):
        names += ["HW_OUT", "OUT_PIXELS"]
    if ops.runs_as_gemm(kernel):
        names += GEMM_FEATURES
        names += [f"{ops.COUT}_TAIL{tile}" for tile in _CHANNEL_TILES]
        names += [f"GEMM_M_TAIL{tile}" for tile in _ROW_TILES]
        names += [half_tile_feature(tile) for tile in _HALF_TILE_WIDTHS]
    names += [_with_column(op) for op in ops.family_tail_ops(kernel)]
    return tuple(names) + ("LOG_FLOPS", "LOG_BYTES", "LOG_INTENSITY")


def half_tile_feature(width: int) -> str:
    """Name of the 0/1 feature: a fully connected layer on ``width``-column tiles switches to half-width ones."""
    return f"FC_HALF_TILE{width}"


def half_tile_chosen(columns: int, width: int) -> bool:
    """Whether XNNPACK runs a fully connected layer of ``columns`` outputs on the half-width micro-kernel.

    Its rule (``xnn_create_fully_connected_nc_f32``): the layer switches from the ``width``-column
    micro-kernel to its half-width sibling when it has fewer columns than ``width``, or when the
    sibling pads fewer columns and the wide one pads more than 1 % of them.
    """
    half = width // 2
    wide_pad, half_pad = (width - columns % width) % width, (half - columns % half) % half
    return columns < width or (half_pad < wide_pad and wide_pad * 100 > columns)


def _with_column(op: str) -> str:
    return "WITH_" + op.upper().replace("-", "_")


def nnmeter_feature_columns(kernel: str) -> tuple[int, ...]:
    """Positions in :func:`feature_names` of nn-Meter's features: the config, FLOPs and params."""
    names = feature_names(kernel)
    return tuple(range(names.index("FLOPS") + 1)) + (names.index("PARAMS"),)


def kernel_features(kernel: str, config: Mapping[str, object]) -> list[float]:
    """The feature vector of one kernel config (validated; a bad config raises ValueError)."""
    cfg = ops.validate_config(kernel, config)
    values: list[float] = []
    for key in ops.kernel_type(kernel).keys:
        if key == ops.CINS:
            cins = list(cfg[key])  # type: ignore[arg-type]
            values += [float(c) for c in cins] + [0.0] * (_MAX_CONCAT_INPUTS - len(cins)) + [float(len(cins))]
        else:
            values.append(float(cfg[key]))  # type: ignore[arg-type]
    cost = ops.kernel_cost(kernel, cfg)
    values += [float(cost.flops), float(cost.params), float(cost.bytes_read), float(cost.bytes_written)]
    keys = ops.kernel_type(kernel).keys
    for key in (ops.CIN, ops.COUT):
        if key in keys:
            channels = int(cfg[key])  # type: ignore[arg-type]
            values += [math.ceil(channels / tile) * tile / channels for tile in _CHANNEL_TILES]
    stride = next((int(cfg[k]) for k in _STRIDE_KEYS if k in keys), None)  # type: ignore[arg-type]
    if stride is not None:
        hw_out = ops.out_hw(int(cfg[ops.HW]), stride)  # type: ignore[arg-type]
        values += [float(hw_out), float(hw_out * hw_out)]
    gemm = ops.gemm_shape(kernel, cfg)
    if gemm is not None:
        values += [float(v) for v in gemm]
        values += [float((gemm[1] - 1) % tile + 1) for tile in _CHANNEL_TILES]
        values += [float((gemm[0] - 1) % tile + 1) for tile in _ROW_TILES]
        as_fc = ops.runs_as_fully_connected(kernel, cfg)
        values += [float(as_fc and half_tile_chosen(gemm[1], tile)) for tile in _HALF_TILE_WIDTHS]
    tail = ops.kernel_type(kernel).ops[1:]
    values += [float(op in tail) for op in ops.family_tail_ops(kernel)]
    log_flops = math.log1p(cost.flops)
    return values + [log_flops, math.log1p(cost.bytes_moved), log_flops - math.log1p(cost.bytes_read)]


def feature_matrix(kernel: str, configs: Sequence[Mapping[str, object]]) -> np.ndarray:
    """Features of many configs of one kernel, one row each (float64)."""
    width = len(feature_names(kernel))
    if not configs:
        return np.zeros((0, width))
    return np.array([kernel_features(kernel, c) for c in configs], dtype=np.float64)

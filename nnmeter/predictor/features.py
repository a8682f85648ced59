"""Regressor features of a kernel: defined once, used by training (:mod:`nnmeter.training`) and prediction (engine).

A kernel's feature vector (:func:`kernel_features`, names from :func:`feature_names`) holds, in order:

* the config (``CINS`` of concat as four slots and a count): what nn-Meter's features start from;
* costs from :func:`nnmeter.ops.kernel_cost` (``FLOPS``, ``PARAMS``, ``BYTES_READ``,
  ``BYTES_WRITTEN``): the work, and the memory traffic nn-Meter lacks, which bandwidth-bound kernels
  (depthwise, element-wise, pooling) need;
* channel padding to SIMD tiles (``CIN_PAD<t>``, ``COUT_PAD<t>``; ``CIN_PAD8`` = ``ceil(CIN / 8) * 8 / CIN``): a count
  just above a multiple of the tile costs nearly a whole extra tile, a ceiling trees do not derive
  from the raw count;
* for strided kernels, the output size (``HW_OUT``, ``OUT_PIXELS``);
* for kernels that run as a matrix product (dense conv, fc; :func:`nnmeter.ops.runs_as_gemm`):
  - its shape (``GEMM_M``, ``GEMM_N``, ``GEMM_K``, :func:`nnmeter.ops.gemm_shape`), from which the
    regressors' cost model counts the work in whole tiles;
  - the output channels in the last column tile (``COUT_TAIL32`` = ``(COUT - 1) % 32 + 1``, tiles of
    4-32): a layer whose last tile is short can run slower as a whole, not just in its tail;
  - the output pixels in the last row tile (``GEMM_M_TAIL7``, tiles of 4-8): the micro-kernel computes
    ``mr`` pixels at once and the runtime picks ``mr`` per layer from the pixel count;
  - whether a fully connected layer (an fc, or a 1x1 conv on a 1x1 map) runs on XNNPACK's half-width
    micro-kernel (``FC_HALF_TILE8/16/32``, :func:`half_tile_chosen`): such a layer is about 2x slower,
    and the regressors' cost model counts its tiles at half width;
* for a kernel with a family (:func:`nnmeter.ops.kernel_family`: ``conv-*``, ``dwconv-*``,
  ``add``/``addrelu``, ``bn``/``bnrelu``), a 0/1 column per op that follows the main op in any member
  (``WITH_BN``, ``WITH_RELU``, ...): one regressor trained on the family's measurements tells the members apart;
* logs of FLOPs and bytes moved, and the arithmetic intensity (``LOG_INTENSITY``, log FLOPs - log bytes
  read): whether a config is compute- or memory-bound, and for pooling how kernel size and stride relate.

Why computed features at all: trees fitted on a few hundred samples do not build ceilings, ratios or
tile remainders from raw columns (the gains, measured: docs/design-notes.md).

nn-Meter's own features are the config plus FLOPs and params (:func:`nnmeter_feature_columns`), which
its baseline regressor uses. The artifact records :data:`FEATURE_SCHEMA_VERSION` and each kernel's
feature names; the engine refuses an artifact whose schema differs.
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


def _size(cfg: Mapping[str, object], key: str) -> int:
    """The integer ``key`` of a config from :func:`nnmeter.ops.validate_config` (which makes sizes ints)."""
    value = cfg[key]
    if not isinstance(value, int):
        raise TypeError(f"config key {key}: {value!r} is not a validated size")
    return value


def _sizes(cfg: Mapping[str, object], key: str) -> list[int]:
    """The list of integers ``key`` (``CINS``) of a config from :func:`nnmeter.ops.validate_config`."""
    value = cfg[key]
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise TypeError(f"config key {key}: {value!r} is not a validated list of sizes")
    return value


def kernel_features(kernel: str, config: Mapping[str, object]) -> list[float]:
    """The feature vector of one kernel config (validated; a bad config raises ValueError)."""
    cfg = ops.validate_config(kernel, config)
    values: list[float] = []
    for key in ops.kernel_type(kernel).keys:
        if key == ops.CINS:
            cins = _sizes(cfg, key)
            values += [float(c) for c in cins] + [0.0] * (_MAX_CONCAT_INPUTS - len(cins)) + [float(len(cins))]
        else:
            values.append(float(_size(cfg, key)))
    cost = ops.kernel_cost(kernel, cfg)
    values += [float(cost.flops), float(cost.params), float(cost.bytes_read), float(cost.bytes_written)]
    keys = ops.kernel_type(kernel).keys
    for key in (ops.CIN, ops.COUT):
        if key in keys:
            channels = _size(cfg, key)
            values += [math.ceil(channels / tile) * tile / channels for tile in _CHANNEL_TILES]
    stride = next((_size(cfg, k) for k in _STRIDE_KEYS if k in keys), None)
    if stride is not None:
        hw_out = ops.out_hw(_size(cfg, ops.HW), stride)
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

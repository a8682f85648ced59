"""Fusion rules: which pairs of ops a device runs as one kernel. The one reader and writer of the format.

The file is JSON readable as nn-Meter's ``fusion_rules.json``:

* ``"BF_<op1>_<op2>": {"obey": true | false | null, ...}`` -- op1 followed by op2
  runs fused (``true``), as two kernels (``false``), or could not be decided (``null``,
  read as not fused). Longer keys (``BF_conv_bn_relu``) are chains, kept as read.
* ``"MON": {"obey": 0 | 1 | 2 | null}`` -- what the device does with an op whose
  output feeds several ops (multiple outbound nodes): ``0`` fuses it with none of
  them, ``1`` with its first consumer only, ``2`` with every consumer (the op is
  computed again in each branch). These are the values nn-Meter's kernel detector
  reads; its rule tester's ``"case1" | "case2" | "case3"`` are read as 0, 1, 2.
* ``"nnmeter": {"obey": null, ...}`` -- our metadata (device, backend, runtime,
  protocol, alpha). It carries ``obey: null`` because nn-Meter's reader looks up
  ``obey`` in every entry.

Our extra fields sit under ``"nnmeter"`` inside each entry (latencies with their
confidence intervals, the decision margin, the confidence); nn-Meter's
``"latency"`` strings (``"median +- half-width"``) are written too, for people used
to them. Op names are those of :mod:`nnmeter.ops`; nn-Meter's older aliases
(``dense``, ``gap``, ``pooling``) are translated when read.

This module imports nothing heavy: the predictor engine loads it without TensorFlow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nnmeter import ops
from nnmeter.errors import ConfigError

#: The multiple-outbound-node policies (the ``MON`` values).
MON_NONE = 0  # an op with several consumers is fused with none of them
MON_FIRST = 1  # ... with its first consumer only
MON_ALL = 2  # ... with every consumer
MON_VALUES = (MON_NONE, MON_FIRST, MON_ALL)
MON_NAMES = {MON_NONE: "none", MON_FIRST: "first", MON_ALL: "all"}

#: Key of the metadata entry in the JSON file.
META_KEY = "nnmeter"
#: Version of our extra fields; a file without them is a plain nn-Meter file.
FORMAT_VERSION = 1

#: nn-Meter names that differ from ours; ``pooling`` (its oldest files) stands for both pools.
_ALIASES: dict[str, tuple[str, ...]] = {
    "dense": (ops.FC,),
    "gap": (ops.GLOBAL_AVGPOOL,),
    "pooling": (ops.MAXPOOL, ops.AVGPOOL),
}
#: nn-Meter's MON test cases (the partitions of the block, see kernel_gen.pairs.MON_CASES) -> policy.
MON_CASE_VALUES = {"case1": MON_NONE, "case2": MON_FIRST, "case3": MON_ALL}


@dataclass(frozen=True)
class Measured:
    """A latency used by a decision: the median over rounds and the relative half-width of its 95 % CI."""

    median_ms: float
    median_ci: float = 0.0
    rounds: int = 0


@dataclass(frozen=True)
class PairRule:
    """The decision for op1 followed by op2.

    ``margin`` is ``(T1 + T2 - T12 - T0) / min(T1 - T0, T2 - T0) - alpha``: fused when
    positive; ``T0`` is the latency of an empty model (0 when not measured).
    ``margin_low``/``margin_high`` bound it (95 %, over ``passes`` independent
    measurements of the case), ``confidence`` is the probability that the margin has
    the decided sign, and ``uncertain`` says the interval contains 0 after every
    re-measurement allowed. ``obey`` is ``None`` when the case could not be decided
    (``error`` says why).
    """

    op1: str
    op2: str
    obey: bool | None
    t1: Measured | None = None
    t2: Measured | None = None
    t12: Measured | None = None
    t0: Measured | None = None  # the empty model: the runtime's cost of one inference, taken off
    margin: float | None = None
    margin_low: float | None = None
    margin_high: float | None = None
    confidence: float | None = None
    uncertain: bool = False
    error: str = ""
    passes: int = 0  # independent measurements (new loads, separate batches) the decision rests on

    @property
    def key(self) -> str:
        return pair_key(self.op1, self.op2)


@dataclass(frozen=True)
class MonRule:
    """The multiple-outbound-node decision: ``value`` is one of :data:`MON_VALUES`, ``None`` if undecided.

    ``latencies_ms`` holds the block's latency (``block``) and the summed latency of
    each candidate partition (``case1`` .. ``case3`` of :data:`MON_CASE_VALUES`); the
    partition closest to the block wins.
    """

    value: int | None
    latencies_ms: Mapping[str, float] = field(default_factory=dict)
    confidence: float | None = None
    uncertain: bool = False
    error: str = ""
    passes: int = 0


@dataclass(frozen=True)
class FusionRules:
    """The fusion rules of one device and backend.

    ``pairs`` maps ``(op1, op2)`` to its :class:`PairRule`; ``chains`` keeps
    longer ``BF_`` entries of nn-Meter files (op tuple -> obey) so that they are
    written back unchanged. ``source`` says where the rules came from (a path,
    ``"default"``, or ``"measured"``).
    """

    pairs: Mapping[tuple[str, str], PairRule] = field(default_factory=dict)
    mon: MonRule | None = None
    chains: Mapping[tuple[str, ...], bool | None] = field(default_factory=dict)
    device: str = ""
    backend: str = ""
    runtime: str = ""
    protocol: Mapping[str, Any] = field(default_factory=dict)
    alpha: float = 0.5
    source: str = ""

    def fused(self, op1: str, op2: str) -> bool:
        """Whether ``op1`` followed by ``op2`` runs as one kernel (False for unknown or undecided pairs)."""
        rule = self.pairs.get((op1, op2))
        return bool(rule is not None and rule.obey)

    def rule(self, op1: str, op2: str) -> PairRule | None:
        return self.pairs.get((op1, op2))

    @property
    def mon_policy(self) -> int:
        """The multiple-outbound-node policy (:data:`MON_NONE` when undecided, as nn-Meter)."""
        return self.mon.value if self.mon is not None and self.mon.value is not None else MON_NONE

    def fused_pairs(self) -> list[tuple[str, str]]:
        return [p for p, r in self.pairs.items() if r.obey]

    def undecided(self) -> list[str]:
        """Keys of the cases without a decision (errors), MON included."""
        keys = [r.key for r in self.pairs.values() if r.obey is None]
        if self.mon is not None and self.mon.value is None:
            keys.append("MON")
        return keys

    def uncertain(self) -> list[str]:
        """Keys of the decisions whose margin stayed inside the measurement noise."""
        keys = [r.key for r in self.pairs.values() if r.uncertain and r.obey is not None]
        if self.mon is not None and self.mon.uncertain:
            keys.append("MON")
        return keys


# --- names -------------------------------------------------------------------------


def pair_key(op1: str, op2: str) -> str:
    """The JSON key of a pair: ``BF_<op1>_<op2>`` (op names contain no underscore)."""
    return f"BF_{op1}_{op2}"


def default_rules() -> FusionRules:
    """Rules for a device without measured rules: the fusions named by the kernel vocabulary.

    Every two consecutive ops of a multi-op kernel of :data:`nnmeter.ops.KERNELS`
    (conv-bn-relu, bnrelu, addrelu, ...) are fused; nothing else is; MON is 0.
    This is what TFLite, OpenVINO and most mobile runtimes do for those pairs;
    measure the device's rules (``nnmeter-build rules``) to know the rest.
    """
    pairs: dict[tuple[str, str], PairRule] = {}
    for kernel in ops.KERNELS.values():
        for op1, op2 in zip(kernel.ops, kernel.ops[1:]):
            pairs[(op1, op2)] = PairRule(op1, op2, True)
    return FusionRules(pairs=pairs, mon=MonRule(MON_NONE), source="default")


# --- reading -----------------------------------------------------------------------


def load_rules(source: str | os.PathLike | Mapping[str, Any]) -> FusionRules:
    """Rules from our JSON file, an nn-Meter ``fusion_rules.json``, or the already parsed mapping.

    Raises :class:`~nnmeter.errors.ConfigError` naming the file and key when an entry is malformed
    or names an op outside the vocabulary.
    """
    if isinstance(source, Mapping):
        data, where = source, "<rules>"
    else:
        path = Path(source)
        where = str(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                where,
                "",
                "no such rules file",
                "measure them with `nnmeter-build rules WS`, or go without: default_rules()",
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(where, "", f"not a JSON rules file ({err})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(where, "", f"expected a JSON object of rules, got {type(data).__name__}")
    raw_meta = data.get(META_KEY)
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    pairs: dict[tuple[str, str], PairRule] = {}
    chains: dict[tuple[str, ...], bool | None] = {}
    mon: MonRule | None = None
    for key, entry in data.items():
        if key == META_KEY:
            continue
        if key == "MON":
            mon = _read_mon(entry, where)
        elif isinstance(key, str) and key.startswith("BF_"):
            names = key.split("_")[1:]
            obey = _read_obey(entry, where, key)
            try:
                expanded = _expand_ops(names, where, key)
            except ConfigError:
                if obey is not None:
                    raise
                # an undecided case the tester could not make (an unknown op, a malformed pair): kept as a record
                pairs[(names[0], "_".join(names[1:]))] = _read_pair(
                    names[0], "_".join(names[1:]), None, entry, where, key
                )
                continue
            for op_seq in expanded:
                if len(op_seq) == 2:
                    pairs[(op_seq[0], op_seq[1])] = _read_pair(op_seq[0], op_seq[1], obey, entry, where, key)
                else:
                    chains[tuple(op_seq)] = obey
        # other nn-Meter test cases (RBC, CBC, RT, ...) say nothing about pairs: skipped
    return FusionRules(
        pairs=pairs,
        mon=mon,
        chains=chains,
        device=str(meta.get("device", "")),
        backend=str(meta.get("backend", "")),
        runtime=str(meta.get("runtime", "")),
        protocol=dict(meta.get("protocol") or {}),
        alpha=float(meta.get("alpha", 0.5)),
        source=where,
    )


def _expand_ops(names: list[str], where: str, key: str) -> list[list[str]]:
    if len(names) < 2 or any(not n for n in names):
        raise ConfigError(where, key, "a BF_ key names two or more ops: BF_<op1>_<op2>")
    options: list[tuple[str, ...]] = []
    for name in names:
        if name in ops.OPS:
            options.append((name,))
        elif name in _ALIASES:
            options.append(_ALIASES[name])
        else:
            raise ConfigError(where, key, f"{name!r} is not an op; known: {', '.join(ops.OPS)}")
    seqs: list[list[str]] = [[]]
    for choice in options:
        seqs = [s + [c] for s in seqs for c in choice]
    return seqs


def _read_obey(entry: Any, where: str, key: str) -> bool | None:
    if not isinstance(entry, Mapping) or "obey" not in entry:
        raise ConfigError(where, key, "expected an object with an 'obey' field")
    obey = entry["obey"]
    if obey is not None and not isinstance(obey, bool):
        raise ConfigError(where, f"{key}.obey", f"{obey!r} is not true, false or null")
    return obey


def _read_pair(op1: str, op2: str, obey: bool | None, entry: Mapping[str, Any], where: str, key: str) -> PairRule:
    extra = entry.get(META_KEY)
    if not isinstance(extra, Mapping):
        return PairRule(op1, op2, obey)
    try:
        return PairRule(
            op1,
            op2,
            obey,
            t1=_read_measured(extra.get("t1")),
            t2=_read_measured(extra.get("t2")),
            t12=_read_measured(extra.get("t12")),
            t0=_read_measured(extra.get("t0")),
            margin=_opt_float(extra.get("margin")),
            margin_low=_opt_float(extra.get("margin_low")),
            margin_high=_opt_float(extra.get("margin_high")),
            confidence=_opt_float(extra.get("confidence")),
            uncertain=bool(extra.get("uncertain", False)),
            error=str(extra.get("error", "")),
            passes=int(extra.get("passes", 0)),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(where, f"{key}.{META_KEY}", f"malformed extra fields ({err})") from None


def _read_mon(entry: Any, where: str) -> MonRule:
    if not isinstance(entry, Mapping) or "obey" not in entry:
        raise ConfigError(where, "MON", "expected an object with an 'obey' field")
    obey = entry["obey"]
    if obey is None or obey is False:  # nn-Meter writes false when its dependency failed
        value = None
    elif isinstance(obey, str) and obey in MON_CASE_VALUES:
        value = MON_CASE_VALUES[obey]
    elif isinstance(obey, int) and not isinstance(obey, bool) and obey in MON_VALUES:
        value = obey
    else:
        raise ConfigError(where, "MON.obey", f"{obey!r} is not valid; valid: 0, 1, 2, case1, case2, case3, null")
    raw_extra = entry.get(META_KEY)
    extra: Mapping[str, Any] = raw_extra if isinstance(raw_extra, Mapping) else {}
    return MonRule(
        value=value,
        latencies_ms={str(k): float(v) for k, v in (extra.get("latencies_ms") or {}).items()},
        confidence=_opt_float(extra.get("confidence")),
        uncertain=bool(extra.get("uncertain", False)),
        error=str(extra.get("error", "")),
        passes=int(extra.get("passes", 0)),
    )


def _read_measured(value: Any) -> Measured | None:
    if value is None:
        return None
    return Measured(float(value["median_ms"]), float(value.get("median_ci", 0.0)), int(value.get("rounds", 0)))


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


# --- writing -----------------------------------------------------------------------


def rules_to_dict(rules: FusionRules) -> dict[str, Any]:
    """The JSON mapping of ``rules`` (see the module doc for the layout)."""
    out: dict[str, Any] = {
        META_KEY: {
            "obey": None,
            "format_version": FORMAT_VERSION,
            "device": rules.device,
            "backend": rules.backend,
            "runtime": rules.runtime,
            "protocol": dict(rules.protocol),
            "alpha": rules.alpha,
        }
    }
    for rule in rules.pairs.values():
        entry: dict[str, Any] = {"obey": rule.obey}
        latency = _nnmeter_latency(rule)
        if latency:
            entry["latency"] = latency
        extra = {
            "t1": _measured_dict(rule.t1),
            "t2": _measured_dict(rule.t2),
            "t12": _measured_dict(rule.t12),
            "t0": _measured_dict(rule.t0),
            "margin": rule.margin,
            "margin_low": rule.margin_low,
            "margin_high": rule.margin_high,
            "confidence": rule.confidence,
            "uncertain": rule.uncertain,
            "error": rule.error,
            "passes": rule.passes or None,
        }
        entry[META_KEY] = {k: v for k, v in extra.items() if v not in (None, "")}
        out[rule.key] = entry
    for chain, obey in rules.chains.items():
        out["BF_" + "_".join(chain)] = {"obey": obey}
    if rules.mon is not None:
        mon = rules.mon
        extra = {
            "policy": MON_NAMES.get(mon.value) if mon.value is not None else None,
            "latencies_ms": dict(mon.latencies_ms),
            "confidence": mon.confidence,
            "uncertain": mon.uncertain,
            "error": mon.error,
            "passes": mon.passes or None,
        }
        out["MON"] = {"obey": mon.value, META_KEY: {k: v for k, v in extra.items() if v not in (None, "", {})}}
    return out


def save_rules(rules: FusionRules, path: str | os.PathLike) -> Path:
    """Write ``rules`` as JSON to ``path`` (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(rules_to_dict(rules), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _measured_dict(m: Measured | None) -> dict[str, Any] | None:
    return None if m is None else {"median_ms": m.median_ms, "median_ci": m.median_ci, "rounds": m.rounds}


def _nnmeter_latency(rule: PairRule) -> dict[str, str]:
    """nn-Meter's ``latency`` strings: op1, op2 (``_1``/``_2`` when equal), ``block``, ``ops``."""
    if rule.t1 is None or rule.t2 is None or rule.t12 is None:
        return {}
    a, b = (rule.op1, rule.op2) if rule.op1 != rule.op2 else (rule.op1 + "_1", rule.op2 + "_2")

    def show(m: Measured) -> str:
        return f"{m.median_ms:.6g} +- {m.median_ms * m.median_ci:.3g}"

    ops_sum = Measured(
        rule.t1.median_ms + rule.t2.median_ms,
        (rule.t1.median_ms * rule.t1.median_ci + rule.t2.median_ms * rule.t2.median_ci)
        / max(rule.t1.median_ms + rule.t2.median_ms, 1e-12),
    )
    return {a: show(rule.t1), b: show(rule.t2), "block": show(rule.t12), "ops": show(ops_sum)}

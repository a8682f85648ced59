"""A model runner that times LiteRT (TFLite) invocations, driven by JSON lines on stdin/stdout.

Self-contained on purpose: it imports only the standard library, numpy and
``ai_edge_litert``, so the same file is copied to remote Linux boards and run
there over SSH (``python3 litert_runner.py``). nnmeter's local backends run it
as a subprocess pinned to the measuring core(s), so that the process timing
models is never the one running TensorFlow. ``openvino_runner.py`` reuses its
command loop (:func:`serve`) with another :class:`Engine`.

Protocol (version 1). One JSON object per line each way, one reply per request::

    -> {"id": 1, "cmd": "info", "probe": true}
    <- {"id": 1, "ok": true, "runtime": "ai-edge-litert", "versions": {...}, "cpu": "...",
        "affinity": [1], "cores": 2, "os": "...", "machine": "x86_64", "pid": 123,
        "private_cache_bytes": 2097152,     # null when sysfs does not say
        "xnnpack": true}                    # "xnnpack" only with "probe": true
    -> {"id": 2, "cmd": "load", "path": "/abs/m.tflite", "threads": 1}
    <- {"id": 2, "ok": true, "handle": 1, "inputs": [[1, 28, 28, 64]],
        "xnnpack": true, "fallback_ops": ["CONCATENATION"], "thread_clock": true}
    -> {"id": 3, "cmd": "warmup", "handle": 1, "runs": 5}
    <- {"id": 3, "ok": true}
    -> {"id": 4, "cmd": "run", "handle": 1, "runs": 3, "min_time_ms": 2.0, "clock": "thread",
        "settle_runs": 16}
    <- {"id": 4, "ok": true, "times_ms": [0.81, 0.79, 0.80]}
    -> {"id": 5, "cmd": "unload", "handle": 1}
    <- {"id": 5, "ok": true}
    -> {"id": 6, "cmd": "quit"}
    <- {"id": 6, "ok": true}                # then the process exits 0

``run`` first invokes the model untimed, at most ``settle_runs`` times (default 0),
until an invocation is no faster than :data:`SETTLED` times the one before it; then it
invokes at least ``runs`` times and keeps invoking until ``min_time_ms``
has passed; each time is ``time.perf_counter`` around one ``invoke()``, or, with
``"clock": "thread"``, the CPU time of the invoking thread (``time.thread_time``).
The thread clock is only offered where the whole inference runs on the calling
thread (LiteRT with 1 thread: the load reply says ``"thread_clock": true``): then
other processes sharing the measuring core do not change the time. Inputs are set
once, at load, with random data. Settling exists because a model's first invocations
after anything else ran on the core are slow, over several invocations for megabytes
of weights (docs/design-notes.md). Unknown ``run`` fields are ignored. ``load`` options
other than ``path`` and ``threads`` are engine-specific (OpenVINO: ``device``).

Any failure of a command is a reply ``{"id": n, "ok": false, "error": "one line"}``
and the process goes on; only a crash of the runtime itself ends it (the client
sees end-of-file). Replies go to a private copy of stdout; file descriptor 1 is
pointed at stderr, so that native code printing to stdout cannot corrupt the
reply stream. A line that is not JSON gets an error reply with id null.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Callable, Generic, Iterable, Protocol, TypeVar

import numpy as np

PROTOCOL_VERSION = 1
MAX_RUNS_PER_ROUND = 100_000  # bound on a round of a very fast model under a long min_time_ms
SETTLED = 0.97  # an invocation at least this fraction of the one before it: the warm-up ramp has flattened


ModelT = TypeVar("ModelT")


class CommandError(Exception):
    """A command that cannot be done; its message becomes the error reply."""


class Engine(Generic[ModelT]):
    """A runtime behind the command loop: load a model, invoke it, say what it is; ``ModelT`` is its model handle."""

    runtime = ""

    def versions(self) -> dict:
        raise NotImplementedError

    def load(self, path: str, threads: int, options: dict) -> tuple[ModelT, dict]:
        """The loaded model (inputs already set) and facts about it for the load reply."""
        raise NotImplementedError

    def invoke(self, model: ModelT) -> None:
        raise NotImplementedError

    def runs_on_calling_thread(self, threads: int) -> bool:
        """Whether an inference with ``threads`` runs entirely on the thread that invokes it."""
        return False

    def probe(self) -> dict:
        """Facts that need a model to find out (info with "probe": true)."""
        return {}


class InterpreterHandle(Protocol):
    """What the command loop uses of a LiteRT ``Interpreter``."""

    def invoke(self) -> None: ...


class LiteRTEngine(Engine[InterpreterHandle]):
    runtime = "ai-edge-litert"

    def __init__(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter_class = Interpreter

    def versions(self) -> dict:
        return {"ai-edge-litert": _dist_version("ai-edge-litert"), "numpy": np.__version__}

    def load(self, path: str, threads: int, options: dict) -> tuple[InterpreterHandle, dict]:
        if options:
            raise CommandError(f"unknown load options for LiteRT: {', '.join(sorted(options))}")
        if not os.path.isfile(path):
            raise CommandError(f"{path}: no such model file")
        interpreter = self._interpreter_class(model_path=path, num_threads=threads)
        return interpreter, self._prepare(interpreter)

    def invoke(self, model: InterpreterHandle) -> None:
        model.invoke()

    def runs_on_calling_thread(self, threads: int) -> bool:
        return threads == 1  # XNNPACK and the built-in kernels start no thread pool for one thread

    def probe(self) -> dict:
        """Whether the XNNPACK delegate is applied, found with a one-ADD model built in memory."""
        try:
            interpreter = self._interpreter_class(model_content=_one_add_model(), num_threads=1)
        except ImportError as err:  # an old runtime without the schema module
            return {"xnnpack": None, "probe_error": str(err)}
        return {"xnnpack": self._prepare(interpreter)["xnnpack"]}

    @staticmethod
    def _prepare(interpreter) -> dict:
        interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        shapes = []
        for detail in interpreter.get_input_details():
            shape = [int(d) for d in detail["shape"]]
            interpreter.set_tensor(detail["index"], _random(rng, shape, detail["dtype"]))
            shapes.append(shape)
        xnnpack, fallback = _delegation(interpreter)
        return {"inputs": shapes, "xnnpack": xnnpack, "fallback_ops": fallback}


def _delegation(interpreter) -> tuple[bool | None, list[str]]:
    """Whether a delegate (XNNPACK, the only default one) took ops, and the ops it left to built-in kernels.

    After delegation the op list holds the original nodes plus one DELEGATE node
    per partition; a partition's ops are found walking back from its outputs to its inputs.
    """
    try:
        ops = interpreter._get_ops_details()  # no public API tells which nodes were delegated
    except AttributeError:
        return None, []
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op["index"] for op in originals for t in op["outputs"]}
    by_index = {op["index"]: op for op in originals}
    delegated: set[int] = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer or producer[tensor] in delegated:
                continue
            delegated.add(producer[tensor])
            stack.extend(int(t) for t in by_index[producer[tensor]]["inputs"])
    fallback = [op["op_name"] for op in originals if op["index"] not in delegated]
    return bool(delegates), fallback


def _one_add_model() -> bytes:
    """A float32 model with one ADD of two [1, 8] inputs, as .tflite bytes."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    tensors = []
    for name in (b"a", b"b", b"sum"):
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.name, tensor.buffer = [1, 8], schema.TensorType.FLOAT32, name, 0
        tensors.append(tensor)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0, 1], [2], [op]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.buffers, model.subgraphs = 3, [code], [schema.BufferT()], [graph]
    builder = flatbuffers.Builder(256)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _random(rng, shape: list[int], dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127), size=shape, endpoint=True).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 1, size=shape, endpoint=True).astype(dtype)
    raise CommandError(f"cannot make random input of type {dtype}")


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # metadata missing on some board images: report, do not fail
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_bytes(cpu: int, private: bool, root: str = "/sys/devices/system/cpu") -> int | None:
    """The size of the largest data or unified cache of ``cpu`` (with ``private``: of those it does not share
    with another core); None when sysfs does not say."""
    sizes = []
    base = os.path.join(root, f"cpu{cpu}", "cache")
    try:
        entries = [e for e in os.listdir(base) if e.startswith("index")]
    except OSError:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

    def read(entry: str, name: str) -> str:
        with open(os.path.join(base, entry, name)) as f:
            return f.read().strip()

    for entry in entries:
        try:
            kind, size, shared = read(entry, "type"), read(entry, "size"), read(entry, "shared_cpu_list")
        except OSError:
            continue
        if kind == "Instruction" or (private and shared != str(cpu)):
            continue
        sizes.append(int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size))
    return max(sizes) if sizes else None


def _affinity() -> list[int]:
    """The cores this process may run on, in order (empty where the OS does not say)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _first_cpu() -> int:
    """The first core this process may run on (the measuring core when it is pinned)."""
    return (_affinity() or [0])[0]


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def settle(invoke: Callable[[ModelT], None], model: ModelT, max_runs: int, clock: str = "wall") -> int:
    """Untimed invocations until one takes at least :data:`SETTLED` times the one before (at most ``max_runs``);
    returns how many ran."""
    timer = CLOCKS[clock]
    previous = float("inf")
    for n in range(1, max_runs + 1):
        t0 = timer()
        invoke(model)
        elapsed = timer() - t0
        if elapsed >= SETTLED * previous:
            return n
        previous = elapsed
    return max_runs


def timed_runs(
    invoke: Callable[[ModelT], None], model: ModelT, runs: int, min_time_ms: float, clock: str = "wall"
) -> list[float]:
    """Per-invocation times (ms) on ``clock`` (see :data:`CLOCKS`): at least ``runs`` of them, and at least
    ``min_time_ms`` (wall clock) in total."""
    times: list[float] = []
    wall, timer = time.perf_counter, CLOCKS[clock]
    deadline = wall() + min_time_ms / 1000.0
    while len(times) < runs or (wall() < deadline and len(times) < MAX_RUNS_PER_ROUND):
        t0 = timer()
        invoke(model)
        times.append((timer() - t0) * 1000.0)
    return [float(f"{t:.4g}") for t in times]  # 4 digits: far below the noise, and short replies


def serve(engine: Engine[ModelT], stdin: Iterable[str] | None = None) -> int:
    """Answer commands from ``stdin`` until ``quit`` or end of input; returns the exit code."""
    reply_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # native code that prints to stdout now prints to stderr
    sys.stdout = sys.stderr
    stdin = stdin or sys.stdin
    models: dict[int, ModelT] = {}
    thread_clock: dict[int, bool] = {}  # handle -> whether "clock": "thread" times it fully
    next_handle = 1

    def reply(payload: dict) -> None:
        reply_stream.write(json.dumps(payload) + "\n")

    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as err:
            reply({"id": None, "ok": False, "error": f"bad request line: {err}"})
            continue
        rid, cmd = request.get("id"), request.get("cmd")
        try:
            if cmd == "quit":
                reply({"id": rid, "ok": True})
                return 0
            if cmd == "info":
                result = {
                    "runtime": engine.runtime,
                    "protocol": PROTOCOL_VERSION,
                    "versions": {**engine.versions(), "python": platform.python_version()},
                    "cpu": _cpu_model(),
                    "machine": platform.machine(),
                    "os": platform.platform(),
                    "cores": os.cpu_count(),
                    "pid": os.getpid(),
                    "private_cache_bytes": cache_bytes(_first_cpu(), True),
                    "affinity": _affinity(),
                }
                if request.get("probe"):
                    result.update(engine.probe())
            elif cmd == "load":
                options = {k: v for k, v in request.items() if k not in ("id", "cmd", "path", "threads")}
                threads = int(request.get("threads", 1))
                model, facts = engine.load(str(request["path"]), threads, options)
                models[next_handle] = model
                thread_clock[next_handle] = engine.runs_on_calling_thread(threads)
                result = {"handle": next_handle, **facts, "thread_clock": thread_clock[next_handle]}
                next_handle += 1
            elif cmd in ("warmup", "run", "unload"):
                handle = request.get("handle")
                if handle not in models:
                    raise CommandError(f"no loaded model with handle {handle!r}")
                if cmd == "unload":
                    del models[handle], thread_clock[handle]
                    result = {}
                elif cmd == "warmup":
                    timed_runs(engine.invoke, models[handle], int(request.get("runs", 1)), 0.0)
                    result = {}
                else:
                    clock = request.get("clock", "wall")
                    if clock not in CLOCKS:
                        raise CommandError(f"unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
                    if clock == "thread" and not thread_clock[handle]:
                        raise CommandError(
                            "the thread clock misses work this model does on other threads; use the wall clock"
                        )
                    settle(engine.invoke, models[handle], int(request.get("settle_runs", 0)), clock)
                    result = {
                        "times_ms": timed_runs(
                            engine.invoke,
                            models[handle],
                            int(request.get("runs", 1)),
                            float(request.get("min_time_ms", 0.0)),
                            clock,
                        )
                    }
            else:
                raise CommandError(f"unknown command {cmd!r}; known: info, load, warmup, run, unload, quit")
        except KeyError as err:
            reply({"id": rid, "ok": False, "error": f"{cmd}: missing field {err}"})
        except Exception as err:  # every failure of a command is a reply; the runner stays up
            message = " ".join(str(err).split()) or type(err).__name__
            reply({"id": rid, "ok": False, "error": f"{type(err).__name__}: {message}"[:2000]})
        else:
            reply({"id": rid, "ok": True, **result})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(serve(LiteRTEngine()))

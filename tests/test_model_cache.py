"""The user cache of generated model files: bounded with least-recently-used eviction, whole files only with
writers in several processes, configured by the environment, and used by ``MeasuringSession.prepare`` so that a
second workspace, or a file deleted once measured, takes the converted file instead of converting again."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from nnmeter.measurement.model_cache import ModelCache


def _model(path, size: int, byte: int = 1):
    path.write_bytes(bytes([byte]) * size)
    return path


@pytest.mark.unit
def test_store_then_fetch_gives_the_same_bytes_and_other_formats_are_not_cached(tmp_path):
    cache = ModelCache(tmp_path / "cache", max_bytes=10_000)
    src = _model(tmp_path / "a.tflite", 100, 7)
    assert not cache.fetch("id1", "tflite", tmp_path / "ws" / "x.tflite")  # a miss
    assert cache.store("id1", "tflite", src)
    assert not cache.store("id1", "tflite", src)  # cached already: kept as it is
    assert cache.fetch("id1", "tflite", tmp_path / "ws" / "x.tflite")
    assert (tmp_path / "ws" / "x.tflite").read_bytes() == src.read_bytes()
    assert not cache.store("id2", "openvino", src) and cache.path("id2", "openvino") is None
    assert not [p for p in (tmp_path / "ws").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.unit
def test_the_least_recently_used_files_go_when_the_cache_is_over_its_bound(tmp_path):
    cache = ModelCache(tmp_path / "cache", max_bytes=1000)
    for i in range(3):
        cache.store(f"m{i}", "tflite", _model(tmp_path / f"{i}.tflite", 300))
        os.utime(cache.path(f"m{i}", "tflite"), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.fetch("m0", "tflite", tmp_path / "used.tflite")  # m0 used now: m1 is the oldest
    cache.store("m3", "onnx", _model(tmp_path / "3.onnx", 300))  # 1,200 bytes > 1,000: down to <= 900
    left = {
        p.stem
        for f in ("tflite", "onnx")
        if (tmp_path / "cache" / f).is_dir()
        for p in (tmp_path / "cache" / f).iterdir()
    }
    assert left == {"m0", "m2", "m3"}


@pytest.mark.unit
@pytest.mark.parametrize(
    "env, expected",
    [
        ({"NNMETER_MODEL_CACHE": "off"}, None),
        ({"NNMETER_MODEL_CACHE": ""}, None),
        ({"NNMETER_MODEL_CACHE": "{tmp}/here"}, ("{tmp}/here", 2048e6)),
        ({"XDG_CACHE_HOME": "{tmp}/xdg", "NNMETER_MODEL_CACHE_MB": "5"}, ("{tmp}/xdg/nnmeter/models", 5e6)),
        ({"XDG_CACHE_HOME": "{tmp}/xdg", "NNMETER_MODEL_CACHE_MB": "0"}, None),
    ],
)
def test_the_environment_moves_bounds_or_switches_off_the_cache(tmp_path, monkeypatch, env, expected):
    for key in ("NNMETER_MODEL_CACHE", "XDG_CACHE_HOME", "NNMETER_MODEL_CACHE_MB"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    cache = ModelCache.from_env()
    if expected is None:
        assert cache is None
    else:
        assert (str(cache.root), cache.max_bytes) == (expected[0].format(tmp=tmp_path), int(expected[1]))


def _writer(root: str, src: str, n: int) -> None:
    cache = ModelCache(root, max_bytes=50_000)
    for i in range(n):
        cache.store(f"m{i % 40}", "tflite", src)
        cache.fetch(f"m{(i * 7) % 40}", "tflite", f"{src}.{os.getpid()}.{i}.out")


@pytest.mark.unit
def test_writers_in_several_processes_leave_whole_files_only(tmp_path):
    root = tmp_path / "cache"
    sources = [_model(tmp_path / f"s{j}.tflite", 4000, 9) for j in range(3)]
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(str(root), str(s), 120)) for s in sources]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    files = list((root / "tflite").iterdir())
    assert files and all(f.read_bytes() == sources[0].read_bytes() for f in files)  # no torn or temporary file
    assert sum(f.stat().st_size for f in files) <= 50_000
    outs = list(tmp_path.glob("s*.tflite.*.out"))
    assert outs and all(o.read_bytes() == sources[0].read_bytes() for o in outs)


@pytest.mark.integration
def test_a_second_workspace_takes_converted_kernels_from_the_cache(tmp_path):
    from nnmeter.backends import create_backend
    from nnmeter.builder.workspace import Workspace
    from nnmeter.measurement import kernel_spec
    from nnmeter.progress import Reporter

    class Notes(Reporter):
        def __init__(self):
            self.notes = []

        def note(self, text, *, warning=False):
            self.notes.append(text)

    cache = ModelCache(tmp_path / "cache")
    specs = [
        kernel_spec("conv-bn-relu", {"HW": 8, "CIN": c, "COUT": 8, "KERNEL_SIZE": 3, "STRIDES": 1}) for c in (4, 8)
    ]
    files = {}
    with create_backend("tflite-local") as backend:
        for name in ("one", "two"):
            ws = Workspace.create(tmp_path / name, "tflite-local")
            notes = Notes()
            session = ws.session(backend, workers=1, reporter=notes)
            session.cache = cache
            prepared = session.prepare(specs)
            assert all(p.ok and not p.reused for p in prepared)
            files[name] = [p.file.path for p in prepared]
            if name == "one":
                assert not notes.notes  # nothing cached yet: converted, then cached
                assert all(cache.path(p.id, "tflite").is_file() for p in prepared)
            else:
                assert notes.notes == [f"2 of 2 models taken from the model cache ({cache.root})"]
            ws.close()
        assert [f.read_bytes() for f in files["one"]] == [f.read_bytes() for f in files["two"]]
        # a file deleted once measured is put back from the cache, under the same record
        ws = Workspace.open(tmp_path / "one")
        files["one"][0].unlink()
        session = ws.session(backend, workers=1)
        session.cache = cache
        again = session.prepare(specs[:1])
        assert again[0].ok and again[0].file.path == files["one"][0] and files["one"][0].is_file()
        assert ws.store.get_model(again[0].id).path("tflite", ws.root) == files["one"][0]
        ws.close()

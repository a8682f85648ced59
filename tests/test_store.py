"""The measurement store: round trip, newest-per-model queries, migrations, crash safety; measure_models."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from nnmeter.backends.base import MeasureStatus, OpTime
from nnmeter.backends.protocol import LatencyStats, MeasurementProtocol
from nnmeter.measurement.store import MIGRATIONS, SCHEMA_VERSION, MeasurementRecord, ModelRecord, Store, StoreError

STATS = LatencyStats.from_rounds([[1.0, 1.2, 1.1], [1.3, 1.25, 1.4], [0.9, 1.0, 1.05]])


def measurement(model_id: str, status: str = "ok", protocol_key: str = "p1", **kw) -> MeasurementRecord:
    has_stats = MeasureStatus(status).has_latency
    return MeasurementRecord(
        model_id=model_id,
        device="local:test",
        backend="tflite-local",
        protocol_key=protocol_key,
        status=status,
        stats=STATS if has_stats else None,
        error="" if has_stats else "boom",
        **kw,
    )


@pytest.mark.unit
def test_models_and_measurements_round_trip(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        kid = "conv-bn-relu-28-16"
        store.add_model(
            ModelRecord(
                id=kid,
                kind="kernel",
                name="conv-bn-relu",
                config={"HW": 28, "CIN": 16},
                files={"keras": "models/a.keras"},
            )
        )
        merged = store.add_model(
            ModelRecord(id=kid, kind="kernel", name="conv-bn-relu", files={"tflite": "models/tflite/a.tflite"})
        )
        assert merged.files == {"keras": "models/a.keras", "tflite": "models/tflite/a.tflite"}
        assert merged.config == {"HW": 28, "CIN": 16}  # the first record's config is kept
        store.add_model(ModelRecord(id="u1", kind="user", name="net.tflite", files={"tflite": "models/u1.tflite"}))
        rec = store.add_measurement(
            measurement(
                kid,
                runtime_versions={"ai-edge-litert": "2.3.0"},
                protocol={"rounds": 3},
                op_profile=(OpTime("conv", "CONV_2D", 0.5, 80.0),),
            )
        )
        assert rec.id is not None

    with Store.open(tmp_path / "s.sqlite") as store:  # reopened: everything came from the file
        assert store.get_model(kid).files["tflite"] == "models/tflite/a.tflite"
        assert store.get_model("missing") is None
        assert [m.id for m in store.models(kind="kernel")] == [kid]
        assert [m.id for m in store.models(kind="user", name="net.tflite")] == ["u1"]
        [(model, got)] = store.latest_measurements("local:test", "tflite-local", "p1")
        assert model.id == kid and got.id == rec.id
        assert got.stats == STATS and got.status is MeasureStatus.OK
        assert got.runtime_versions == {"ai-edge-litert": "2.3.0"} and got.protocol == {"rounds": 3}
        assert got.op_profile == (OpTime("conv", "CONV_2D", 0.5, 80.0),)
        assert got.latency_ms == STATS.median_ms


def at(ms: float) -> LatencyStats:
    """Statistics of a measurement whose every invocation took ``ms``."""
    return LatencyStats.from_rounds([[ms, ms, ms]] * 3)


@pytest.mark.unit
def test_a_batch_is_scaled_by_its_anchors_when_stored_and_reads_the_same_forever(tmp_path: Path) -> None:
    """The 4th batch ran every anchor 25 % slower than their median so far: its models are scaled back; batches
    stored later, however slow, do not move what was stored before."""
    with Store(tmp_path / "s.sqlite") as store:
        for mid in ("anchor-a", "anchor-b"):
            store.add_model(ModelRecord(id=mid, kind="anchor", name="conv-bn-relu"))
        store.add_model(ModelRecord(id="k", kind="kernel", name="conv-bn-relu"))

        def batch(name: str, speed: float, *models: MeasurementRecord) -> list[MeasurementRecord]:
            anchors = [
                dataclasses.replace(measurement(mid), stats=at(base * speed))
                for mid, base in (("anchor-a", 0.1), ("anchor-b", 0.4))
            ]
            return store.add_batch([*models, *anchors], batch=name)

        for name in ("b1", "b2", "b3"):
            assert {m.drift_factor for m in batch(name, 1.0)} == {1.0}
        k = batch("slow", 1.25, dataclasses.replace(measurement("k"), stats=at(2.5)))[0]
        assert k.stats.median_ms == pytest.approx(2.5) and k.latency_ms == pytest.approx(2.0)
        for name in ("s1", "s2", "s3", "s4"):  # the typical speed moves: what was stored does not
            batch(name, 1.25)
        [(_, stored)] = store.latest_measurements("local:test", "tflite-local", "p1", kind="kernel")
        assert stored == k and stored.latency_ms == pytest.approx(2.0)
        [plain] = store.add_batch([dataclasses.replace(measurement("k"), stats=at(2.5))], batch="no-anchors")
        assert plain.drift_factor == 1.0 and plain.latency_ms == pytest.approx(2.5)  # as measured
    with pytest.raises(ValueError, match="one device, backend and protocol"):
        Store(tmp_path / "s.sqlite").add_batch([measurement("k"), measurement("k", protocol_key="p2")], batch="x")


@pytest.mark.parametrize(
    "models_follow, pairs, weight",
    [
        (1.0, 40, 1.0),  # the models slow down with the anchors: the full factors take the drift off
        (0.0, 40, 0.0),  # the anchors slow down, the models do not: the factors would add the anchors' drift
        (0.5, 40, 0.5),  # the models share half the anchors' drift (in the log)
        (0.0, 10, 1.0),  # too few repeated measurements to weigh: the anchors' design holds
    ],
)
@pytest.mark.unit
def test_anchor_factors_apply_at_the_weight_that_brings_repeated_measurements_closest(
    tmp_path: Path, models_follow: float, pairs: int, weight: float
) -> None:
    slowdown = {"first": 1.0, "second": 1.2}  # of the anchors, batch by batch
    with Store(tmp_path / "s.sqlite") as store:
        store.add_model(ModelRecord(id="anchor", kind="anchor", name="conv-bn-relu"))
        for i in range(pairs):
            store.add_model(ModelRecord(id=f"k{i}", kind="rule-case", name="conv-relu"))
        for series, (batch, factor) in zip(("pass1", "pass2"), slowdown.items()):
            models = []
            for i in range(pairs):
                noise = 1 + 0.01 * ((i % 5) - 2)  # the second measurement also differs by up to +-2 %, drift aside
                ms = (1.0 + i) * factor**models_follow * (noise if batch == "second" else 1)
                models.append(dataclasses.replace(measurement(f"k{i}", series=series), stats=at(ms)))
            store.add_batch([*models, dataclasses.replace(measurement("anchor"), stats=at(0.1 * factor))], batch)
        check = store.drift_check("local:test", "tflite-local", "p1")
        assert check.pairs == pairs and check.weight == pytest.approx(weight, abs=0.02)
        if pairs >= 30:
            assert check.weighted_spread <= min(check.measured_spread, check.anchored_spread)
            assert f"weight {weight:.2f}" in check.describe()
        # the next batch, as slow as the second, gets the anchor's factor at the weight fitted on what was stored
        [third, _] = store.add_batch(
            [
                dataclasses.replace(measurement("k0", series="pass3"), stats=at(1.0)),
                dataclasses.replace(measurement("anchor"), stats=at(0.12)),
            ],
            "third",
        )
        assert third.drift_factor == pytest.approx((0.12 / 0.12) ** check.weight)  # median of 0.1, 0.12, 0.12


@pytest.mark.unit
def test_latency_is_the_protocols_statistic_and_anchors_are_read_by_their_median(tmp_path: Path) -> None:
    """Under ``statistic: min`` a record's latency is its fastest round; the drift anchors are read by their
    median, so a fast round of an anchor does not move its batch, a slower median does."""

    def runs(fastest: float, typical: float) -> LatencyStats:
        return LatencyStats.from_rounds([[fastest] * 3] + [[typical] * 3] * 4)

    protocol = {"statistic": "min"}
    with Store(tmp_path / "s.sqlite") as store:
        store.add_model(ModelRecord(id="anchor", kind="anchor", name="conv-bn-relu"))
        store.add_model(ModelRecord(id="k", kind="kernel", name="conv-bn-relu"))
        factors = {}
        for batch, fastest, typical in (("a", 0.10, 0.3), ("b", 0.25, 0.3), ("a2", 0.10, 0.3), ("c", 0.10, 0.6)):
            records = [dataclasses.replace(measurement("anchor", protocol=protocol), stats=runs(fastest, typical))]
            if batch == "c":
                records.append(dataclasses.replace(measurement("k", protocol=protocol), stats=runs(1.0, 4.0)))
            factors[batch] = store.add_batch(records, batch)[0].drift_factor
        assert factors["b"] == pytest.approx(1.0)  # a fast round of the anchor moves nothing
        assert factors["c"] == pytest.approx(0.5)  # its median doubled: median so far 0.3 / 0.6
        [(_, k)] = store.latest_measurements("local:test", "tflite-local", "p1", kind="kernel")
        assert k.statistic == "min" and k.latency_ms == pytest.approx(0.5)
        older = dataclasses.replace(measurement("k"), stats=runs(1.0, 4.0))  # no statistic recorded: the median
        assert older.latency_ms == pytest.approx(4.0)
    with pytest.raises(ValueError, match="unknown statistic 'mean'"):
        STATS.value("mean")


@pytest.mark.unit
def test_newest_measurement_per_model_decides(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        for mid in ("a", "b", "c"):
            store.add_model(ModelRecord(id=mid, kind="kernel", name="fc", files={"tflite": f"{mid}.tflite"}))
        store.add_measurement(measurement("a", "error"))
        store.add_measurement(measurement("a", "ok"))  # a: failed, then measured
        store.add_measurement(measurement("b", "ok"))
        store.add_measurement(measurement("b", "crash"))  # b: measured, then a failed re-measurement
        store.add_measurement(measurement("c", "unstable"))
        store.add_measurement(measurement("c", "ok", protocol_key="p2"))  # another protocol: not mixed in

        assert store.measured_ids("local:test", "tflite-local", "p1") == {"a", "c"}
        assert store.measured_ids("local:test", "tflite-local", "p2") == {"c"}
        assert store.measured_ids("other", "tflite-local", "p1") == set()
        assert store.measured_ids("local:test", "tflite-local", "p1", kind="kernel", name="fc") == {"a", "c"}
        assert store.measured_ids("local:test", "tflite-local", "p1", kind="kernel", name="conv") == set()
        latest = store.latest_measurements("local:test", "tflite-local", "p1")
        assert [(m.id, r.status.value) for m, r in latest] == [("a", "ok"), ("b", "crash"), ("c", "unstable")]
        ok = store.latest_measurements("local:test", "tflite-local", "p1", statuses=["ok"])
        assert [m.id for m, _ in ok] == ["a"]
        assert store.latest_measurements("local:test", "tflite-local", "p1", kind="user") == []

        store.add_model(ModelRecord(id="u", kind="user", name="x.tflite"))
        summary = store.summary()
        assert summary.models == {"kernel": 3, "user": 1}
        assert summary.statuses["kernel"] == {"ok": 2, "crash": 1}  # c's newest is the p2 measurement
        assert summary.statuses["user"] == {"unmeasured": 1}
        setups = {s.protocol_key: s for s in summary.setups}
        assert setups["p1"].models == 3 and setups["p1"].measurements == 5
        assert setups["p1"].statuses == {"ok": 1, "crash": 1, "unstable": 1}


@pytest.mark.unit
def test_series_keep_independent_measurements_side_by_side(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        store.add_model(ModelRecord(id="a", kind="rule-case", name="relu@8", files={"tflite": "a.tflite"}))
        plain = store.add_measurement(measurement("a"))
        first = store.add_measurement(measurement("a", series="pass1"))
        second = store.add_measurement(measurement("a", "crash", series="pass2"))
        assert [m.id for _, m in store.latest_measurements("local:test", "tflite-local", "p1")] == [plain.id]
        [(_, got)] = store.latest_measurements("local:test", "tflite-local", "p1", series="pass1")
        assert got.id == first.id and got.series == "pass1"
        assert store.measured_ids("local:test", "tflite-local", "p1", series="pass2") == set()  # newest crashed
        assert store.latest_measurements("local:test", "tflite-local", "p1", series="pass2")[0][1].id == second.id


@pytest.mark.unit
def test_state_and_bad_records(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        assert store.get_state("rules", default={}) == {}
        store.set_state("rules", {"done": ["conv"], "n": 1})
        store.set_state("rules", {"done": ["conv", "dwconv"], "n": 2})
        assert store.get_state("rules") == {"done": ["conv", "dwconv"], "n": 2}
        with pytest.raises(ValueError, match="model kind 'kernal' is not valid"):
            ModelRecord(id="x", kind="kernal", name="fc")
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys are on: no measurement of an unknown model
            store.add_measurement(measurement("no-such-model"))
        assert store.latest_measurements("local:test", "tflite-local", "p1") == []


@pytest.mark.unit
def test_migrates_a_version_1_store(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # a store as the first schema version wrote it
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO models VALUES ('m1', 'user', 'net.tflite', '{}', '{\"tflite\": \"m1.tflite\"}', 1.0)")
    db.execute(
        "INSERT INTO measurements (model_id, device, backend, protocol_key, status, stats, started_at, "
        "finished_at) VALUES ('m1', 'd', 'b', 'p', 'error', NULL, 1.0, 2.0)"
    )
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.get_model("m1").files == {"tflite": "m1.tflite"}
        [(_, old)] = store.latest_measurements("d", "b", "p")
        assert old.status is MeasureStatus.ERROR and old.stats is None
        store.set_state("k", 1)  # the table version 2 added
        assert store.get_state("k") == 1
        assert old.series == ""  # the column version 3 added
    with Store(path) as store:  # opening an up-to-date store changes nothing
        assert store.schema_version == SCHEMA_VERSION


@pytest.mark.unit
def test_a_store_from_before_stored_drift_factors_gets_them_as_they_would_have_been_decided(tmp_path: Path) -> None:
    """A version-4 store (drift factors computed on every read) migrates to factors decided batch by batch, from
    what was stored before each: the same as a store that decided them as it was written."""
    batches = [("b1", 1.0, 1.0), ("b2", 1.0, 1.1), ("b3", 1.25, 1.3)]  # batch, anchor speed, model speed
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (4)")
    for step in MIGRATIONS[:4]:
        db.executescript(step)
    db.execute("INSERT INTO models VALUES ('a', 'anchor', 'conv-bn-relu', '{}', '{}', 1.0)")
    db.execute("INSERT INTO models VALUES ('k', 'kernel', 'conv-bn-relu', '{}', '{}', 1.0)")
    for batch, anchor, model in batches:
        for mid, ms in (("k", 2.0 * model), ("a", 0.1 * anchor)):
            db.execute(
                "INSERT INTO measurements (model_id, device, backend, protocol_key, status, stats, started_at, "
                "finished_at, batch) VALUES (?, 'd', 'b', 'p', 'ok', ?, 1.0, 2.0, ?)",
                (mid, json.dumps(dataclasses.asdict(at(ms))), batch),
            )
    db.commit()
    db.close()
    with Store(path) as migrated, Store(tmp_path / "new.sqlite") as fresh:
        fresh.add_models([ModelRecord("a", "anchor", "conv-bn-relu"), ModelRecord("k", "kernel", "conv-bn-relu")])
        for batch, anchor, model in batches:
            fresh.add_batch(
                [
                    MeasurementRecord("k", "d", "b", "p", "ok", at(2.0 * model)),
                    MeasurementRecord("a", "d", "b", "p", "ok", at(0.1 * anchor)),
                ],
                batch,
            )
        old = migrated._db.execute("SELECT model_id, batch, drift_factor FROM measurements ORDER BY id").fetchall()
        new = fresh._db.execute("SELECT model_id, batch, drift_factor FROM measurements ORDER BY id").fetchall()
        assert [tuple(r)[:2] for r in old] == [tuple(r)[:2] for r in new]
        assert [r["drift_factor"] for r in old] == pytest.approx([r["drift_factor"] for r in new])
        assert old[-1]["drift_factor"] == pytest.approx(1 / 1.25)  # b3: anchors at 0.125 against a median of 0.1


@pytest.mark.unit
def test_refuses_newer_schemas_and_non_stores(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this nnmeter"):
        Store(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(StoreError, match="not a usable nnmeter store"):
        Store(junk)


@pytest.mark.unit
def test_kill_9_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    writer = textwrap.dedent(f"""
        import sys
        from nnmeter.measurement.store import Store, ModelRecord, MeasurementRecord
        store = Store({str(path)!r})
        store.add_model(ModelRecord(id="m", kind="kernel", name="fc"))
        i = 0
        while True:
            store.add_measurement(MeasurementRecord(model_id="m", device="d", backend="b", protocol_key="p",
                                                    status="error", error="x" * 2000))
            i += 1
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    committed = 0
    for line in proc.stdout:
        committed = int(line)
        if committed >= 200:
            break
    proc.kill()  # SIGKILL, mid-write
    proc.wait()
    with Store(path) as store:
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = store._db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        assert rows >= committed


@contextmanager
def _a_full_disk(tmp_path: Path, how: str) -> Iterator[tuple[Path, Callable[[Store], None], Callable[[], None]]]:
    """A folder whose store fills up: (folder, limit(store), free()). ``tmpfs``: a real 1 MB file system (needs
    the right to mount), with 256 KB of ballast that ``free`` deletes; ``max_page_count``: SQLite's own limit
    on the store's connection, which raises the same SQLITE_FULL (a new connection has no limit)."""
    if how == "max_page_count":

        def limit(store: Store) -> None:
            pages = store._db.execute("PRAGMA page_count").fetchone()[0]
            store._db.execute(f"PRAGMA max_page_count = {pages + 40}")

        yield tmp_path, limit, lambda: None
        return
    folder = tmp_path / "small"
    folder.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command here")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        ballast = folder / "ballast"
        ballast.write_bytes(b"\0" * 256 * 1024)
        yield folder, lambda store: None, lambda: ballast.unlink()
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize(
    "how",
    [pytest.param("tmpfs", marks=pytest.mark.integration), pytest.param("max_page_count", marks=pytest.mark.unit)],
)
def test_a_full_disk_is_a_store_error_and_loses_nothing_committed(tmp_path: Path, how: str) -> None:
    """SQLite rolls the failed transaction back by itself: the store says "disk full" (not "cannot rollback - no
    transaction is active", as a traceback), and every transaction committed before it is still there."""
    with _a_full_disk(tmp_path, how) as (folder, limit, free):
        path = folder / "s.sqlite"
        store = Store(path)
        try:
            store.add_model(ModelRecord(id="m", kind="kernel", name="fc"))
            store.set_state("step", {"done": True})
            limit(store)
            committed = 0
            with pytest.raises(StoreError) as caught:
                for _ in range(10_000):
                    store.add_measurements([dataclasses.replace(measurement("m", "error"), error="x" * 20_000)] * 3)
                    committed += 3
            err = caught.value
            assert committed > 0
            assert "disk full" in err.message and "everything stored before it is kept" in err.message
            assert "free space" in err.hint and err.exit_code == 1
            assert "cannot rollback" not in str(err)
            assert isinstance(err.__cause__, sqlite3.OperationalError) and "full" in str(err.__cause__)
            # the failed transaction is rolled back whole; the store still reads everything committed
            assert store._db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == committed
            assert store.get_state("step") == {"done": True}
            free()
        finally:
            store.close()
        with Store(path) as again:  # space freed (or a new connection): nothing lost, and it writes again
            assert again._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert again._db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == committed
            assert [m.id for m in again.models()] == ["m"]
            again.add_measurement(measurement("m"))
            assert again._db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == committed + 1


@pytest.mark.unit
def test_a_store_locked_by_another_writer_is_a_clear_error_and_readers_do_not_wait(tmp_path: Path) -> None:
    """A write that waits longer than the store's timeout for another writer is a StoreError that says so (not a
    raw sqlite3.OperationalError); opening and reading an up-to-date store takes no write lock at all."""
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.set_state("k", 1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        with Store(path, timeout=0.2) as store:
            assert store.get_state("k") == 1 and store.summary().models == {}
            with pytest.raises(StoreError, match=r"the store stayed locked by another process for 0.2 s") as caught:
                store.set_state("k", 2)
            assert caught.value.exit_code == 1 and "wait for it to end" in caught.value.hint
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert store.get_state("k") == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    with Store(path) as store:
        store.set_state("k", 2)
        assert store.get_state("k") == 2


# --- measure_models on the real tflite-local backend ------------------------------------------------


@pytest.fixture(scope="module")
def local_backend():
    from nnmeter.backends import connect_backend

    with connect_backend("tflite-local", {}) as backend:
        yield backend


@pytest.mark.integration
def test_a_session_skips_measured_models_and_retries_failures(tmp_path: Path, local_backend) -> None:
    from nnmeter.builder.workspace import Workspace, tiny_model_path

    ws = Workspace.create(tmp_path / "ws", "tflite-local")
    broken = tmp_path / "broken.tflite"  # a header that passes the file check, a body the runtime refuses
    broken.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    records = ws.add_user_models([tiny_model_path(), broken])
    protocol = MeasurementProtocol(
        warmup_runs=1, rounds=6, runs_per_round=2, min_round_ms=0.0, max_remeasures=0, batch_size=1
    )
    session = ws.session(local_backend, protocol=protocol)
    calls = []
    first = session.measure(records, progress=lambda done, total: calls.append((done, total)))
    assert [m.model_id for m in first] == [r.id for r in records]
    ok, failed = first
    assert ok.status is MeasureStatus.OK or ok.status is MeasureStatus.UNSTABLE
    assert ok.stats.min_ms <= ok.stats.median_ms <= ok.stats.p90_ms
    assert ok.stats.rounds == 6 and ok.stats.runs == 12
    assert ok.protocol_key == protocol.key() and ok.runtime_versions["ai-edge-litert"]
    assert failed.status is MeasureStatus.ERROR and failed.error and failed.stats is None
    assert calls[-1] == (2, 2)

    second = session.measure(records)
    assert second[0].id == ok.id  # the stored measurement, not a new one
    assert second[1].id != failed.id and second[1].status is MeasureStatus.ERROR  # failures are retried
    again = session.measure(records[:1], remeasure=True)
    assert again[0].id not in (ok.id, None)
    rows = ws.store._db.execute(
        "SELECT batch, kind FROM measurements JOIN models ON models.id = model_id ORDER BY measurements.id"
    ).fetchall()
    assert sum(kind != "anchor" for _, kind in rows) == 4  # 2 + the retried failure + the re-measurement
    batches = {batch for batch, kind in rows if kind != "anchor"}
    assert len(batches) == 4 and "" not in batches  # batch_size 1: each model its own batch
    for batch in batches:  # with the three drift anchors, each measured in it
        assert sorted(kind for b, kind in rows if b == batch) == ["anchor"] * 3 + ["user"]
    ws.close()

"""The measurement store: every model and every measurement of a workspace, in one SQLite file.

SQLite in WAL mode, stdlib only. Each write is one transaction, committed before
the call returns, so a campaign killed at any moment (even ``kill -9``) leaves
the file consistent and everything written so far in it; run the campaign again
and it skips what is already measured.

Models are keyed by content hash; a measurement row records the device, the
backend, the runtime versions, the protocol (its settings and their key), the
status and the statistics. A model may have many measurements; what counts is
the newest one per (device, backend, protocol key, series). The series is empty
for the ordinary measurement of a model; a caller that needs several independent
measurements of one model (the fusion test's passes: each a new load in another
batch) names each one with a series of its own, so they sit side by side and a
run resumes and reuses each of them.

A measurement also records the ``batch`` it was taken in (the models measured
together, with the drift anchors: :mod:`nnmeter.measurement.drift`). A batch is
stored whole by :meth:`Store.add_batch`, which decides its drift factor there and
then from the anchors and the repeated measurements stored before it; the factor is
written with every measurement of the batch and never recomputed, so a stored
measurement reads the same forever.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from nnmeter.backends.base import LATENCY_STATUSES, MeasureResult, MeasureStatus, OpTime
from nnmeter.backends.protocol import LatencyStats
from nnmeter.errors import EXIT_FAILED, NnmeterError
from nnmeter.measurement import drift

#: What a model row is: a kernel sample, a fusion-rule test case, a user's model, an evaluation model,
#: a drift anchor (measured in every batch).
MODEL_KINDS = ("kernel", "rule-case", "user", "evaluation", "anchor")

#: Schema migrations in order: step i brings a store from version i to i + 1. Never edit a
#: released step; append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: models and their measurements
    """
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        config TEXT NOT NULL DEFAULT '{}',
        files TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE INDEX models_by_kind_name ON models (kind, name);
    CREATE TABLE measurements (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model_id TEXT NOT NULL REFERENCES models (id),
        device TEXT NOT NULL,
        backend TEXT NOT NULL,
        runtime_versions TEXT NOT NULL DEFAULT '{}',
        protocol_key TEXT NOT NULL,
        protocol TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        stats TEXT,
        error TEXT NOT NULL DEFAULT '',
        op_profile TEXT NOT NULL DEFAULT '[]',
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        device_seconds REAL NOT NULL DEFAULT 0
    );
    """,
    # 2: campaign step state, and the index the "newest measurement per model" queries use
    """
    CREATE TABLE state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX measurements_by_setup ON measurements (device, backend, protocol_key, model_id, id);
    """,
    # 3: independent measurements of one model side by side (series), and the index by series
    """
    ALTER TABLE measurements ADD COLUMN series TEXT NOT NULL DEFAULT '';
    DROP INDEX measurements_by_setup;
    CREATE INDEX measurements_by_series ON measurements (device, backend, protocol_key, series, model_id, id);
    """,
    # 4: the batch a measurement was taken in (its drift anchors are measured in the same batch)
    """
    ALTER TABLE measurements ADD COLUMN batch TEXT NOT NULL DEFAULT '';
    """,
    # 5: each batch's drift factor, decided when it is stored and kept with its measurements
    """
    CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        device TEXT NOT NULL,
        backend TEXT NOT NULL,
        protocol_key TEXT NOT NULL,
        anchor_level REAL,
        anchor_factor REAL,
        weight REAL NOT NULL,
        weight_pairs INTEGER NOT NULL,
        drift_factor REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX batches_by_setup ON batches (device, backend, protocol_key, created_at);
    ALTER TABLE measurements ADD COLUMN drift_factor REAL NOT NULL DEFAULT 1.0;
    """,
    # 6: a lab's units (nnmeter.lab): the unit and host each measurement and batch was taken on ('' for the
    # campaign's one device), a batch's unit scale, and each unit's speed ratio over the lab's anchor checks
    """
    ALTER TABLE measurements ADD COLUMN unit TEXT NOT NULL DEFAULT '';
    ALTER TABLE measurements ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE batches ADD COLUMN unit TEXT NOT NULL DEFAULT '';
    ALTER TABLE batches ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE batches ADD COLUMN unit_scale REAL NOT NULL DEFAULT 1.0;
    CREATE TABLE unit_checks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device TEXT NOT NULL,
        backend TEXT NOT NULL,
        protocol_key TEXT NOT NULL,
        unit TEXT NOT NULL,
        host TEXT NOT NULL,
        ratio REAL,
        scale REAL NOT NULL,
        verdict TEXT NOT NULL,
        anchors TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    """,
)
#: Migration steps after which stored batches get their drift factors (step 5 replays how they would have been
#: decided, batch by batch in storing order, from what was stored before each).
_REPLAY_DRIFT_AFTER = 5

SCHEMA_VERSION = len(MIGRATIONS)
#: How a stored measurement becomes ``MeasurementRecord.latency_ms``; bump when that changes (4: the drift factor
#: decided when the batch is stored). What was trained on older labels is trained again.
LATENCY_READING_VERSION = 4


@dataclass(frozen=True)
class ModelRecord:
    """A model of the workspace. ``files`` maps a format ("tflite", "keras", ...) to a path
    relative to the workspace root."""

    id: str
    kind: str
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind {self.kind!r} is not valid; valid: {', '.join(MODEL_KINDS)}")

    def path(self, fmt: str, root: Path) -> Path | None:
        """The absolute path of the model's file in format ``fmt``, if it has one."""
        rel = self.files.get(fmt)
        return None if rel is None else Path(root) / rel


@dataclass(frozen=True)
class MeasurementRecord:
    """One measurement of one model on one device/backend under one protocol.

    ``series`` names a measurement meant to be independent of the model's others (see the module
    doc); "" is the ordinary one. ``batch`` names the models measured together; ``drift_factor`` is the
    batch's, decided when the batch was stored (:meth:`Store.add_batch`)."""

    model_id: str
    device: str
    backend: str
    protocol_key: str
    status: MeasureStatus
    stats: LatencyStats | None = None
    error: str = ""
    runtime_versions: Mapping[str, str] = field(default_factory=dict)
    protocol: Mapping[str, Any] = field(default_factory=dict)
    op_profile: tuple[OpTime, ...] = ()
    started_at: float = field(default_factory=time.time)
    finished_at: float = field(default_factory=time.time)
    device_seconds: float = 0.0
    series: str = ""
    batch: str = ""
    drift_factor: float = 1.0  # 1.0 for a batch without anchors
    unit: str = ""  # the lab unit it was measured on (serial, host); "" for the campaign's one device
    host: str = ""  # the host that unit is attached to
    id: int | None = None  # set by the store

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", MeasureStatus(self.status))  # accept "ok" as well as the enum

    @property
    def latency_ms(self) -> float | None:
        """The protocol's statistic (``statistic``) at the device's typical speed (times ``drift_factor``),
        when the status carries one. ``stats`` keeps what was measured."""
        if self.stats is None or not self.status.has_latency:
            return None
        return self.stats.value(self.statistic) * self.drift_factor

    @property
    def statistic(self) -> str:
        """The protocol's ``statistic``; measurements taken before it was a setting used the median."""
        return str(self.protocol.get("statistic", "median"))

    @classmethod
    def from_result(
        cls,
        result: MeasureResult,
        *,
        device: str,
        backend: str,
        runtime_versions: Mapping[str, str],
        protocol: Any,
        series: str = "",
        batch: str = "",
        unit: str = "",
        host: str = "",
    ) -> MeasurementRecord:
        """The record of a backend's :class:`MeasureResult` under ``protocol`` (a MeasurementProtocol)."""
        return cls(
            model_id=result.model_id,
            device=device,
            backend=backend,
            protocol_key=protocol.key(),
            status=MeasureStatus(result.status),
            stats=result.stats,
            error=result.error,
            runtime_versions=dict(runtime_versions),
            protocol=dataclasses.asdict(protocol),
            op_profile=tuple(result.op_profile),
            started_at=result.started_at,
            finished_at=time.time(),
            device_seconds=result.device_seconds,
            series=series,
            batch=batch,
            unit=unit,
            host=host,
        )


@dataclass(frozen=True)
class UnitSummary:
    """What one lab unit measured (``nnmeter-build status``, ``lab status``): measurements stored, the models
    they are of, device seconds, the newest one's time, and measurements in the last ``window_s`` seconds."""

    unit: str
    host: str
    measurements: int
    models: int
    device_seconds: float
    last_at: float
    recent: int
    window_s: float


@dataclass(frozen=True)
class UnitCheck:
    """A unit's anchor check: its speed ratio to the lab (its anchors' latency over the lab's, geometric mean;
    None when it measured no anchor), the scale its batches get, and the verdict ('agrees', 'scaled',
    'excluded', 'failed')."""

    device: str
    backend: str
    protocol_key: str
    unit: str
    host: str
    ratio: float | None
    scale: float
    verdict: str
    anchors: Mapping[str, float] = field(default_factory=dict)  # anchor model id -> median ms
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class SetupSummary:
    """What the store holds for one device/backend/protocol key."""

    device: str
    backend: str
    protocol_key: str
    models: int
    measurements: int
    statuses: Mapping[str, int]  # status of each model's newest measurement -> models
    device_seconds: float
    last_at: float


@dataclass(frozen=True)
class StoreSummary:
    """Counts for ``nnmeter-build status``."""

    models: Mapping[str, int]  # kind -> models
    statuses: Mapping[str, Mapping[str, int]]  # kind -> status of each model's newest measurement -> models
    setups: tuple[SetupSummary, ...]
    units: tuple[UnitSummary, ...] = ()  # lab units (measurements with a unit), busiest first


class StoreError(NnmeterError):
    """The store file cannot be opened or is not an nnmeter store."""


class StoreWriteError(StoreError):
    """The store could not be read or written (disk full, locked by another writer, read-only, I/O error):
    the input was fine and the work failed (exit 1). What was committed before is kept."""

    exit_code = EXIT_FAILED


_F = TypeVar("_F", bound=Callable[..., Any])
# SQLite's primary result codes (the sqlite3 module names them from Python 3.11 on)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_FULL = 5, 6, 8, 13


def _sqlite_errors(method: _F) -> _F:
    """``method`` with a raw ``sqlite3.OperationalError`` turned into a :class:`StoreWriteError` that says what
    happened (the CLI prints it as one line, not a traceback)."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as err:
            raise self._failure(err) from err

    return wrapper  # type: ignore[return-value]


def hash_file(path: Path) -> str:
    """Content hash of a model file, or of every file of a model folder (SavedModel)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            digest.update(p.relative_to(path).as_posix().encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:20]


class Store:
    """A workspace's ``store.sqlite``. One writer at a time; readers never block it (WAL)."""

    def __init__(self, path: Path | str, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a killed process loses nothing
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.OperationalError as err:  # locked, disk full, read-only: the file itself may be fine
            if getattr(self, "_db", None) is not None:
                self._db.close()
            raise self._failure(err) from err
        except sqlite3.DatabaseError as err:
            raise StoreError(
                f"{self.path}: not a usable nnmeter store ({err})",
                "restore the file from a backup, or move it away and run the campaign again",
            ) from err

    @classmethod
    def open(cls, path: Path | str) -> Store:
        return cls(path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema --------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not exists:
            return 0
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        """Bring the store to :data:`SCHEMA_VERSION`. A store that is already there is only read: opening it
        takes no write lock, so reading commands never wait for a writer (and work on a full disk)."""
        if self.schema_version == SCHEMA_VERSION:
            return
        with self._write():
            version = self.schema_version  # again inside the transaction: another process may have migrated it
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: store schema version {version} is newer than this nnmeter "
                    f"understands ({SCHEMA_VERSION})",
                    "upgrade nnmeter",
                )
            if version == 0:
                self._db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                self._db.execute("INSERT INTO schema_version VALUES (0)")
            for step in MIGRATIONS[version:]:
                for statement in _statements(step):
                    self._db.execute(statement)
            if version < _REPLAY_DRIFT_AFTER <= SCHEMA_VERSION:
                self._replay_drift()
            self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _replay_drift(self) -> None:
        """Give the batches of a store written before batches had stored drift factors the factors
        :meth:`add_batch` would have decided, in storing order (inside the migration's transaction)."""
        batches = self._db.execute("""
            SELECT device, backend, protocol_key, batch, MIN(id) AS first, MAX(finished_at) AS at
            FROM measurements WHERE batch != '' GROUP BY device, backend, protocol_key, batch ORDER BY first""")
        for row in batches.fetchall():
            setup = (row["device"], row["backend"], row["protocol_key"])
            current = self._anchor_readings(*setup, where="me.batch = ?", args=(row["batch"],))
            self._record_batch(setup, row["batch"], {a: ms[-1] for a, ms in current.items()}, row["first"], row["at"])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken at once (IMMEDIATE), committed on exit, rolled back on error.

        SQLite rolls a transaction back by itself on some errors (a full disk: SQLITE_FULL), so it is rolled
        back here only while one is active; the error raised is the one that happened, as a
        :class:`StoreWriteError` when it is SQLite's. What earlier transactions committed is never touched.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise self._failure(err) from err
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as err:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error that stopped the transaction is the one to report
            if isinstance(err, sqlite3.OperationalError):
                raise self._failure(err) from err
            raise

    def _failure(self, err: sqlite3.OperationalError) -> StoreWriteError:
        """What a raw SQLite error means for the user, with what to do."""
        text = str(err)
        code = getattr(err, "sqlite_errorcode", 0) & 0xFF  # the primary result code (Python >= 3.11 has it)
        if code == _SQLITE_FULL or "full" in text:
            return StoreWriteError(
                f"{self.path}: cannot write the store: disk full ({text}); the write was rolled back, "
                "everything stored before it is kept",
                f"free space on the file system of {self.path.parent} (df -h), then run the command again to resume",
            )
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
            return StoreWriteError(
                f"{self.path}: the store stayed locked by another process for {self.timeout:g} s ({text})",
                "another command is writing to this workspace's store; wait for it to end "
                "(nnmeter-build status WS shows which), then run the command again",
            )
        if code == _SQLITE_READONLY or "readonly" in text or "read-only" in text:
            return StoreWriteError(
                f"{self.path}: the store is read-only ({text})",
                "check the permissions of the store file and of its folder (SQLite writes -wal and -shm files "
                "beside it)",
            )
        return StoreWriteError(
            f"{self.path}: the store cannot be read or written ({text})",
            "check the disk and the file's permissions, then run the command again",
        )

    # --- models --------------------------------------------------------------

    def add_model(self, record: ModelRecord) -> ModelRecord:
        """Insert ``record``, or add its files to the model already stored under its id; the stored record."""
        return self.add_models([record])[0]

    @_sqlite_errors
    def add_models(self, records: Sequence[ModelRecord]) -> list[ModelRecord]:
        """:meth:`add_model` for many records in one transaction."""
        stored = []
        with self._write() as db:
            for rec in records:
                row = db.execute("SELECT * FROM models WHERE id = ?", (rec.id,)).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO models (id, kind, name, config, files, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (rec.id, rec.kind, rec.name, _dump(rec.config), _dump(rec.files), rec.created_at),
                    )
                    stored.append(rec)
                    continue
                old = _model(row)
                merged = dataclasses.replace(old, files={**old.files, **rec.files})
                if merged.files != old.files:
                    db.execute("UPDATE models SET files = ? WHERE id = ?", (_dump(merged.files), rec.id))
                stored.append(merged)
        return stored

    @_sqlite_errors
    def get_model(self, model_id: str) -> ModelRecord | None:
        row = self._db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        return None if row is None else _model(row)

    @_sqlite_errors
    def models(self, kind: str | None = None, name: str | None = None) -> list[ModelRecord]:
        """Stored models, oldest first, optionally of one kind and/or name."""
        where, args = _filters(("kind", kind), ("name", name))
        rows = self._db.execute(f"SELECT * FROM models {where} ORDER BY created_at, id", args)
        return [_model(r) for r in rows]

    # --- measurements --------------------------------------------------------

    def add_measurement(self, record: MeasurementRecord) -> MeasurementRecord:
        """Store ``record`` (committed before returning); the record with its row id."""
        return self.add_measurements([record])[0]

    @_sqlite_errors
    def add_measurements(self, records: Sequence[MeasurementRecord]) -> list[MeasurementRecord]:
        """:meth:`add_measurement` for many records in one transaction (their drift factors as given)."""
        with self._write():
            return self._insert(records)

    @_sqlite_errors
    def add_batch(
        self, records: Sequence[MeasurementRecord], batch: str, unit_scale: float = 1.0
    ) -> list[MeasurementRecord]:
        """Store the measurements of one batch (one device, backend and protocol) in one transaction, each with
        the batch's drift factor, decided now from its anchors' measurements among ``records`` and what the store
        held before (:mod:`nnmeter.measurement.drift`); the stored records.

        ``unit_scale`` is the speed ratio of the lab unit that measured the batch when the lab scales it (1: the
        unit agrees with the lab, or a single device): its anchors are read divided by it, and its drift factor is
        divided by it."""
        setups = {(r.device, r.backend, r.protocol_key) for r in records}
        if len(setups) != 1:
            raise ValueError(f"a batch is measured on one device, backend and protocol; got {len(setups)}")
        setup = setups.pop()
        with self._write() as db:
            anchors = {
                row[0]
                for row in db.execute(
                    f"SELECT id FROM models WHERE kind = 'anchor' AND id IN ({', '.join('?' * len(records))})",
                    [r.model_id for r in records],
                )
            }
            current = {
                r.model_id: r.stats.median_ms / unit_scale
                for r in records
                if r.model_id in anchors and r.status == MeasureStatus.OK and r.stats is not None
            }
            first = (db.execute("SELECT MAX(id) FROM measurements").fetchone()[0] or 0) + 1
            units = {(r.unit, r.host) for r in records}
            unit, host = units.pop() if len(units) == 1 else ("", "")
            factor = self._record_batch(setup, batch, current, first, time.time(), (unit, host, unit_scale))
            return self._insert([dataclasses.replace(r, batch=batch, drift_factor=factor) for r in records])

    def _record_batch(
        self,
        setup: tuple[str, str, str],
        batch: str,
        current: Mapping[str, float],
        first_id: int,
        created_at: float,
        unit: tuple[str, str, float] = ("", "", 1.0),
    ) -> float:
        """Decide the drift factor of ``batch`` (its anchors read ``current``) from the measurements stored before
        ``first_id``, write its row and set it on measurements already stored in it; the factor. ``unit`` is the
        lab unit, its host and its scale (the factor is divided by the scale)."""
        history = self._anchor_readings(*setup, where="me.id < ?", args=(first_id,))
        level = drift.anchor_level({anchor: ms[0] for anchor, ms in history.items()}, current)
        raw = drift.anchor_factor(history, current)
        check = drift.drift_check(self._repeats(*setup, before_id=first_id))
        factor = (1.0 if raw is None else raw**check.weight) / unit[2]
        self._db.execute(
            "INSERT INTO batches (id, device, backend, protocol_key, anchor_level, anchor_factor, "
            "weight, weight_pairs, drift_factor, created_at, unit, host, unit_scale) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (batch, *setup, level, raw, check.weight, check.pairs, factor, created_at, *unit),
        )
        self._db.execute("UPDATE measurements SET drift_factor = ? WHERE batch = ?", (factor, batch))
        return factor

    def _anchor_readings(
        self, device: str, backend: str, protocol_key: str, *, where: str, args: Sequence[Any]
    ) -> dict[str, list[float]]:
        """Median latency (ms) of each drift anchor measured under this setup, per batch in storing order."""
        readings: dict[str, list[float]] = {}
        for r in self._db.execute(
            f"""
                SELECT me.model_id, me.stats, ba.unit_scale FROM measurements me JOIN models mo ON mo.id = me.model_id
                LEFT JOIN batches ba ON ba.id = me.batch
                WHERE mo.kind = 'anchor' AND me.device = ? AND me.backend = ? AND me.protocol_key = ?
                  AND me.batch != '' AND me.status = ? AND me.stats IS NOT NULL AND {where} ORDER BY me.id""",
            (device, backend, protocol_key, MeasureStatus.OK.value, *args),
        ):
            ms = json.loads(r["stats"])["median_ms"] / (r["unit_scale"] or 1.0)
            if ms > 0:
                readings.setdefault(r["model_id"], []).append(ms)
        return readings

    def _repeats(self, device: str, backend: str, protocol_key: str, before_id: int) -> list[drift.Repeat]:
        """The measurements (before ``before_id``) of models measured in several batches of this setup, with
        their latency as measured and their batch's anchor level, in storing order."""
        statuses = [s.value for s in LATENCY_STATUSES]
        rows = self._db.execute(
            f"""
            SELECT me.*, ba.anchor_level FROM measurements me JOIN models mo ON mo.id = me.model_id
            LEFT JOIN batches ba ON ba.id = me.batch
            WHERE mo.kind != 'anchor' AND me.device = ? AND me.backend = ? AND me.protocol_key = ? AND me.id < ?
              AND me.batch != '' AND me.stats IS NOT NULL AND me.status IN ({", ".join("?" * len(statuses))})
              AND me.model_id IN (
                SELECT model_id FROM measurements WHERE device = ? AND backend = ? AND protocol_key = ? AND id < ?
                  AND batch != '' AND stats IS NOT NULL GROUP BY model_id HAVING COUNT(DISTINCT batch) > 1)
            ORDER BY me.id""",
            (device, backend, protocol_key, before_id, *statuses, device, backend, protocol_key, before_id),
        ).fetchall()
        out = []
        for row in rows:
            rec = _measurement(row)
            out.append(
                drift.Repeat(
                    rec.model_id,
                    rec.batch,
                    rec.stats.value(rec.statistic),  # type: ignore[union-attr]
                    row["anchor_level"],
                )
            )
        return out

    @_sqlite_errors
    def drift_check(self, device: str, backend: str, protocol_key: str) -> drift.DriftCheck:
        """The drift check of everything stored under this setup: the weight the next batch would get."""
        return drift.drift_check(self._repeats(device, backend, protocol_key, before_id=2**62))

    def _insert(self, records: Sequence[MeasurementRecord]) -> list[MeasurementRecord]:
        stored = []
        for rec in records:
            cur = self._db.execute(
                "INSERT INTO measurements (model_id, device, backend, runtime_versions, protocol_key, protocol, "
                "status, stats, error, op_profile, started_at, finished_at, device_seconds, series, batch, "
                "drift_factor, unit, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.model_id,
                    rec.device,
                    rec.backend,
                    _dump(rec.runtime_versions),
                    rec.protocol_key,
                    _dump(rec.protocol),
                    MeasureStatus(rec.status).value,
                    None if rec.stats is None else _dump(dataclasses.asdict(rec.stats)),
                    rec.error,
                    _dump([dataclasses.asdict(op) for op in rec.op_profile]),
                    rec.started_at,
                    rec.finished_at,
                    rec.device_seconds,
                    rec.series,
                    rec.batch,
                    rec.drift_factor,
                    rec.unit,
                    rec.host,
                ),
            )
            stored.append(dataclasses.replace(rec, id=cur.lastrowid))
        return stored

    @_sqlite_errors
    def latest_measurements(
        self,
        device: str,
        backend: str,
        protocol_key: str,
        kind: str | None = None,
        name: str | None = None,
        statuses: Iterable[str] | None = None,
        series: str = "",
    ) -> list[tuple[ModelRecord, MeasurementRecord]]:
        """The newest measurement of each model under one device/backend/protocol and series, in measuring order.

        ``statuses`` filters on the newest measurement: a model whose newest measurement
        failed is not returned for ``statuses=["ok"]`` even if an older one succeeded.
        """
        where, args = _filters(("mo.kind", kind), ("mo.name", name))
        if statuses is not None:
            wanted = [MeasureStatus(s).value for s in statuses]
            where += (" AND " if where else "WHERE ") + f"me.status IN ({', '.join('?' * len(wanted))})"
            args += wanted
        sql = f"""
            SELECT mo.id AS mo_id, mo.kind, mo.name, mo.config, mo.files, mo.created_at, me.*
            FROM measurements me JOIN models mo ON mo.id = me.model_id
            JOIN (SELECT MAX(id) AS newest FROM measurements
                  WHERE device = ? AND backend = ? AND protocol_key = ? AND series = ? GROUP BY model_id) n
              ON me.id = n.newest
            {where} ORDER BY me.id"""
        rows = self._db.execute(sql, [device, backend, protocol_key, series, *args]).fetchall()
        return [(_model(r, id_column="mo_id"), _measurement(r)) for r in rows]

    def measured_ids(
        self,
        device: str,
        backend: str,
        protocol_key: str,
        series: str = "",
        kind: str | None = None,
        name: str | None = None,
    ) -> set[str]:
        """Models (of ``kind`` and ``name``, if given) whose newest measurement under this device/backend/protocol
        and series has a latency."""
        return {
            m.model_id
            for _, m in self.latest_measurements(
                device, backend, protocol_key, kind=kind, name=name, statuses=LATENCY_STATUSES, series=series
            )
        }

    @_sqlite_errors
    def summary(self) -> StoreSummary:
        models = {
            r["kind"]: r["n"]
            for r in self._db.execute("SELECT kind, COUNT(*) AS n FROM models GROUP BY kind ORDER BY kind")
        }
        statuses: dict[str, dict[str, int]] = {kind: {} for kind in models}
        for r in self._db.execute("""
                SELECT mo.kind, me.status, COUNT(*) AS n FROM measurements me JOIN models mo ON mo.id = me.model_id
                WHERE me.id IN (SELECT MAX(id) FROM measurements GROUP BY model_id)
                GROUP BY mo.kind, me.status ORDER BY mo.kind, me.status"""):
            statuses[r["kind"]][r["status"]] = r["n"]
        for r in self._db.execute("""
                SELECT kind, COUNT(*) AS n FROM models WHERE id NOT IN (SELECT model_id FROM measurements)
                GROUP BY kind"""):
            statuses[r["kind"]]["unmeasured"] = r["n"]
        newest = "SELECT MAX(id) FROM measurements GROUP BY device, backend, protocol_key, model_id"
        setups = []
        for r in self._db.execute("""
                SELECT device, backend, protocol_key, COUNT(DISTINCT model_id) AS models, COUNT(*) AS n,
                       SUM(device_seconds) AS seconds, MAX(finished_at) AS last_at
                FROM measurements GROUP BY device, backend, protocol_key ORDER BY last_at"""):
            counts = {
                s["status"]: s["n"]
                for s in self._db.execute(
                    f"""
                SELECT status, COUNT(*) AS n FROM measurements
                WHERE id IN ({newest}) AND device = ? AND backend = ? AND protocol_key = ?
                GROUP BY status ORDER BY status""",
                    (r["device"], r["backend"], r["protocol_key"]),
                )
            }
            setups.append(
                SetupSummary(
                    r["device"],
                    r["backend"],
                    r["protocol_key"],
                    r["models"],
                    r["n"],
                    counts,
                    r["seconds"] or 0.0,
                    r["last_at"],
                )
            )
        return StoreSummary(models, statuses, tuple(setups), tuple(self.unit_summaries()))

    @_sqlite_errors
    def unit_summaries(self, window_s: float = 600.0, now: float | None = None) -> list[UnitSummary]:
        """What each lab unit measured (measurements that record a unit), busiest first; ``recent`` counts the
        measurements stored in the ``window_s`` seconds before ``now``."""
        since = (time.time() if now is None else now) - window_s
        rows = self._db.execute(
            """
            SELECT unit, host, COUNT(*) AS n, COUNT(DISTINCT model_id) AS models, SUM(device_seconds) AS seconds,
                   MAX(finished_at) AS last_at, SUM(finished_at >= ?) AS recent
            FROM measurements WHERE unit != '' GROUP BY unit, host ORDER BY n DESC, unit""",
            (since,),
        )
        return [
            UnitSummary(
                r["unit"], r["host"], r["n"], r["models"], r["seconds"] or 0.0, r["last_at"], r["recent"] or 0, window_s
            )
            for r in rows
        ]

    @_sqlite_errors
    def add_unit_check(self, check: UnitCheck) -> None:
        """Store a lab unit's anchor check (committed before returning)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO unit_checks (device, backend, protocol_key, unit, host, ratio, scale, verdict, anchors, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    check.device,
                    check.backend,
                    check.protocol_key,
                    check.unit,
                    check.host,
                    check.ratio,
                    check.scale,
                    check.verdict,
                    _dump(dict(check.anchors)),
                    check.created_at,
                ),
            )

    @_sqlite_errors
    def unit_checks(self, unit: str | None = None) -> list[UnitCheck]:
        """The lab units' anchor checks in storing order (of one ``unit`` when given)."""
        where, args = _filters(("unit", unit))
        rows = self._db.execute(f"SELECT * FROM unit_checks {where} ORDER BY id", args)
        return [
            UnitCheck(
                r["device"],
                r["backend"],
                r["protocol_key"],
                r["unit"],
                r["host"],
                r["ratio"],
                r["scale"],
                r["verdict"],
                json.loads(r["anchors"]),
                r["created_at"],
            )
            for r in rows
        ]

    # --- campaign state ------------------------------------------------------

    @_sqlite_errors
    def get_state(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key`` by :meth:`set_state`, or ``default``."""
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    @_sqlite_errors
    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` (replacing any earlier one)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, _dump(value), time.time()),
            )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _filters(*pairs: tuple[str, Any]) -> tuple[str, list[Any]]:
    clauses = [(f"{column} = ?", value) for column, value in pairs if value is not None]
    if not clauses:
        return "", []
    return "WHERE " + " AND ".join(c for c, _ in clauses), [v for _, v in clauses]


def _model(row: sqlite3.Row, id_column: str = "id") -> ModelRecord:
    return ModelRecord(
        id=row[id_column],
        kind=row["kind"],
        name=row["name"],
        config=json.loads(row["config"]),
        files=json.loads(row["files"]),
        created_at=row["created_at"],
    )


def _measurement(row: sqlite3.Row) -> MeasurementRecord:
    stats = None
    if row["stats"] is not None:
        values = json.loads(row["stats"])
        values["round_medians_ms"] = tuple(values.get("round_medians_ms", ()))
        stats = LatencyStats(**values)
    return MeasurementRecord(
        id=row["id"],
        model_id=row["model_id"],
        device=row["device"],
        backend=row["backend"],
        protocol_key=row["protocol_key"],
        status=MeasureStatus(row["status"]),
        stats=stats,
        error=row["error"],
        runtime_versions=json.loads(row["runtime_versions"]),
        protocol=json.loads(row["protocol"]),
        op_profile=tuple(OpTime(**op) for op in json.loads(row["op_profile"])),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        device_seconds=row["device_seconds"],
        series=row["series"],
        batch=row["batch"],
        drift_factor=row["drift_factor"],
        unit=row["unit"],
        host=row["host"],
    )

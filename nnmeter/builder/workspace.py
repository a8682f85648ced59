"""A workspace: the folder ``nnmeter-build init`` makes, holding one device's campaign.

::

    ws/
      campaign.yaml   what to build and how (validated on every open)
      store.sqlite    every model and measurement (see :mod:`nnmeter.measurement.store`)
      models/         generated, converted and user models, named by content hash
      rules/          fusion rules
      predictor/      the built predictor artifact
      reports/        evaluation and build reports
      .nnmeter.lock   the writer lock (:meth:`Workspace.lock`): who writes to the workspace now

One command writes to a workspace at a time: every command that writes holds :meth:`Workspace.lock`
(an ``flock`` on ``.nnmeter.lock``, released when the command ends or its process dies, even by
``kill -9``). A second writer fails at once with :class:`~nnmeter.errors.WorkspaceInUse`; reading
commands (``status``, ``rules --show``) take no lock and work meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

from nnmeter.backends import connect_backend
from nnmeter.backends.base import Backend
from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.builder.campaign import Campaign, load_campaign, render_campaign
from nnmeter.errors import ModelFileError, NnmeterError, WorkFailed, WorkspaceInUse
from nnmeter.measurement import BatchDispatcher, MeasuringSession, ModelRecord, Store, hash_file
from nnmeter.progress import SILENT, Reporter
from nnmeter.schema import section_to_dict

CAMPAIGN_FILE = "campaign.yaml"
STORE_FILE = "store.sqlite"
LOCK_FILE = ".nnmeter.lock"
FOLDERS = ("models", "rules", "predictor", "reports")

#: Model files a user can hand to ``profile``: suffix -> format (ModelFile.format).
USER_MODEL_SUFFIXES = {".tflite": "tflite", ".keras": "keras", ".h5": "keras", ".onnx": "onnx"}
_READABLE = ".tflite, .keras, .h5, .onnx, or a SavedModel folder"


class Workspace:
    """An nnmeter workspace; make one with :meth:`create`, use one with :meth:`open`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._campaign: Campaign | None = None
        self._store: Store | None = None
        self._lab: Any = None  # the open lab (nnmeter.lab.Lab) while open_lab() holds it

    # --- making and opening ---------------------------------------------------

    @classmethod
    def create(cls, root: Path | str, backend_name: str, overwrite: bool = False) -> Workspace:
        """Write campaign.yaml for ``backend_name``, an empty store and the folders.

        With ``overwrite``, an existing workspace gets a fresh campaign.yaml; its store
        and models are kept (measurements are keyed by device, backend and protocol, so
        nothing measured under other settings is mistaken for a new result).
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise NnmeterError(f"{root}: exists and is not a folder", "pick another path for the workspace")
        campaign_path = root / CAMPAIGN_FILE
        if campaign_path.exists() and not overwrite:
            raise NnmeterError(
                f"{root}: is already a workspace ({CAMPAIGN_FILE} exists)",
                "pass --force to rewrite campaign.yaml (the store and models are kept)",
            )
        text = render_campaign(backend_name)  # an unknown backend fails here, before anything is written
        root.mkdir(parents=True, exist_ok=True)
        ws = cls(root)
        with ws.lock():  # init --force while a command runs on the workspace would change its campaign under it
            for folder in FOLDERS:
                (root / folder).mkdir(exist_ok=True)
            write_text_atomic(campaign_path, text)
            Store(root / STORE_FILE).close()
        return ws

    @classmethod
    def open(cls, root: Path | str) -> Workspace:
        """The workspace at ``root`` (the folder or its campaign.yaml), its campaign validated."""
        root = Path(root)
        if root.is_file() and root.name == CAMPAIGN_FILE:
            root = root.parent
        if not (root / CAMPAIGN_FILE).is_file():
            what = "does not exist" if not root.exists() else f"is not a workspace (no {CAMPAIGN_FILE})"
            raise NnmeterError(f"{root}: {what}", f"create one with: nnmeter-build init {root} --backend NAME")
        ws = cls(root)
        ws._campaign = load_campaign(ws.campaign_path)  # validated before the store is opened
        return ws

    def close_store(self) -> None:
        """Close the store (in the thread that used it: SQLite's connections belong to their thread)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def close(self) -> None:
        if self._lab is not None:
            lab, self._lab = self._lab, None
            lab.close()
        if self._store is not None:
            self._store.close()
            self._store = None

    # --- the writer lock ------------------------------------------------------

    @contextmanager
    def lock(self, command: str | None = None) -> Iterator[Workspace]:
        """Hold the workspace's writer lock for the ``with`` block; :class:`WorkspaceInUse` at once if another
        process holds it (naming its PID, command line and start time).

        The lock is an ``flock`` on ``.nnmeter.lock``, which also records who holds it (``command``, by default
        this process's command line). The kernel releases it when the process ends, however it ends, so a
        killed command leaves no stale lock. It is reentrant within a process (``run`` holds it, and so do
        the steps it calls).
        """
        path = os.path.realpath(self.root / LOCK_FILE)
        with _HELD_GUARD:
            held = _HELD.get(path)
            if held is None:
                held = _HELD[path] = [_take_lock(self.root, Path(path), command), 0]
            held[1] += 1
        try:
            yield self
        finally:
            with _HELD_GUARD:
                held[1] -= 1
                if held[1] == 0:
                    del _HELD[path]
                    _release_lock(held[0])

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds the writer lock now (pid, command, started_at), as it wrote; None when no one does."""
        try:
            text = (self.root / LOCK_FILE).read_text(encoding="utf-8")
        except OSError:
            return None
        holder = _parse_holder(text)
        if holder is None or not _alive(int(holder["pid"])):
            return None  # released (the file is emptied), or left by a killed process (its flock is gone)
        return holder

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- contents -------------------------------------------------------------

    @property
    def campaign_path(self) -> Path:
        return self.root / CAMPAIGN_FILE

    @property
    def store_path(self) -> Path:
        return self.root / STORE_FILE

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def rules_dir(self) -> Path:
        return self.root / "rules"

    @property
    def rules_file(self) -> Path:
        """The measured fusion rules (``nnmeter-build rules``); absent until the fusion test ran."""
        return self.rules_dir / "fusion_rules.json"

    @property
    def predictor_dir(self) -> Path:
        return self.root / "predictor"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def campaign(self) -> Campaign:
        if self._campaign is None:
            self._campaign = load_campaign(self.campaign_path)
        return self._campaign

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.store_path)
        return self._store

    @contextmanager
    def open_lab(self, reporter: Reporter = SILENT) -> Iterator[Any]:
        """Hold the campaign's lab open (its units connected once for every step) for the ``with`` block; nothing
        for a campaign of one device. The lab is checked here, before the store is opened: Ray installed for
        ``engine: ray``, the cluster answering, every unit advertised (each a ConfigError naming its key)."""
        if not self.campaign.is_lab or self._lab is not None:
            yield self._lab
            return
        self._lab = self._new_lab(reporter)
        try:
            yield self._lab
        finally:
            lab, self._lab = self._lab, None
            lab.close()

    def _new_lab(self, reporter: Reporter) -> Any:
        """The campaign's lab (:func:`nnmeter.lab.backend.open_lab`), recording its units' checks and states in
        the store once it measures."""
        from nnmeter.lab.backend import UNITS_STATE, open_lab

        campaign = self.campaign
        lab = open_lab(
            campaign.backend_name, campaign.units, campaign.cluster, reporter=reporter, source=str(self.campaign_path)
        )
        lab.record_check = lambda check: self.store.add_unit_check(check)
        lab.publish = lambda states: self.store.set_state(UNITS_STATE, states)
        return lab

    def connect(self) -> Backend:
        """The campaign's backend, connected (its ``device_info`` filled in). For a lab (``devices:``), the lab's
        backend: it converts here and measures on the units, in the lab :meth:`open_lab` holds or in one of its
        own, closed with the backend."""
        campaign = self.campaign
        if campaign.is_lab:
            from nnmeter.lab.backend import LabBackend

            lab, owns = (self._lab, False) if self._lab is not None else (self._new_lab(SILENT), True)
            return LabBackend(
                campaign.backend_name,
                section_to_dict(campaign.backend_options),
                lab,
                owns_lab=owns,
                source=str(self.campaign_path),
            )
        return connect_backend(
            self.campaign.backend_name,
            section_to_dict(self.campaign.backend_options),
            source=str(self.campaign_path),
            key_path="backend",
        )

    def session(
        self,
        backend: Backend,
        *,
        protocol: MeasurementProtocol | None = None,
        workers: int | None = None,
        reporter: Reporter = SILENT,
    ) -> MeasuringSession:
        """A measuring session on ``backend`` (connected) that keeps models and measurements in this workspace,
        with the campaign's protocol unless ``protocol`` is given."""
        dispatcher = backend if isinstance(backend, BatchDispatcher) else None  # a lab's backend measures on its units
        return MeasuringSession(
            self.store, self.root, backend, protocol or self.campaign.protocol, workers, reporter, dispatcher
        )

    def add_user_models(self, paths: Sequence[Path | str]) -> list[ModelRecord]:
        """Copy user model files into models/user/ and record them (kind 'user'), one record per path.

        Every path is checked first: a missing file or one that is not a model raises
        :class:`ModelFileError` before anything is copied or stored.
        """
        formats = [(Path(p), model_file_format(Path(p))) for p in paths]
        user_dir = self.models_dir / "user"
        user_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for path, fmt in formats:
            model_id = hash_file(path)
            target = user_dir / (model_id + ("" if path.is_dir() else path.suffix.lower()))
            if not target.exists():
                if path.is_dir():
                    shutil.copytree(path, target)
                else:
                    shutil.copyfile(path, target)
            records.append(
                ModelRecord(
                    id=model_id, kind="user", name=path.name, files={fmt: target.relative_to(self.root).as_posix()}
                )
            )
        return self.store.add_models(records)


#: Writer locks this process holds: the lock file's real path -> [file descriptor, depth].
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()


def _take_lock(root: Path, path: Path, command: str | None) -> int:
    """The descriptor of ``path``, flock'ed exclusively and filled with who holds it; WorkspaceInUse if taken."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (O_CLOEXEC)
    except OSError as err:
        raise WorkFailed(
            f"workspace {root}: cannot open its lock file {path.name}: {err.strerror}",
            "a command that writes to a workspace needs write access to its folder",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _parse_holder(os.pread(fd, 1 << 16, 0).decode("utf-8", errors="replace"))
        os.close(fd)
        if holder is None:  # it took the lock and has not written its name yet
            who = "another process"
        else:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started_at"])))
            who = f"PID {holder['pid']} ({holder['command']}) since {started}"
        raise WorkspaceInUse(
            f"workspace {root} is in use by {who}",
            "one command writes to a workspace at a time: wait for it to end, or stop it; "
            f"reading commands work meanwhile (nnmeter-build status {root})",
        ) from None
    except OSError as err:
        os.close(fd)
        raise WorkFailed(f"workspace {root}: cannot lock {path.name}: {err.strerror}") from None
    info = {"pid": os.getpid(), "command": command or _command_line(), "started_at": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # no one holds it: the file stays (removing it would race with a new holder)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _parse_holder(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text)
        int(holder["pid"]), float(holder["started_at"]), str(holder["command"])
    except (ValueError, TypeError, KeyError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def _command_line() -> str:
    """This process's command line as a user typed it: ``nnmeter-build run ws`` (also under ``python -m``)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "nnmeter-build"):
        program = "nnmeter-build"
    line = " ".join([program, *(shlex.quote(a) for a in sys.argv[1:])])
    return line if len(line) <= 300 else line[:297] + "..."


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a reader never sees half a file, and leave no temporary file behind
    when the write fails or is interrupted (Ctrl-C, SIGTERM, a full disk)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def tiny_model_path() -> Path:
    """The bundled 8 KB .tflite model ``connect`` measures (see nnmeter/configs/models/README.md)."""
    return Path(str(resources.files("nnmeter.configs").joinpath("models").joinpath("tiny_cnn.tflite")))


def model_file_format(path: Path) -> str:
    """The format of a user's model file (ModelFile.format); ModelFileError if it is not one nnmeter reads."""
    if not path.exists():
        raise ModelFileError(f"{path}: no such file", f"nnmeter reads {_READABLE}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelFileError(
            f"{path}: is a folder but not a SavedModel (no saved_model.pb in it)", f"nnmeter reads {_READABLE}"
        )
    fmt = USER_MODEL_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ModelFileError(
            f"{path}: not a model file nnmeter reads (suffix {path.suffix or 'none'!r})", f"nnmeter reads {_READABLE}"
        )
    with open(path, "rb") as fh:
        head = fh.read(8)
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        valid = head[4:8] == b"TFL3"
    elif suffix == ".keras":
        valid = zipfile.is_zipfile(path)
    elif suffix == ".h5":
        valid = head == b"\x89HDF\r\n\x1a\n"
    else:
        valid = _is_onnx(path)
    if not valid:
        raise ModelFileError(
            f"{path}: is not a valid {suffix} model (its content does not match the format)",
            "check the file is complete and was saved in that format",
        )
    return fmt


def _is_onnx(path: Path) -> bool:
    """An ONNX protobuf with a graph (protobuf parses much garbage without error, so look for nodes)."""
    import onnx  # 0.8 s to import: only when an .onnx file is given

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises DecodeError, ValueError, ... on bytes that are not a model
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0

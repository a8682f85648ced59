"""A user cache of generated model files, shared by every workspace: a kernel model converted for one campaign
is not converted again for the next one, on another device, or after its measured file was deleted.

A generated model's id is the content hash of its kind, name, config, format and converter version
(:func:`nnmeter.kernel_gen.cache.model_id`), so a file cached under its id is the file a conversion would make.
Files live in ``<root>/<format>/<id><suffix>``; single-file formats only (.tflite, .onnx).

* Where: ``$NNMETER_MODEL_CACHE`` if set (``off``, ``0`` or an empty value: no cache), else
  ``$XDG_CACHE_HOME/nnmeter/models`` (``~/.cache/nnmeter/models``).
* Bounded: ``$NNMETER_MODEL_CACHE_MB`` (default 2048) MB; when a file added goes over it, the least recently
  used files are deleted (a hit refreshes a file's time) until the cache is at 90 % of it.
* Safe with several writers at once: a file is written under a name of its own and renamed into place (a
  reader sees a whole file or none); a file another process evicts between lookup and use is a miss.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

#: Formats whose model is one file, by suffix.
CACHED_SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}
DEFAULT_MAX_MB = 2048.0
_OFF = ("", "0", "off", "none", "false", "no")


@dataclass(frozen=True)
class ModelCache:
    """Model files by content id under ``root``, at most ``max_bytes`` in all."""

    root: Path
    max_bytes: int = int(DEFAULT_MAX_MB * 1e6)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def from_env(cls) -> ModelCache | None:
        """The cache the environment names (module doc), or None when it is switched off."""
        setting = os.environ.get("NNMETER_MODEL_CACHE")
        if setting is not None and setting.strip().lower() in _OFF:
            return None
        if setting:
            root = Path(setting).expanduser()
        else:
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            root = Path(base).expanduser() / "nnmeter" / "models"
        try:
            max_mb = float(os.environ.get("NNMETER_MODEL_CACHE_MB", DEFAULT_MAX_MB))
        except ValueError:
            max_mb = DEFAULT_MAX_MB
        return cls(root, int(max(0.0, max_mb) * 1e6)) if max_mb > 0 else None

    def path(self, model_id: str, fmt: str) -> Path | None:
        suffix = CACHED_SUFFIXES.get(fmt)
        return None if suffix is None else self.root / fmt / f"{model_id}{suffix}"

    def fetch(self, model_id: str, fmt: str, dest: Path | str) -> bool:
        """Put a copy of the cached file of ``model_id`` at ``dest``; False on a miss."""
        src = self.path(model_id, fmt)
        if src is None:
            return False
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp)  # a copy, not a link: the workspace's file is its own
            if tmp.stat().st_size == 0:
                raise OSError("empty")
            os.replace(tmp, dest)
            now = time.time()
            os.utime(src, (now, now))  # recently used
            return True
        except OSError:  # not cached, evicted meanwhile, or unreadable: convert it
            tmp.unlink(missing_ok=True)
            return False

    def store(self, model_id: str, fmt: str, src: Path | str) -> bool:
        """Add ``src`` as the file of ``model_id`` (kept if cached already), then keep the cache in its bound."""
        dest = self.path(model_id, fmt)
        if dest is None or dest.exists():
            return False
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except OSError:  # a full or read-only disk: the campaign goes on without the cache
            tmp.unlink(missing_ok=True)
            return False
        self.evict()
        return True

    def evict(self) -> int:
        """Delete the least recently used files while the cache holds more than its bound; the bytes freed."""
        files = []
        for fmt in CACHED_SUFFIXES:
            folder = self.root / fmt
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                if entry.is_file() and not entry.name.startswith("."):
                    files.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return 0
        freed = 0
        for _, size, path in sorted(files):
            if total - freed <= 0.9 * self.max_bytes:
                break
            try:
                os.unlink(path)
                freed += size
            except FileNotFoundError:  # another process evicted it
                pass
        return freed

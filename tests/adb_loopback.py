"""A loopback ADB device: the device side of the ADB protocol over TCP, running commands on this machine.

A real adb server attaches it with ``adb connect 127.0.0.1:PORT``; adbutils then
talks to it through that server exactly as to a phone. It implements what
nnmeter uses (after adb's protocol.txt, SERVICES.TXT, SYNC.TXT and shell_protocol.h):

* messages: 24-byte header (command, arg0, arg1, payload length, checksum,
  magic = command ^ 0xffffffff), ``CNXN`` answered without ``AUTH``, streams with
  ``OPEN``/``OKAY``/``WRTE``/``CLSE`` and one ``WRTE`` in flight per stream;
* ``shell,v2:`` (packets: id byte, little-endian u32 length; 0 stdin, 1 stdout,
  2 stderr, 3 exit code, 4 close stdin) and ``shell:`` (v1, raw bytes);
* ``sync:`` with STAT, LIST, SEND (DATA chunks, DONE + mtime; OKAY or FAIL) and RECV, QUIT.

Commands run with ``sh -c`` in the sandbox folder, in a new session (adbd calls
``setsid()`` before it runs ``/system/bin/sh -c``), with ``SANDBOX/bin`` first on
PATH (the tests put ``getprop`` and ``benchmark_model`` there). When the host closes
a shell stream, the shell gets SIGHUP and nothing else, as from adbd: what the shell
started and did not exec keeps running. Sync paths must be inside the sandbox.
``--quota-bytes`` makes pushes beyond it fail with "No space left on device", as a
full phone does. While the file ``SANDBOX/stall-sync`` exists, a push stalls after
its first data chunk: the device takes the data and never answers, as a phone that
hangs does.

Run: ``python tests/adb_loopback.py --port 6123 --sandbox DIR``; it prints
``listening`` when ready and serves until killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

A_VERSION = 0x01000001  # the version without payload checksums
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
CMD = {name: struct.unpack("<I", name.encode())[0] for name in ("CNXN", "OPEN", "OKAY", "WRTE", "CLSE", "AUTH", "SYNC")}
NAMES = {v: k for k, v in CMD.items()}
PROPS = {"ro.product.name": "loopback", "ro.product.model": "Loopback", "ro.product.device": "loopback"}
FEATURES = "shell_v2,cmd"


class Stream:
    """One ADB stream: our id, the host's id, an ack event for flow control, an inbox for WRTE payloads."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.acked = threading.Event()
        self.inbox = bytearray()
        self.cond = threading.Condition()
        self.closed = False
        self.process: subprocess.Popen | None = None

    def write(self, data: bytes) -> bool:
        """Send ``data`` in WRTE messages, each after the host acknowledged the previous one."""
        for i in range(0, len(data), self.conn.max_payload):
            if self.closed:
                return False
            self.acked.clear()
            self.conn.send("WRTE", self.local_id, self.remote_id, data[i : i + self.conn.max_payload])
            while not self.acked.wait(0.5):
                if self.closed:
                    return False
        return True

    def feed(self, data: bytes) -> None:
        with self.cond:
            self.inbox += data
            self.cond.notify_all()

    def read(self, n: int) -> bytes | None:
        """Exactly ``n`` bytes from the host, or None when the stream closed first."""
        with self.cond:
            while len(self.inbox) < n and not self.closed:
                self.cond.wait()
            if len(self.inbox) < n:
                return None
            data = bytes(self.inbox[:n])
            del self.inbox[:n]
            return data

    def close(self, notify: bool = True) -> None:
        if self.closed:
            return
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.process is not None and self.process.poll() is None:
            # as adbd does when the host closes a shell (shell_service.cpp, PassDataStreams): SIGHUP to the shell's
            # pid only, not to its process group; a child the shell did not exec, or a process that ignores SIGHUP,
            # keeps running
            try:
                os.kill(self.process.pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        if notify:
            self.conn.send("CLSE", self.local_id, self.remote_id)
        self.conn.streams.pop(self.local_id, None)


class Connection:
    """One transport from the adb server."""

    def __init__(self, sock: socket.socket, device: Device) -> None:
        self.sock = sock
        self.device = device
        self.lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.max_payload = MAX_PAYLOAD

    def send(self, name: str, arg0: int, arg1: int, payload: bytes = b"") -> None:
        cmd = CMD[name]
        header = struct.pack("<6I", cmd, arg0, arg1, len(payload), sum(payload) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF)
        with self.lock:
            try:
                self.sock.sendall(header + payload)
            except OSError:
                pass

    def recv_exact(self, n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def serve(self) -> None:
        try:
            while True:
                header = self.recv_exact(24)
                if header is None:
                    break
                cmd, arg0, arg1, length, _checksum, magic = struct.unpack("<6I", header)
                if magic != cmd ^ 0xFFFFFFFF:
                    break
                payload = self.recv_exact(length) if length else b""
                if payload is None:
                    break
                self.dispatch(NAMES.get(cmd, "?"), arg0, arg1, payload)
        except OSError:
            pass
        finally:
            for stream in list(self.streams.values()):
                stream.close(notify=False)
            self.sock.close()

    def dispatch(self, name: str, arg0: int, arg1: int, payload: bytes) -> None:
        if name == "CNXN":
            self.max_payload = min(MAX_PAYLOAD, arg1)
            props = ";".join(f"{k}={v}" for k, v in PROPS.items())
            self.send("CNXN", A_VERSION, MAX_PAYLOAD, f"device::{props};features={FEATURES}".encode())
        elif name == "OPEN":
            service = payload.rstrip(b"\0").decode(errors="replace")
            local_id = self.next_id
            self.next_id += 1
            stream = Stream(self, local_id, arg0)
            handler = self.device.handler(service)
            if handler is None:
                self.send("CLSE", 0, arg0)
                return
            self.streams[local_id] = stream
            self.send("OKAY", local_id, arg0)
            threading.Thread(target=handler, args=(stream, service), daemon=True).start()
        elif name == "OKAY":
            stream = self.streams.get(arg1)
            if stream:
                stream.remote_id = arg0
                stream.acked.set()
        elif name == "WRTE":
            stream = self.streams.get(arg1)
            if stream:
                self.send("OKAY", arg1, arg0)
                stream.feed(payload)
        elif name == "CLSE":
            stream = self.streams.get(arg1)
            if stream:
                stream.close(notify=False)


class Device:
    """The services: shell (v1, v2) and sync, confined to ``sandbox``."""

    def __init__(self, sandbox: Path, quota_bytes: int = 0) -> None:
        self.sandbox = sandbox.resolve()
        self.quota_bytes = quota_bytes
        self.env = dict(
            os.environ, PATH=f"{self.sandbox / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}", HOME=str(self.sandbox)
        )

    def handler(self, service: str):
        if service.startswith("shell"):
            return self.shell
        if service == "sync:":
            return self.sync
        return None

    # --- shell ---

    def shell(self, stream: Stream, service: str) -> None:
        options, _, command = service.partition(":")
        v2 = "v2" in options.split(",")
        stream.process = subprocess.Popen(
            ["sh", "-c", command or "true"],
            cwd=self.sandbox,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
            start_new_session=True,
        )
        lock = threading.Lock()

        def send(packet_id: int, data: bytes) -> None:
            with lock:
                stream.write(struct.pack("<BI", packet_id, len(data)) + data if v2 else data)

        def pump(pipe, packet_id: int) -> None:
            for chunk in iter(lambda: pipe.read1(32768), b""):
                send(packet_id, chunk)

        pumps = [threading.Thread(target=pump, args=(stream.process.stdout, 1), daemon=True)]
        if v2:
            pumps.append(threading.Thread(target=pump, args=(stream.process.stderr, 2), daemon=True))
            threading.Thread(target=self._stdin_v2, args=(stream,), daemon=True).start()
        else:
            stream.process.stdin.close()
        for t in pumps:
            t.start()
        for t in pumps:
            t.join()
        code = stream.process.wait()
        if v2:
            send(3, bytes([(128 - code) & 0xFF if code < 0 else code & 0xFF]))
        stream.close()

    @staticmethod
    def _stdin_v2(stream: Stream) -> None:
        stdin = stream.process.stdin
        while True:
            header = stream.read(5)
            if header is None:
                break
            packet_id, length = struct.unpack("<BI", header)
            data = stream.read(length) if length else b""
            if data is None:
                break
            try:
                if packet_id == 0:
                    stdin.write(data)
                    stdin.flush()
                elif packet_id == 4:
                    stdin.close()
            except (BrokenPipeError, ValueError):
                break

    # --- sync ---

    def _path(self, device_path: str) -> Path:
        path = Path(device_path)
        resolved = (self.sandbox / path).resolve() if not path.is_absolute() else path.resolve()
        if resolved != self.sandbox and self.sandbox not in resolved.parents:
            raise PermissionError(f"{device_path}: permission denied (outside the sandbox)")
        return resolved

    def _used(self) -> int:
        return sum(f.stat().st_size for f in self.sandbox.rglob("*") if f.is_file() and not f.is_symlink())

    def sync(self, stream: Stream, service: str) -> None:
        while True:
            request = stream.read(8)
            if request is None:
                break
            verb, length = request[:4].decode(errors="replace"), struct.unpack("<I", request[4:])[0]
            if verb == "QUIT":
                break
            arg = stream.read(length)
            if arg is None:
                break
            text = arg.decode(errors="replace")
            if verb == "STAT":
                try:
                    st = os.lstat(self._path(text))
                    reply = struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
                except OSError:
                    reply = struct.pack("<III", 0, 0, 0)
                stream.write(b"STAT" + reply)
            elif verb == "LIST":
                self._list(stream, text)
            elif verb == "SEND":
                if not self._receive_file(stream, text):
                    break
            elif verb == "RECV":
                self._send_file(stream, text)
            else:
                self._fail(stream, f"unknown sync request {verb!r}")
                break
        stream.close()

    @staticmethod
    def _fail(stream: Stream, message: str) -> None:
        data = message.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    def _list(self, stream: Stream, text: str) -> None:
        try:
            folder = self._path(text)
            for entry in sorted(os.listdir(folder)):
                st = os.lstat(folder / entry)
                name = entry.encode()
                stream.write(
                    b"DENT"
                    + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(name))
                    + name
                )
        except OSError:
            pass
        stream.write(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))

    def _receive_file(self, stream: Stream, text: str) -> bool:
        """SEND: read DATA chunks up to DONE, then write the file or FAIL; False if the stream broke."""
        device_path, _, mode = text.rpartition(",")
        data = bytearray()
        while True:
            header = stream.read(8)
            if header is None:
                return False
            verb, value = header[:4], struct.unpack("<I", header[4:])[0]
            if verb == b"DONE":
                break
            if verb != b"DATA" or value > SYNC_DATA_MAX:
                self._fail(stream, f"bad sync packet {verb!r}")
                return False
            chunk = stream.read(value)
            if chunk is None:
                return False
            data += chunk
            if (self.sandbox / "stall-sync").exists():  # a hung device: it takes the data, never answers
                while stream.read(1) is not None:
                    pass
                return False
        try:
            target = self._path(device_path)
            if self.quota_bytes and self._used() + len(data) > self.quota_bytes:
                raise OSError(28, "No space left on device")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bytes(data))
            os.chmod(target, stat.S_IMODE(int(mode or "420")))
            os.utime(target, (value, value))
        except OSError as err:
            self._fail(stream, f"{device_path}: {err.strerror or err}")
            return True
        stream.write(b"OKAY" + struct.pack("<I", 0))
        return True

    def _send_file(self, stream: Stream, text: str) -> None:
        try:
            with open(self._path(text), "rb") as f:
                for chunk in iter(lambda: f.read(SYNC_DATA_MAX), b""):
                    stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        except OSError as err:
            self._fail(stream, f"{text}: {err.strerror or err}")
            return
        stream.write(b"DONE" + struct.pack("<I", 0))


def serve(port: int, sandbox: Path, quota_bytes: int = 0) -> None:
    device = Device(sandbox, quota_bytes)
    server = socket.create_server(("127.0.0.1", port))
    print("listening", flush=True)
    while True:
        sock, _ = server.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=Connection(sock, device).serve, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sandbox", type=Path, required=True)
    parser.add_argument("--quota-bytes", type=int, default=0)
    args = parser.parse_args()
    args.sandbox.mkdir(parents=True, exist_ok=True)
    serve(args.port, args.sandbox, args.quota_bytes)


if __name__ == "__main__":
    sys.exit(main())

"""One running container as a :class:`sandboxkit.SandboxProcess`.

The driver is the container's main process (under Docker's init). Its standard streams travel
over one attach connection, multiplexed in Docker's frame format (an 8-byte header: stream id,
three zero bytes, big-endian length). A thread splits the frames into two local pipes, so the
core reads stdout from a real file descriptor.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Any

from sandboxkit.backend import SandboxProcess

__all__ = ["ContainerProcess"]

_HEADER = struct.Struct(">BxxxI")
_STDOUT, _STDERR = 1, 2


class _SocketWriter:
    """The container's stdin: writes go straight to the attach socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.closed = False

    def write(self, data: bytes) -> int:
        if self.closed:
            raise ValueError("write to closed stdin")
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def _raw_socket(attached: Any) -> socket.socket:
    """The socket under the SDK's attach object (a SocketIO or the socket itself)."""
    sock = getattr(attached, "_sock", attached)
    if not isinstance(sock, socket.socket):  # e.g. an SSL or npipe wrapper: use its socket
        sock = getattr(sock, "socket", sock)
    return sock


class ContainerProcess(SandboxProcess):
    """A started container whose main process is the driver; ``kill`` removes the container."""

    def __init__(self, container: Any, attached: Any, memory: str) -> None:
        self.container = container
        self._memory = memory
        self._sock = _raw_socket(attached)
        self._attached = attached
        out_r, self._out_w = os.pipe()
        err_r, self._err_w = os.pipe()
        self.stdin = _SocketWriter(self._sock)  # type: ignore[assignment]
        self.stdout = os.fdopen(out_r, "rb", buffering=0)
        self.stderr = os.fdopen(err_r, "rb")
        self._exit_code: int | None = None
        self._oom_killed = False
        self._removed = False
        self._lock = threading.Lock()
        self._demux = threading.Thread(target=self._split, name="sandboxkit-docker-demux", daemon=True)
        self._demux.start()

    def _split(self) -> None:
        sock = self._sock
        buffer = bytearray()
        try:
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= _HEADER.size:
                    stream, size = _HEADER.unpack_from(buffer)
                    if len(buffer) < _HEADER.size + size:
                        break
                    payload = bytes(buffer[_HEADER.size : _HEADER.size + size])
                    del buffer[: _HEADER.size + size]
                    target = self._out_w if stream == _STDOUT else self._err_w if stream == _STDERR else None
                    if target is not None:
                        _write_all(target, payload)
        except OSError:
            pass
        finally:
            for fd in (self._out_w, self._err_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _inspect_exit(self) -> None:
        try:
            self.container.reload()
        except Exception:
            return
        state = self.container.attrs.get("State", {})
        if not state.get("Running"):
            self._exit_code = state.get("ExitCode")
            self._oom_killed = bool(state.get("OOMKilled"))

    def poll(self) -> int | None:
        if self._exit_code is None and not self._removed:
            self._inspect_exit()
        return self._exit_code

    def wait(self, timeout: float | None = None) -> int | None:
        if self._exit_code is not None or self._removed:
            return self._exit_code
        try:
            status = self.container.wait(timeout=timeout if timeout is not None else None)
        except Exception:  # the SDK raises a requests timeout error, or the container is gone
            return self.poll()
        self._exit_code = status.get("StatusCode")
        self._inspect_exit()
        return self._exit_code

    def kill(self) -> None:
        with self._lock:
            if self._removed:
                return
            if self._exit_code is None:
                self._inspect_exit()
            self._removed = True
        try:
            self.container.remove(force=True)
        except Exception:
            pass  # already gone (removed from outside); nothing left to leak
        self.stdin.close()
        try:
            self._sock.close()
        except OSError:
            pass
        self._demux.join(timeout=2)
        for stream in (self.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def describe_exit(self, code: int | None) -> str:
        if self._oom_killed:
            return (f"the container was killed by the kernel's out-of-memory killer: it reached its "
                    f"memory limit ({self._memory}); raise the 'memory' option if the code needs more")
        if code == 137:
            return "the container was killed (SIGKILL) from outside sandboxkit"
        if code is None and self._removed:
            return "the container was removed"
        if code is not None and code > 128:
            return super().describe_exit(128 - code) + f" (container exit code {code})"
        return super().describe_exit(code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

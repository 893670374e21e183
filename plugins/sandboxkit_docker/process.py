"""One running container as a :class:`sandboxkit.SandboxProcess`.

The driver is the container's main process (under Docker's init). Its standard streams travel
over one attach connection, multiplexed in Docker's frame format (an 8-byte header: stream id,
three zero bytes, big-endian length). The core reads that connection itself and passes each
chunk through ``split_output`` (:meth:`ContainerProcess._demultiplex`), which returns the
stdout payload and sends the stderr payload down a local pipe: no extra thread between the
container and the reader.

With the socket channel (see :mod:`sandboxkit_docker.channel`), stdin and stdout are the
channel's connection instead, and a thread pumps the attach stream, now carrying stderr alone,
into the same pipe.
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

    def fileno(self) -> int:
        return self._sock.fileno()

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


class _SocketReader:
    """The attach connection as a readable stream (its raw, still multiplexed bytes)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, size: int = 1 << 16) -> bytes:
        try:
            return self._sock.recv(size)
        except OSError:
            return b""

    read1 = read

    def close(self) -> None:
        pass  # the process closes the socket


class ContainerProcess(SandboxProcess):
    """A started container whose main process is the driver; ``kill`` removes the container."""

    def __init__(self, container: Any, attached: Any, memory: str) -> None:
        self.container = container
        self._memory = memory
        #: The attach connection (stdin, stdout and stderr, multiplexed).
        self.attach_socket = _raw_socket(attached)
        self._attached = attached
        err_r, self._err_w = os.pipe()
        os.set_blocking(self._err_w, False)
        self.stdin = _SocketWriter(self.attach_socket)  # type: ignore[assignment]
        self.stdout = _SocketReader(self.attach_socket)  # type: ignore[assignment]
        self.stderr = os.fdopen(err_r, "rb")
        self._frames = bytearray()
        self._exit_code: int | None = None
        self._oom_killed = False
        self._removed = False
        self._lock = threading.Lock()
        self._stderr_lock = threading.Lock()
        self._channel: socket.socket | None = None
        self.split_output = self._demultiplex  # type: ignore[assignment]

    @property
    def channel(self) -> str:
        """How stdin and stdout travel: "socket" or "attach"."""
        return "attach" if self._channel is None else "socket"

    def use_channel(self, connection: socket.socket) -> None:
        """Carry stdin and stdout over the driver's socket-channel ``connection`` from now on."""
        self._channel = connection
        self.attach_socket.settimeout(None)  # the stderr pump may wait for a long time
        self.stdin = _SocketWriter(connection)  # type: ignore[assignment]
        self.stdout = _SocketReader(connection)  # type: ignore[assignment]
        self.split_output = None  # type: ignore[assignment]
        threading.Thread(target=self._pump_stderr, name="sandboxkit-docker-stderr", daemon=True).start()

    def _pump_stderr(self) -> None:
        while True:
            try:
                chunk = self.attach_socket.recv(1 << 16)
            except OSError:
                chunk = b""
            self._demultiplex(chunk)
            if not chunk:
                return

    def _demultiplex(self, chunk: bytes) -> bytes:
        """Demultiplex one chunk of the attach stream: return stdout, forward stderr. Given to
        the core as ``split_output`` while stdout travels over the attach stream."""
        if not chunk:
            self._close_stderr()
            return b""
        frames = self._frames
        frames += chunk
        out = bytearray()
        offset = 0
        while len(frames) - offset >= _HEADER.size:
            stream, size = _HEADER.unpack_from(frames, offset)
            end = offset + _HEADER.size + size
            if len(frames) < end:
                break
            payload = frames[offset + _HEADER.size : end]
            if stream == _STDOUT:
                out += payload
            elif stream == _STDERR:
                self._forward_stderr(bytes(payload))
            offset = end
        del frames[:offset]
        return bytes(out)

    def _forward_stderr(self, data: bytes) -> None:
        # Diagnostics only: if nobody drains the pipe, drop rather than block the protocol.
        with self._stderr_lock:  # never write to a descriptor number closed (and reused) meanwhile
            if self._err_w < 0:
                return
            try:
                os.write(self._err_w, data)
            except (BlockingIOError, OSError):
                pass

    def _close_stderr(self) -> None:
        with self._stderr_lock:
            if self._err_w >= 0:
                try:
                    os.close(self._err_w)
                except OSError:
                    pass
                self._err_w = -1

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
        # Hang up first: the engine takes a long time to remove a container whose attach stream
        # still holds output nobody reads (a sandbox flooding it), and a hung-up stream has none.
        self.stdin.close()
        for sock in (self.attach_socket, self._channel):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
                except OSError:
                    pass
                try:
                    sock.close()
                except OSError:
                    pass
        try:
            self.container.remove(force=True)
        except Exception:
            pass  # already gone (removed from outside); nothing left to leak
        self._close_stderr()
        try:
            self.stderr.close()
        except OSError:
            pass

    def describe_exit(self, code: int | None) -> str:
        if self._oom_killed:
            return (f"the container was killed by the kernel's out-of-memory killer: it reached its "
                    f"memory limit ({self._memory}); raise the 'memory' option if the code needs more")
        if code == 137:
            return ("the sandbox's process was killed with SIGKILL, by code in the sandbox or from outside "
                    "sandboxkit (e.g. docker kill)")
        if code is None:
            return "the container was removed from outside sandboxkit"
        if code is not None and code > 128:
            return super().describe_exit(128 - code) + f" (container exit code {code})"
        return super().describe_exit(code)

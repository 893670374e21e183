"""Writing to the sandbox without ever waiting for it to read.

A sandbox may stop reading its input at any moment. :class:`Outbox` therefore never blocks the
thread that sends: on a stream with a file descriptor it writes what its own non-blocking
duplicate of the descriptor takes at once and leaves the rest, in order, to a writer thread; on
any other stream (an SDK's writer) the writer thread does every write. Messages are written whole
and in the order sent. Nothing here holds a lock while waiting on the sandbox, so interrupting
and killing it never wait on a write.
"""

from __future__ import annotations

import collections
import os
import select
import threading
from typing import IO

__all__ = ["Outbox"]


class Outbox:
    """The host's side of the sandbox's stdin. ``send`` never blocks; see the module docstring."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self._stream = stream
        self._name = name
        self._fd = self._nonblocking_fd(stream)
        self._writing = False  # the writer thread is inside a write
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._backlog: collections.deque[memoryview] = collections.deque()
        self._backlog_bytes = 0
        self._taken = 0
        self._writer: threading.Thread | None = None
        self._closing = False
        #: Set once a write failed: the sandbox no longer reads (it is gone or closed its input).
        self.broken = False

    @staticmethod
    def _nonblocking_fd(stream: IO[bytes]) -> int | None:
        """A private non-blocking duplicate of the stream's descriptor, or None if it has none."""
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        if not hasattr(select, "poll"):
            return None
        try:
            fd = os.dup(fd)
        except OSError:
            return None
        try:
            os.set_blocking(fd, False)
        except OSError:
            os.close(fd)
            return None
        return fd

    @property
    def backlog_bytes(self) -> int:
        """Bytes sent but not yet taken by the sandbox."""
        return self._backlog_bytes

    @property
    def taken_bytes(self) -> int:
        """Bytes the sandbox has taken so far (it reads while this grows)."""
        return self._taken

    def send(self, *chunks: bytes) -> None:
        """Queue ``chunks`` to be written back to back, after everything sent before."""
        with self._lock:
            if self.broken or self._closing:
                return
            pending = [memoryview(chunk) for chunk in chunks if chunk]
            if self._fd is not None and not self._backlog:
                pending = self._write_now(pending)
            for view in pending:
                self._backlog.append(view)
                self._backlog_bytes += len(view)
            if self._backlog:
                self._start_writer()
                self._ready.notify()

    def close(self) -> None:
        """Stop writing and release the descriptor (the sandbox's input then ends, once the
        backend lets go of its own end); what is still queued is dropped. Never blocks."""
        with self._lock:
            self._closing = True
            self._backlog.clear()
            self._backlog_bytes = 0
            self._ready.notify()
            if not self._writing:
                self._release()

    def _release(self) -> None:
        """Close the private descriptor; lock held, no write in progress."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _write_now(self, views: list[memoryview]) -> list[memoryview]:
        """Write what the descriptor takes without blocking; return what is left. Lock held."""
        assert self._fd is not None
        for index, view in enumerate(views):
            while view:
                try:
                    written = os.write(self._fd, view)
                    self._taken += written
                    view = view[written:]
                except BlockingIOError:
                    return [view, *views[index + 1:]]
                except OSError:
                    self.broken = True
                    return []
        return []

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_backlog, name=f"sandboxkit-writer-{self._name}",
                                            daemon=True)
            self._writer.start()

    def _write_backlog(self) -> None:
        fd = self._fd
        poller = select.poll()
        if fd is not None:
            poller.register(fd, select.POLLOUT)
        while True:
            with self._lock:
                while not self._backlog and not self._closing:
                    self._ready.wait()
                if self._closing:
                    self._release()
                    return
                views = [self._backlog[0]] if fd is not None else list(self._backlog)
                self._writing = True
            try:
                written = self._write_some(fd, poller, views)
                failed = False
            except (OSError, ValueError):
                written, failed = 0, True
            with self._lock:
                self._writing = False
                if failed:
                    self.broken = True
                if failed or self._closing:
                    self._backlog.clear()
                    self._backlog_bytes = 0
                    self._release()
                    return
                self._backlog_bytes -= written
                self._taken += written
                while written and written >= len(self._backlog[0]):
                    written -= len(self._backlog.popleft())
                if written:
                    self._backlog[0] = self._backlog[0][written:]

    def _write_some(self, fd: int | None, poller: select.poll, views: list[memoryview]) -> int:
        """Write some of ``views``; wait as long as the sandbox takes (on this thread only)."""
        if fd is None:  # an SDK's writer: write what is queued, then flush once
            for view in views:
                self._stream.write(view)
            self._stream.flush()
            return sum(len(view) for view in views)
        while True:
            try:
                return os.write(fd, views[0])
            except BlockingIOError:
                poller.poll(200)  # wakes now and then so that close() is noticed
                if self._closing:
                    return 0

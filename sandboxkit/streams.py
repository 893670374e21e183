"""Reading the sandbox's stdout as protocol messages, with a deadline.

Two strategies behind one interface. :class:`PolledReader` is used whenever the stream has a
file descriptor: the thread waiting for a reply reads it itself (``poll`` plus ``os.read``), so a
reply reaches the caller without a thread hand-off. :class:`ThreadedReader` serves streams
without one (e.g. an SDK's iterator) from a background thread. Both enforce the line-size cap,
parse JSON, and can be woken early by another thread.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from typing import IO, Any, Callable

from sandboxkit.decoding import MessageLimits, decode
from sandboxkit.protocol import Violation

__all__ = ["MessageReader", "PolledReader", "ThreadedReader", "open_reader"]

# Reads allocate this much each time, so it stays small; large replies just take more reads.
_CHUNK = 1 << 16
#: How long a reader polls without sleeping before it blocks (seconds).
SPIN_SECONDS = 0.0002
_yield_cpu = getattr(os, "sched_yield", lambda: None)

#: One reader event: ("message", dict), ("eof", None), ("violation", str), ("timeout", None) or
#: ("wake", None).
Event = tuple[str, Any]


def _parse(line: bytes, limits: MessageLimits) -> Event:
    try:
        return "message", decode(line, limits)
    except Violation as exc:
        return "violation", str(exc)


def _too_long(limits: MessageLimits) -> str:
    return f"a message exceeded the {limits.max_bytes}-byte limit (max_message_bytes)"


class MessageReader:
    """Yields the sandbox's messages one at a time; only one thread reads at a time."""

    spin = False

    def next_event(self, deadline: float | None) -> Event:
        """The next event, or ``("timeout", None)`` once ``deadline`` (monotonic) has passed."""
        raise NotImplementedError

    def wake(self) -> None:
        """Make a pending or the next :meth:`next_event` return ``("wake", None)`` promptly."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the reader's own resources (not the stream)."""


#: Turns raw chunks read from a process's stdout into its stdout bytes (see
#: ``SandboxProcess.split_output``); called with b"" once at EOF.
Splitter = Callable[[bytes], bytes]


def _identity(chunk: bytes) -> bytes:
    return chunk


class PolledReader(MessageReader):
    """Reads a file descriptor with ``poll`` on the thread that waits for a message.

    It reads its own duplicate of the descriptor, so a backend closing the stream (on kill) can
    never make it read a descriptor number that was reused meanwhile; :meth:`close` releases the
    duplicate at once, or when the thread inside :meth:`next_event` leaves it.
    """

    def __init__(self, fd: int, limits: MessageLimits, split: Splitter = _identity) -> None:
        self._split = split
        self._limits = limits
        self._fd = os.dup(fd)
        self._buffer = bytearray()
        self._scanned = 0
        self._eof = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(self._wake_r, select.POLLIN)
        self._closed = False
        self._busy = False
        self._lock = threading.Lock()
        #: Whether to poll briefly before sleeping; the session turns it off while host tools run,
        #: since they need the interpreter lock that spinning would keep taking.
        self.spin = True

    def _take_line(self) -> bytes | None:
        index = self._buffer.find(b"\n", self._scanned)
        if index < 0:
            self._scanned = len(self._buffer)
            if self._scanned > self._limits.max_bytes:
                raise Violation(_too_long(self._limits))
            return None
        if index > self._limits.max_bytes:
            raise Violation(_too_long(self._limits))
        line = bytes(self._buffer[:index])
        del self._buffer[: index + 1]
        self._scanned = 0
        return line

    def next_event(self, deadline: float | None) -> Event:
        with self._lock:
            if self._closed:
                return "eof", None
            self._busy = True
        try:
            return self._next_event(deadline)
        finally:
            with self._lock:
                self._busy = False
                if self._closed:
                    self._release()

    def _next_event(self, deadline: float | None) -> Event:
        while True:
            try:
                line = self._take_line()
            except Violation as exc:
                return "violation", str(exc)
            if line is not None:
                return _parse(line, self._limits)
            if self._eof:
                return "eof", None
            if self._closed:
                return "eof", None
            ready = self._spin() if self.spin else []
            if not ready:
                wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
                ready = self._poll.poll(wait_ms)
            if not ready:
                if deadline is not None and time.monotonic() < deadline:
                    continue
                return "timeout", None
            if any(fd == self._wake_r for fd, _ in ready):
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                return "wake", None
            try:
                data = os.read(self._fd, _CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._eof = True
                self._buffer += self._split(b"")
            else:
                self._buffer += self._split(data)

    def _spin(self) -> list[tuple[int, int]]:
        """Poll without sleeping for a moment first: a quick reply then costs no wake-up."""
        poll = self._poll.poll
        end = time.perf_counter() + SPIN_SECONDS
        while True:
            ready = poll(0)
            if ready or time.perf_counter() >= end:
                return ready
            _yield_cpu()  # if the sandbox shares this CPU, let it run rather than burn the slice

    def wake(self) -> None:
        with self._lock:  # never write to a descriptor number that close() released
            if self._closed:
                return
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._busy:  # the reading thread releases the descriptors as it leaves
                try:
                    os.write(self._wake_w, b"!")
                except OSError:
                    pass
            else:
                self._release()

    def _release(self) -> None:
        """Close the descriptors; call with the lock held, once closed and no thread reads."""
        for fd in (self._fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fd = self._wake_r = self._wake_w = -1


class _SplitStream:
    """A readable stream of just the stdout bytes of a stream that carries more (see Splitter)."""

    def __init__(self, stream: IO[bytes], split: Splitter) -> None:
        self._stream = stream
        self._split = split
        self._buffer = bytearray()
        self._eof = False

    def readline(self, limit: int) -> bytes:
        while True:
            index = self._buffer.find(b"\n", 0, limit)
            if index >= 0 or len(self._buffer) >= limit or self._eof:
                end = index + 1 if index >= 0 else min(limit, len(self._buffer))
                line = bytes(self._buffer[:end])
                del self._buffer[:end]
                return line
            read = getattr(self._stream, "read1", self._stream.read)
            chunk = read(1 << 16)
            if not chunk:
                self._eof = True
            self._buffer += self._split(chunk)


class ThreadedReader(MessageReader):
    """Reads a stream without a descriptor on a thread of its own. At most :attr:`DEPTH` decoded
    messages wait; then the thread stops reading, so a flooding sandbox meets backpressure
    instead of filling the host's memory."""

    DEPTH = 64

    def __init__(self, stream: IO[bytes], limits: MessageLimits, split: Splitter = _identity) -> None:
        self._events: queue.Queue[Event] = queue.Queue(self.DEPTH)
        self._signals: queue.SimpleQueue[Event] = queue.SimpleQueue()  # wake-ups, never blocked
        self._ready = threading.Semaphore(0)  # one release per event in either queue
        self._closed = False
        source: Any = stream if split is _identity else _SplitStream(stream, split)
        threading.Thread(target=self._read, args=(source, limits), name="sandboxkit-stdout", daemon=True).start()

    def _put(self, event: Event) -> None:
        while not self._closed:
            try:
                self._events.put(event, timeout=0.5)  # waits for room; looks at close() now and then
            except queue.Full:
                continue
            self._ready.release()
            return

    def _read(self, stream: Any, limits: MessageLimits) -> None:
        try:
            while not self._closed:
                line = stream.readline(limits.max_bytes + 1)
                if not line:
                    break
                if not line.endswith(b"\n"):
                    if len(line) > limits.max_bytes:
                        self._put(("violation", _too_long(limits)))
                        return
                    break
                event = _parse(line[:-1], limits)
                self._put(event)
                if event[0] == "violation":
                    return
        except Exception:  # the stream broke under us: the sandbox is gone
            pass
        self._put(("eof", None))

    def next_event(self, deadline: float | None) -> Event:
        if self._closed:
            return "eof", None
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._ready.acquire(timeout=wait):
            return "timeout", None
        try:
            return self._signals.get_nowait()
        except queue.Empty:
            pass
        event = self._events.get_nowait()
        if event[0] == "eof":
            self._signals.put(event)  # stays at EOF for later callers
            self._ready.release()
        return event

    def wake(self) -> None:
        self._signals.put(("wake", None))
        self._ready.release()

    def close(self) -> None:
        """Stop reading (the thread ends at its next line or within half a second of a full
        queue) and make a waiting or later :meth:`next_event` return EOF."""
        self._closed = True
        self._signals.put(("eof", None))
        self._ready.release()


def open_reader(stream: IO[bytes], limits: MessageLimits, split: Splitter | None = None) -> MessageReader:
    """A :class:`PolledReader` on the stream's file descriptor when it has one (nothing else may
    read the stream then), else a :class:`ThreadedReader`. ``split`` extracts stdout from a
    stream that also carries other data."""
    split = split or _identity
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return ThreadedReader(stream, limits, split)
    if not hasattr(select, "poll"):
        return ThreadedReader(stream, limits, split)
    return PolledReader(fd, limits, split)

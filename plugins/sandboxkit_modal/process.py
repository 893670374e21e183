"""One Modal Sandbox running the driver, as a :class:`sandboxkit.SandboxProcess`.

The driver runs as an exec in the sandbox. The host side talks to it through three local pipes,
so the core reads and writes file descriptors: ``stdin``, ``stdout`` and ``stderr`` are the
host's ends. Three pumps, coroutines on the SDK's own event loop, move the bytes between those
pipes and the exec: stdout and stderr chunks are written into their pipes as the SDK receives
them, and what the host writes into the stdin pipe is sent to the exec and drained. Running the
pumps on the loop that does the SDK's network I/O means no thread sits between the SDK and the
host: a reply costs one wake-up of the reading thread, as it would reading the SDK's iterator
directly, and a write costs the host one ``write`` on a pipe. The pumps never block the loop:
they wait for the pipes with ``add_reader``/``add_writer``. ``kill`` terminates the whole sandbox.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from typing import Any, Callable

from sandboxkit.backend import SandboxProcess

__all__ = ["ModalSandboxProcess"]

#: How long to wait for Modal to report the end of a sandbox whose driver exec vanished (s).
_SANDBOX_END_PATIENCE = 3.0
#: The most the stdin pump sends in one drain; below both of the SDK's stdin buffer limits.
_STDIN_CHUNK = 1 << 20
#: Pipe capacity asked for (Linux), so a large message crosses in few turns of the pumps.
_PIPE_SIZE = 1 << 20
#: How long ``kill`` waits for the cancelled pumps to let go of their pipes (s).
_PUMP_PATIENCE = 1.0

_private_loop_lock = threading.Lock()
_private_loop: asyncio.AbstractEventLoop | None = None


def _sdk_loop() -> asyncio.AbstractEventLoop:
    """The event loop the modal SDK runs its I/O on, started if need be.

    On a loop of its own the SDK's async interface runs inline, with no thread hop. If this SDK
    version does not expose that loop, a private loop thread is used instead (the SDK then hands
    each call over to its own loop, which is slower but equally correct)."""
    try:
        from modal._utils.async_utils import synchronizer

        loop = synchronizer._get_loop(start=True)
        if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_running():
            return loop
    except Exception:
        pass
    global _private_loop
    with _private_loop_lock:
        if _private_loop is None or _private_loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="sandboxkit-modal-io", daemon=True).start()
            _private_loop = loop
        return _private_loop


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
    except (ImportError, OSError):
        pass  # the default capacity only costs more turns of the pumps
    return read_end, write_end


async def _until(loop: asyncio.AbstractEventLoop, fd: int, writable: bool) -> None:
    """Wait, without blocking the loop, until ``fd`` is readable (or writable)."""
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)


class _Fd:
    """A descriptor that a pump uses and ``kill`` may close from another thread: every use and
    the close hold one lock, so a closed number (perhaps reused by then) is never touched."""

    def __init__(self, fd: int, lock: threading.Lock) -> None:
        self.fd = fd
        self._lock = lock
        self.closed = False

    def call(self, operation: Callable[[int], Any]) -> Any:
        """``operation(fd)`` under the lock; raises BrokenPipeError once the descriptor is closed."""
        with self._lock:
            if self.closed:
                raise BrokenPipeError("closed by sandboxkit")
            return operation(self.fd)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                os.close(self.fd)
            except OSError:
                pass


def _unwrapped(stream: Any) -> Any:
    """The SDK's own asynchronous object behind one of its blocking stream wrappers, or the
    wrapper itself when this SDK does not expose it. Used on the SDK's loop, it skips the
    wrapper's translation layer, which costs a message more than the rest of its way there."""
    try:
        from modal._utils.async_utils import synchronizer

        raw = synchronizer._translate_in(stream)
    except Exception:  # another SDK version: the public interface works too, a little slower
        return stream
    return raw if raw is not stream and hasattr(raw, "drain" if hasattr(stream, "drain") else "__aiter__") else stream


async def _pump_output(source: Any, sink: _Fd) -> None:
    """Copy an SDK output stream into a pipe until either ends, then close the pipe."""
    loop = asyncio.get_running_loop()
    try:
        async for chunk in _unwrapped(source):
            data = chunk.encode("utf-8", "surrogateescape") if isinstance(chunk, str) else bytes(chunk)
            view = memoryview(data)
            while view:
                try:
                    view = view[sink.call(lambda fd: os.write(fd, view)):]
                except BlockingIOError:  # the host has not read yet: wait for room, not in the loop
                    await _until(loop, sink.fd, writable=True)
    except (Exception, asyncio.CancelledError):
        pass  # the stream broke (the sandbox is gone) or kill cancelled us: the reader sees EOF
    finally:
        sink.close()


async def _pump_input(source: _Fd, writer: Any) -> None:
    """Send what the host writes into the stdin pipe to the exec, draining each piece, until the
    host closes its end (then send EOF). If the exec stops accepting input, close the pipe, so
    the host's writes fail with EPIPE instead of filling it."""
    loop = asyncio.get_running_loop()
    drain = writer.drain if asyncio.iscoroutinefunction(writer.drain) else writer.drain.aio
    try:
        while True:
            try:
                data = source.call(lambda fd: os.read(fd, _STDIN_CHUNK))
            except BlockingIOError:
                await _until(loop, source.fd, writable=False)
                continue
            if not data:
                writer.write_eof()
                await drain()
                return
            writer.write(data)
            await drain()
    except (Exception, asyncio.CancelledError):
        pass
    finally:
        source.close()


async def _signalling(pump: Any, done: threading.Event) -> None:
    """Run ``pump``; set ``done`` once it has finished, cancelled or not."""
    try:
        await pump
    finally:
        done.set()


class ModalSandboxProcess(SandboxProcess):
    """The driver exec inside one Modal Sandbox; killing it terminates the sandbox."""

    def __init__(self, sandbox: Any, exec_process: Any) -> None:
        self.sandbox = sandbox
        self._exec = exec_process
        #: The SDK's stdin writer of the exec (its own asynchronous one where the SDK exposes it):
        #: everything sent to the sandbox passes its ``write``.
        self.exec_stdin = _unwrapped(exec_process.stdin)
        self._fd_lock = threading.Lock()
        in_r, in_w = _pipe()
        out_r, out_w = _pipe()
        err_r, err_w = _pipe()
        for fd in (in_r, out_w, err_w):  # the pumps' ends: they wait on the loop, never block it
            os.set_blocking(fd, False)
        self._pump_ends = [_Fd(fd, self._fd_lock) for fd in (in_r, out_w, err_w)]
        self.stdin = os.fdopen(in_w, "wb")
        self.stdout = os.fdopen(out_r, "rb", buffering=0)
        # Unbuffered: closing it never waits for a reader blocked on it.
        self.stderr = os.fdopen(err_r, "rb", buffering=0)
        loop = _sdk_loop()
        pumps = (_pump_input(self._pump_ends[0], self.exec_stdin),
                 _pump_output(exec_process.stdout, self._pump_ends[1]),
                 _pump_output(exec_process.stderr, self._pump_ends[2]))
        self._pumps_done = [threading.Event() for _ in pumps]
        self._pumps: list[concurrent.futures.Future[None]] = [
            asyncio.run_coroutine_threadsafe(_signalling(pump, done), loop)
            for pump, done in zip(pumps, self._pumps_done)
        ]
        self._terminated = False
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        try:
            code = self._exec.poll()
        except Exception:
            code = None
        if code is None:
            try:
                code = self.sandbox.poll()
            except Exception:
                code = None
        return code

    def wait(self, timeout: float | None = None) -> int | None:
        done = threading.Event()
        result: list[int | None] = [None]

        def wait_exec() -> None:
            try:
                result[0] = self._exec.wait()
            except Exception:
                result[0] = self.poll()
            done.set()

        threading.Thread(target=wait_exec, daemon=True).start()
        done.wait(timeout)
        return result[0]

    def kill(self) -> None:
        with self._lock:
            if self._terminated:
                return
            self._terminated = True
        try:
            self.stdin.close()
        except Exception:
            pass
        try:
            self.sandbox.terminate()
        except Exception:
            pass  # already gone (timed out or terminated elsewhere)
        # Killing never waits on the sandbox: the pumps are cancelled, whatever they wait for.
        for pump in self._pumps:
            pump.cancel()
        deadline = time.monotonic() + _PUMP_PATIENCE
        for done in self._pumps_done:
            done.wait(max(0.0, deadline - time.monotonic()))
        for end in self._pump_ends:  # a pump that did not finish: end its pipe ourselves
            end.close()
        for stream in (self.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def _sandbox_code(self, patience: float) -> int | None:
        """The sandbox's exit code, waiting up to ``patience`` s for Modal to report its end."""
        deadline = time.monotonic() + patience
        while True:
            try:
                code = self.sandbox.poll()
            except Exception:
                code = None
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(0.05)

    def describe_exit(self, code: int | None) -> str:
        # An exec that ended without an exit code went down with its sandbox, whose end Modal may
        # report a moment later than the end of the exec's output.
        sandbox_code = self._sandbox_code(_SANDBOX_END_PATIENCE if code is None and not self._terminated else 0)
        if sandbox_code is not None and not self._terminated:
            if sandbox_code == 124:
                return "the Modal sandbox reached its 'sandbox_timeout' option and was stopped (exit code 124)"
            return (f"the Modal sandbox ended (exit code {sandbox_code}): it was terminated from outside "
                    "sandboxkit or reached its 'sandbox_timeout' option")
        if code is not None and code > 128:  # the SDK reports a signal as 128 + its number
            return super().describe_exit(128 - code) + f" (exit code {code})"
        return super().describe_exit(code)

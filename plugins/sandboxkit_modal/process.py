"""One Modal Sandbox running the driver, as a :class:`sandboxkit.SandboxProcess`.

The driver runs as an exec in the sandbox. The SDK delivers its output as an iterator; a pump
thread per stream copies it into a local pipe, so the core reads stdout from a file descriptor.
Writes go to the exec's stdin and are drained at once. ``kill`` terminates the whole sandbox.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from sandboxkit.backend import SandboxProcess

__all__ = ["ModalSandboxProcess"]

#: How long to wait for Modal to report the end of a sandbox whose driver exec vanished (s).
_SANDBOX_END_PATIENCE = 3.0


class _ExecStdin:
    """The exec's stdin as a binary file: each flush drains what was written to the sandbox."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.closed = False

    def write(self, data: bytes) -> int:
        if self.closed:
            raise ValueError("write to closed stdin")
        try:
            self._stream.write(data)
        except Exception as exc:  # the SDK's errors when the sandbox is gone
            raise OSError(f"the Modal sandbox no longer accepts input: {exc}") from exc
        return len(data)

    def flush(self) -> None:
        try:
            self._stream.drain()
        except Exception as exc:
            raise OSError(f"the Modal sandbox no longer accepts input: {exc}") from exc

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._stream.write_eof()
                self._stream.drain()
            except Exception:
                pass


def _pump(source: Any, fd: int, close: Any) -> None:
    """Copy an SDK output stream into a pipe until it ends, then close the pipe (via ``close``)."""
    try:
        for chunk in source:
            data = chunk.encode("utf-8", "surrogateescape") if isinstance(chunk, str) else bytes(chunk)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except Exception:
        pass  # the stream broke: the sandbox is gone, which the reader sees as EOF
    finally:
        close(fd)


class ModalSandboxProcess(SandboxProcess):
    """The driver exec inside one Modal Sandbox; killing it terminates the sandbox."""

    def __init__(self, sandbox: Any, exec_process: Any) -> None:
        self.sandbox = sandbox
        self._exec = exec_process
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.stdin = _ExecStdin(exec_process.stdin)  # type: ignore[assignment]
        self.stdout = os.fdopen(out_r, "rb", buffering=0)
        # Unbuffered: closing it never waits for a reader blocked on it.
        self.stderr = os.fdopen(err_r, "rb", buffering=0)
        self._write_ends = {out_w, err_w}
        self._write_lock = threading.Lock()
        self._pumps = [
            threading.Thread(target=_pump, args=(exec_process.stdout, out_w, self._close_write_end),
                             name="sandboxkit-modal-out", daemon=True),
            threading.Thread(target=_pump, args=(exec_process.stderr, err_w, self._close_write_end),
                             name="sandboxkit-modal-err", daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        self._terminated = False
        self._lock = threading.Lock()

    def _close_write_end(self, fd: int) -> None:
        """Close one pipe write end exactly once (the pump when its stream ends, or kill)."""
        with self._write_lock:
            if fd not in self._write_ends:
                return
            self._write_ends.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass

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
        for pump in self._pumps:
            pump.join(timeout=5)
        for fd in list(self._write_ends):  # a pump that did not finish: end its pipe ourselves
            self._close_write_end(fd)
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

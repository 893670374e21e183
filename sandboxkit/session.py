"""One driver process and the host side of its conversation.

A :class:`DriverSession` launches the driver through a backend, completes the handshake, reads
every line the sandbox sends on a background thread (validating it), runs tool calls on host
threads, and enforces the execute timeout in two steps: interrupt, then kill after a grace
period. Any failure that leaves the sandbox's state unknown ends the session.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import json
import queue
import secrets
import threading
import time
import weakref
from typing import Any, Callable

from sandboxkit import protocol
from sandboxkit.backend import Backend, SandboxProcess
from sandboxkit.errors import BackendStartError, ProtocolError, SandboxDiedError
from sandboxkit.options import SessionOptions
from sandboxkit.streams import MessageReader, open_reader
from sandboxkit_driver import driver_source

__all__ = ["DriverSession", "ToolRunner"]

#: Runs one tool call: (name, args, kwargs) -> the reply fields ({"ok": ..., ...}).
ToolRunner = Callable[[str, list, dict], dict]

_STDERR_TAIL_BYTES = 16 * 1024
_live_sessions: weakref.WeakSet[DriverSession] = weakref.WeakSet()


@atexit.register
def _close_all_sessions() -> None:
    for session in list(_live_sessions):
        session.close()


class _Workers:
    """Threads for tool calls: an idle one is reused, otherwise a new one starts, so concurrent
    calls never wait for each other (they may block on one another, as sub-agents do)."""

    IDLE_SECONDS = 30.0

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                spawn = False
            else:
                spawn = True
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name="sandboxkit-tool", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0 and self._jobs.empty():
                        self._idle -= 1
                        return
                continue
            job()
            with self._lock:
                self._idle += 1


_TOOL_WORKERS = _Workers()


class DriverSession:
    """The live driver in one sandbox. Not thread-safe: the interpreter serialises executes."""

    def __init__(self, backend: Backend, options: SessionOptions, label: str) -> None:
        self._backend = backend
        self._options = options
        self._label = label
        self._process: SandboxProcess | None = None
        self._send_lock = threading.Lock()
        self._stderr_tail: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._stderr_done = threading.Event()
        self._closed = False
        self._reader: MessageReader | None = None
        self._tools_lock = threading.Lock()
        self._tools_running = 0
        #: BaseExceptions raised by tools (e.g. KeyboardInterrupt), for the execute loop to re-raise.
        self._tool_interrupts: collections.deque[BaseException] = collections.deque()
        self.python_version = ""
        #: Set on host threads while they run one of this session's tools.
        self.tool_context = threading.local()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        availability = self._backend.availability()
        if not availability.usable:
            hint = f" {availability.hint}" if availability.hint else ""
            raise BackendStartError(f"backend {self._backend.name!r} cannot run here: {availability.reason}.{hint}")
        source = driver_source()
        spin = self._backend.poll_before_sleep
        self._process = self._backend.launch(protocol.driver_argv(), {} if spin else {"SANDBOXKIT_SPIN_SECONDS": "0"})
        _live_sessions.add(self)
        self._reader = open_reader(
            self._process.stdout, self._options.max_message_bytes, self._process.split_output
        )
        # The host side polls briefly either way (yielding the CPU as it does): a relay's answer
        # often still comes within the moment. Only the driver's polling follows the backend.
        threading.Thread(target=self._read_stderr, name=f"sandboxkit-stderr-{self._label}", daemon=True).start()
        try:
            self._write(source)
        except SandboxDiedError:
            self._raise_died("while receiving the driver")
        kind, payload = self._next_event(time.monotonic() + self._options.start_timeout)
        if kind == "timeout":
            self.close()
            raise BackendStartError(
                f"the sandbox did not start the driver within {self._options.start_timeout:g}s "
                f"(raise the 'start_timeout' option if the backend is slow to start){self._stderr_note()}"
            )
        if kind == "eof":
            self._raise_died("during start-up")
        if kind == "violation":
            self._fail_protocol(payload)
        if kind == "message":
            try:
                protocol.validate(payload)
            except protocol.Violation as exc:
                self._fail_protocol(str(exc))
        if payload.get("type") != "hello":
            self._fail_protocol(f"expected the driver's hello first, got {payload.get('type')!r}")
        if payload["protocol"] != protocol.PROTOCOL_VERSION:
            self.close()
            raise BackendStartError(
                f"the sandbox driver speaks protocol {payload['protocol']}, this host speaks "
                f"{protocol.PROTOCOL_VERSION}; upgrade sandboxkit on the side that is older"
            )
        self.python_version = payload["python"]

    def close(self) -> None:
        """Ask the driver to stop, then make sure the sandbox is gone. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _live_sessions.discard(self)
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                try:
                    self._write(b'{"type":"shutdown"}\n')
                    process.stdin.close()
                except Exception:
                    pass
                process.wait(1.0)
        finally:
            process.kill()
            if self._reader is not None:
                self._reader.close()

    @property
    def alive(self) -> bool:
        return not self._closed and self._process is not None

    # -- one execute ----------------------------------------------------------------------
    def execute(
        self, message_json: str, blobs: list[bytes], exec_id: str, run_tool: ToolRunner
    ) -> tuple[dict[str, Any], bool]:
        """Send an execute request (and its raw blobs); serve its tool calls; return
        (result message, interrupted).

        The calling thread reads the replies itself. Raises :class:`SandboxDiedError` or
        :class:`ProtocolError` (ending the session) when the sandbox dies, breaks the protocol or
        ignores an interrupt past the grace period.
        """
        timeout = self._options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        # Tools run with the caller's context variables (dspy.context(lm=...) among them).
        caller = contextvars.copy_context()
        self._write(message_json.encode("utf-8", "surrogatepass") + b"\n", *blobs)
        interrupted = False
        while True:
            kind, payload = self._next_event(deadline)
            if kind == "timeout":
                if not interrupted:
                    interrupted = True
                    self._write(json.dumps({"type": "interrupt", "id": exec_id}).encode() + b"\n")
                    deadline = time.monotonic() + self._options.grace
                    continue
                self.close()
                raise SandboxDiedError(
                    f"the code ran past the {timeout:g}s timeout and did not stop within the "
                    f"{self._options.grace:g}s grace period after being interrupted, so the sandbox was "
                    "killed and its state is lost; create a new interpreter to continue"
                    + self._stderr_note(),
                    stderr_tail=self.stderr_tail(),
                )
            if kind == "wake":
                if self._tool_interrupts:
                    self.close()
                    raise self._tool_interrupts.popleft()
                continue
            if kind == "eof":
                self._raise_died("during execute")
            if kind == "violation":
                self._fail_protocol(payload)
            try:
                message = protocol.validate(payload)
            except protocol.Violation as exc:
                self._fail_protocol(str(exc))
            if message["type"] == "tool_call":
                if message["exec"] != exec_id:
                    self._fail_protocol("a tool call named an execute that is not running")
                self._start_tool_call(message, run_tool, caller)
            elif message["type"] == "result":
                if message["id"] != exec_id:
                    self._fail_protocol("a result answered a request that was not made")
                return message, interrupted
            else:
                self._fail_protocol(f"unexpected {message['type']!r} message during execute")

    def _start_tool_call(self, message: dict[str, Any], run_tool: ToolRunner, caller: contextvars.Context) -> None:
        context = caller.copy()  # one copy per call: concurrent calls cannot share an entered context
        self._tool_started()

        def run() -> None:
            self.tool_context.active = True
            try:
                reply = run_tool(message["name"], message["args"], message["kwargs"])
            except BaseException as exc:  # interrupts reach the caller of execute
                self._tool_finished()
                self._tool_interrupts.append(exc)
                if self._reader is not None:
                    self._reader.wake()
                return
            finally:
                self.tool_context.active = False
            reply = {"type": "tool_result", "id": message["id"], **reply}
            try:
                data = json.dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
            except (TypeError, ValueError) as exc:
                data = json.dumps({"type": "tool_result", "id": message["id"], "ok": False,
                                   "ename": "TypeError", "evalue": f"tool result is not JSON-compatible: {exc}"}
                                  ).encode() + b"\n"
            try:
                self._write(data)
            except SandboxDiedError:
                pass  # the execute loop reports the death
            finally:
                self._tool_finished()

        _TOOL_WORKERS.submit(lambda: context.run(run))

    def _tool_started(self) -> None:
        with self._tools_lock:
            self._tools_running += 1
            if self._reader is not None:
                self._reader.spin = False

    def _tool_finished(self) -> None:
        with self._tools_lock:
            self._tools_running -= 1
            if self._tools_running == 0 and self._reader is not None:
                self._reader.spin = True
                # Wake the execute thread now, while the driver works on the reply, so it is
                # already polling without sleep when the driver's next message comes.
                self._reader.wake()

    # -- plumbing -------------------------------------------------------------------------
    def _next_event(self, deadline: float | None) -> tuple[str, Any]:
        assert self._reader is not None
        return self._reader.next_event(deadline)

    def _write(self, *chunks: bytes) -> None:
        """Write ``chunks`` back to back, atomically with respect to other writers."""
        process = self._process
        assert process is not None
        with self._send_lock:
            try:
                for chunk in chunks:
                    process.stdin.write(chunk)
                process.stdin.flush()
            except (OSError, ValueError) as exc:
                raise SandboxDiedError(f"the sandbox stopped accepting input: {exc}") from exc

    def _read_stderr(self) -> None:
        process = self._process
        assert process is not None
        try:
            while True:
                chunk = process.stderr.read1(8192) if hasattr(process.stderr, "read1") else process.stderr.read(8192)
                if not chunk:
                    return
                self._stderr_tail.append(chunk)
                self._stderr_size += len(chunk)
                while self._stderr_size - len(self._stderr_tail[0]) >= _STDERR_TAIL_BYTES:
                    self._stderr_size -= len(self._stderr_tail.popleft())
        except Exception:
            return
        finally:
            self._stderr_done.set()

    def stderr_tail(self) -> str:
        data = b"".join(self._stderr_tail)[-_STDERR_TAIL_BYTES:]
        return data.decode("utf-8", "replace").strip()

    def _stderr_note(self) -> str:
        tail = self.stderr_tail()
        return f"\nSandbox stderr (last lines):\n{tail}" if tail else ""

    def _raise_died(self, when: str) -> None:
        process = self._process
        code = process.wait(2.0) if process is not None else None
        self._stderr_done.wait(1.0)
        how = process.describe_exit(code) if process is not None else "unknown"
        tail = self.stderr_tail()
        self.close()
        raise SandboxDiedError(
            f"the sandbox process ended unexpectedly {when} ({how}); its state is lost. "
            f"Create a new interpreter to continue." + (f"\nSandbox stderr (last lines):\n{tail}" if tail else ""),
            exit_code=code,
            stderr_tail=tail,
        )

    def _fail_protocol(self, detail: str) -> None:
        self.close()
        raise ProtocolError(
            f"the sandbox broke the driver protocol ({detail}); the session was ended rather than "
            "guessing at its state. Create a new interpreter to continue." + self._stderr_note()
        )


def new_request_id() -> str:
    """An unguessable id for one request."""
    return secrets.token_hex(16)

"""One driver process and the host side of its conversation.

A :class:`DriverSession` launches the driver through a backend, completes the handshake, reads
the sandbox's messages on the thread that waits for them (validating each), runs tool calls on a
bounded set of host threads, and enforces the execute timeout in two steps: interrupt, then kill
after a grace period. Writes go through an :class:`~sandboxkit.outbox.Outbox`, so no step ever
waits for the sandbox to read. Any failure that leaves the sandbox's state unknown ends the session.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import json
import secrets
import threading
import time
import weakref
from typing import Any, Callable, NoReturn

from sandboxkit import protocol
from sandboxkit.backend import Backend, SandboxProcess
from sandboxkit.decoding import MessageLimits
from sandboxkit.errors import BackendStartError, ProtocolError, SandboxDiedError, SessionEndedError
from sandboxkit.options import SessionOptions
from sandboxkit.outbox import Outbox
from sandboxkit.streams import MessageReader, open_reader
from sandboxkit.tool_queue import ToolQueue
from sandboxkit_driver import driver_source

__all__ = ["DriverSession", "ToolRunner"]

#: Runs one tool call: (name, args, kwargs) -> the reply fields ({"ok": ..., ...}).
ToolRunner = Callable[[str, list, dict], dict]

_STDERR_TAIL_BYTES = 16 * 1024
#: How long close() lets the driver exit by itself before the sandbox is killed (seconds).
_EXIT_PATIENCE = 1.0
_live_sessions: weakref.WeakSet[DriverSession] = weakref.WeakSet()
#: Encodes tool replies; one instance (json.dumps would build one per call, on the hot path).
_REPLY_ENCODER = json.JSONEncoder(ensure_ascii=False)


@atexit.register
def _close_all_sessions() -> None:
    for session in list(_live_sessions):
        session.close()


def _tool_error(call_id: str, ename: str, evalue: str) -> bytes:
    return json.dumps({"type": "tool_result", "id": call_id, "ok": False, "ename": ename, "evalue": evalue}).encode() + b"\n"


class DriverSession:
    """The live driver in one sandbox. Executes are serialised by the interpreter; ``close`` may
    be called from any thread at any time."""

    def __init__(self, backend: Backend, options: SessionOptions, label: str) -> None:
        self._backend = backend
        self._options = options
        self._label = label
        self._process: SandboxProcess | None = None
        self._outbox: Outbox | None = None
        self._stderr_tail: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._stderr_done = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._reader: MessageReader | None = None
        self._limits = MessageLimits(options.max_message_bytes, options.max_message_depth, options.max_message_items)
        self._tools = ToolQueue(options.max_concurrent_tools, options.max_queued_tools, label)
        self._tools_lock = threading.Lock()
        self._tools_running = 0
        #: Whether the reader polls briefly before it sleeps (the backend's poll_before_sleep).
        self._spin = True
        #: Bytes the sandbox had taken at the last backlog check (see _check_backlog).
        self._taken_at_check = -1
        #: The execute whose tool calls may run now (None between executes).
        self._running_exec: str | None = None
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
        self._reader = open_reader(self._process.stdout, self._limits, self._process.split_output)
        # Both ends poll briefly before they sleep only where the backend says it pays: behind a
        # network relay (Modal) an answer never comes within the moment, and the host's polling
        # would take the interpreter lock from the SDK thread that carries the messages.
        self._spin = spin
        self._reader.spin = spin
        self._outbox = Outbox(self._process.stdin, self._label)
        threading.Thread(target=self._read_stderr, name=f"sandboxkit-stderr-{self._label}", daemon=True).start()
        self._send(source)
        kind, payload = self._next_event(time.monotonic() + self._options.start_timeout)
        if kind == "timeout":
            self.close()
            raise BackendStartError(
                f"the sandbox did not start the driver within {self._options.start_timeout:g}s "
                f"(raise the 'start_timeout' option if the backend is slow to start){self._stderr_note()}"
            )
        hello = self._message("eof" if kind == "wake" else kind, payload, "during start-up")
        if hello["type"] != "hello":
            self._fail_protocol(f"expected the driver's hello first, got {hello['type']!r}")
        if hello["protocol"] != protocol.PROTOCOL_VERSION:
            self.close()
            raise BackendStartError(
                f"the sandbox driver speaks protocol {hello['protocol']}, this host speaks "
                f"{protocol.PROTOCOL_VERSION}; upgrade sandboxkit on the side that is older"
            )
        self.python_version = hello["python"]

    def close(self) -> None:
        """Ask the driver to stop, then make sure the sandbox is gone. Idempotent, callable from
        any thread; never waits for the sandbox to read, and at most about a second for it to exit."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _live_sessions.discard(self)
        self._tools.close()
        process, outbox = self._process, self._outbox
        try:
            if process is not None and outbox is not None:
                outbox.send(b'{"type":"shutdown"}\n')
                if not outbox.broken and process.poll() is None:
                    process.wait(_EXIT_PATIENCE)
        except Exception:
            pass  # killing below is what counts
        finally:
            if outbox is not None:
                outbox.close()
            if process is not None:
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

        The calling thread reads the replies itself. Raises :class:`SandboxDiedError`,
        :class:`ProtocolError` or :class:`SessionEndedError` (ending the session) when the
        sandbox dies, breaks the protocol, ignores an interrupt past the grace period, or the
        session is closed meanwhile.
        """
        timeout = self._options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        # Tools run with the caller's context variables (dspy.context(lm=...) among them).
        caller = contextvars.copy_context()
        request = message_json.encode("utf-8", "surrogatepass") + b"\n"
        # Unread replies beyond this mean the sandbox stopped reading while it kept calling.
        backlog_limit = len(request) + sum(len(blob) for blob in blobs) + self._options.max_message_bytes
        self._running_exec = exec_id
        self._tool_interrupts.clear()  # from tools of an execute that has ended: too late now
        self._taken_at_check = -1
        try:
            self._send(request, *blobs)
            interrupted = False
            while True:
                kind, payload = self._next_event(deadline)
                if self._tool_interrupts:
                    self.close()
                    raise self._tool_interrupts.popleft()
                if self._closed:
                    raise SessionEndedError("the interpreter was shut down while this execute ran; "
                                            "create a new interpreter to continue")
                if kind == "timeout":
                    if not interrupted:
                        interrupted = True
                        self._send(json.dumps({"type": "interrupt", "id": exec_id}).encode() + b"\n")
                        deadline = time.monotonic() + self._options.grace
                        continue
                    self.close()
                    limit = f"the {timeout:g}s timeout" if timeout is not None else "its timeout"
                    raise SandboxDiedError(
                        f"the code ran past {limit} and did not stop within the "
                        f"{self._options.grace:g}s grace period after being interrupted, so the sandbox was "
                        "killed and the interpreter state was lost; create a new interpreter to continue"
                        + self._stderr_note(),
                        stderr_tail=self.stderr_tail(),
                    )
                if kind == "wake":
                    continue
                message = self._message(kind, payload, "during execute")
                if message["type"] == "tool_call":
                    self._accept_tool_call(message, exec_id, run_tool, caller)
                    self._check_backlog(backlog_limit)
                elif message["type"] == "result":
                    if message["id"] != exec_id:
                        self._fail_protocol("a result answered a request that was not made")
                    return message, interrupted
                else:
                    self._fail_protocol(f"unexpected {message['type']!r} message during execute")
        finally:
            self._end_execute(exec_id)

    def _end_execute(self, exec_id: str) -> None:
        """No tool call of ``exec_id`` starts from now on; the waiting ones are answered."""
        self._running_exec = None
        for job in self._tools.cancel(exec_id):
            job()  # a cancelled job only answers its call (see _accept_tool_call)

    def _check_backlog(self, limit: int) -> None:
        """On each tool call: fail once more than ``limit`` bytes wait unread and the sandbox
        took none of them since the previous call (a large reply it is reading is fine)."""
        outbox = self._outbox
        if outbox is None:
            return
        taken, self._taken_at_check = self._taken_at_check, outbox.taken_bytes
        if outbox.backlog_bytes > limit and taken == self._taken_at_check:
            self._fail_protocol(
                f"the sandbox stopped reading the host's replies while it went on calling tools (more than "
                f"max_message_bytes={self._options.max_message_bytes} unread)"
            )

    def _accept_tool_call(self, message: dict[str, Any], exec_id: str, run_tool: ToolRunner,
                          caller: contextvars.Context) -> None:
        """Queue a tool call of the running execute; refuse, in the calling sandbox thread, one
        made by code that outlived its execute or one beyond the queue's capacity."""
        call_id = message["id"]
        if message["exec"] != exec_id:
            self._send(_tool_error(call_id, "RuntimeError",
                                   "tools can be called only while an execute is running; this call came from "
                                   "code (e.g. a background thread) that outlived the execute that started it"))
            return
        def job() -> None:
            try:
                if self._running_exec != exec_id or self._closed:
                    self._send(_tool_error(call_id, "RuntimeError", "the execute that made this tool call has ended"))
                    return
                context = caller.copy()  # one copy per call: concurrent calls cannot share an entered context
                context.run(self._run_tool_call, message, run_tool)
            finally:
                self._tool_finished()

        # Counted from now, not from when a worker picks it up: this thread stops spinning at
        # once, so the worker it wakes gets the interpreter lock without waiting for it.
        self._tool_started()
        if not self._tools.submit(exec_id, job):
            self._tool_finished()
            self._send(_tool_error(
                call_id, "RuntimeError",
                f"too many tool calls at once: {self._options.max_concurrent_tools} run and "
                f"{self._options.max_queued_tools} wait already (max_concurrent_tools, max_queued_tools); "
                "wait for some to finish"))

    def _run_tool_call(self, message: dict[str, Any], run_tool: ToolRunner) -> None:
        self.tool_context.active = True
        try:
            reply = run_tool(message["name"], message["args"], message["kwargs"])
        except BaseException as exc:  # interrupts reach the caller of execute
            self._tool_interrupts.append(exc)
            if self._reader is not None:
                self._reader.wake()
            return
        finally:
            self.tool_context.active = False
        reply = {"type": "tool_result", "id": message["id"], **reply}
        try:
            data = _REPLY_ENCODER.encode(reply).encode("utf-8", "surrogatepass") + b"\n"
        except (TypeError, ValueError) as exc:
            data = _tool_error(message["id"], "TypeError", f"tool result is not JSON-compatible: {exc}")
        self._send(data)

    def _tool_started(self) -> None:
        with self._tools_lock:
            self._tools_running += 1
            if self._reader is not None:
                self._reader.spin = False

    def _tool_finished(self) -> None:
        with self._tools_lock:
            self._tools_running -= 1
            if self._tools_running == 0 and self._reader is not None and self._spin:
                self._reader.spin = True
                # Wake the execute thread now, while the driver works on the reply, so it is
                # already polling without sleep when the driver's next message comes.
                self._reader.wake()

    # -- plumbing -------------------------------------------------------------------------
    def _message(self, kind: str, payload: Any, when: str) -> dict[str, Any]:
        """The validated message a reader event carries; for "eof" or a violation, end the
        session and raise (SandboxDiedError, ProtocolError)."""
        if kind == "eof":
            self._raise_died(when)
        if kind == "violation":
            self._fail_protocol(payload)
        try:
            return protocol.validate(payload)
        except protocol.Violation as exc:
            self._fail_protocol(str(exc))

    def _next_event(self, deadline: float | None) -> tuple[str, Any]:
        assert self._reader is not None
        return self._reader.next_event(deadline)

    def _send(self, *chunks: bytes) -> None:
        """Write ``chunks`` back to back, after everything sent before; never blocks."""
        outbox = self._outbox
        assert outbox is not None
        outbox.send(*chunks)

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
        data = b"".join(list(self._stderr_tail))[-_STDERR_TAIL_BYTES:]
        return data.decode("utf-8", "replace").strip()

    def _stderr_note(self) -> str:
        tail = self.stderr_tail()
        return f"\nSandbox stderr (last lines):\n{tail}" if tail else ""

    def _raise_died(self, when: str) -> NoReturn:
        process = self._process
        code = process.wait(2.0) if process is not None else None
        self._stderr_done.wait(1.0)
        how = process.describe_exit(code) if process is not None else "unknown"
        tail = self.stderr_tail()
        self.close()
        raise SandboxDiedError(
            f"the sandbox process ended unexpectedly {when} ({how}); the interpreter state was lost. "
            f"Create a new interpreter to continue." + (f"\nSandbox stderr (last lines):\n{tail}" if tail else ""),
            exit_code=code,
            stderr_tail=tail,
        )

    def _fail_protocol(self, detail: str) -> NoReturn:
        self.close()
        raise ProtocolError(
            f"the sandbox broke the driver protocol ({detail}); the session was ended rather than "
            "guessing at its state. Create a new interpreter to continue." + self._stderr_note()
        )


def new_request_id() -> str:
    """An unguessable id for one request."""
    return secrets.token_hex(16)

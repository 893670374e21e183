"""Fuzzing the host side of the driver protocol with a rogue driver.

The real host code (``SandboxInterpreter`` over ``DriverSession``) talks to a fake backend whose
"sandbox" is a thread at the far end of three OS pipes. That rogue driver sends what hypothesis
makes of the protocol: valid messages with fields dropped, retyped, made huge or deeply nested,
wrong ids, random bytes, partial lines, floods of elements, then EOF or silence. Whatever it
sends, a user of the interpreter sees only DSPy's error types (``CodeInterpreterError`` and its
subclasses, ``SyntaxError``), and no call blocks past its deadline.

Examples are derandomized (the same ones on every run); ``CI`` set runs 150 of them, a local run
more (``SANDBOXKIT_FUZZ_EXAMPLES`` overrides both).
"""

from __future__ import annotations

import json
import os
import queue
import select
import threading
from typing import Any, Sequence

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the test extra (hypothesis) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sandboxkit.backend import Backend, SandboxProcess  # noqa: E402
from sandboxkit.conformance.plugin import in_ci  # noqa: E402
from sandboxkit.conformance.suite import bounded  # noqa: E402
from sandboxkit.errors import CodeInterpreterError  # noqa: E402
from sandboxkit.options import SessionOptions  # noqa: E402
from sandboxkit.stdio_interpreter import SandboxInterpreter  # noqa: E402
from sandboxkit_driver import driver_source  # noqa: E402

EXAMPLES = int(os.environ.get("SANDBOXKIT_FUZZ_EXAMPLES") or (150 if in_ci() else 400))
#: Stands for the id of the execute the host is running, filled in when the rogue sends.
EXEC = "$EXEC"
#: Seconds a call may take beyond the deadlines it was given before it counts as hung.
HANG_SLACK = 10.0
MAX_MESSAGE_BYTES = 4 << 20


# -- the rogue driver ---------------------------------------------------------------------------
class RogueProcess(SandboxProcess):
    """A "sandbox" that is a thread playing ``actions`` over real pipes.

    Actions: ``("send", bytes)`` writes raw bytes; ``("message", obj, newline)`` writes ``obj`` as
    JSON with every ``$EXEC`` string replaced by the running execute's id (waiting briefly for
    one); ``("await", None)`` waits for the host's next execute. After the actions it ends as
    ``ending`` says: ``"eof"`` closes its stdout, ``"exit"`` ends the process, ``"silence"`` waits
    to be killed.
    """

    def __init__(self, actions: Sequence[tuple[str, Any, Any]], ending: str) -> None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.set_blocking(out_w, False)
        self.stdin = os.fdopen(in_w, "wb")
        self.stdout = os.fdopen(out_r, "rb", buffering=0)
        self.stderr = os.fdopen(err_r, "rb", buffering=0)
        self._in, self._out, self._err = in_r, out_w, err_w
        self._killed = threading.Event()
        self._ended = threading.Event()
        self._code: int | None = None
        self._executes: queue.Queue[str] = queue.Queue()
        self._exec_id = "0" * 32
        self._threads = [
            threading.Thread(target=self._drain, name="rogue-stdin", daemon=True),
            threading.Thread(target=self._play, args=(list(actions), ending), name="rogue-driver", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # what the host sees
    def poll(self) -> int | None:
        return self._code if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int | None:
        self._ended.wait(timeout)
        return self.poll()

    def kill(self) -> None:
        self._killed.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5)
        self._end(-9)

    # the rogue's side
    def _end(self, code: int) -> None:
        if not self._ended.is_set():
            self._code = code
            self._ended.set()

    def _drain(self) -> None:
        """Read everything the host sends; note the id of each execute request."""
        skip = len(driver_source())
        pending = bytearray()
        poller = select.poll()
        poller.register(self._in, select.POLLIN)
        try:
            while not self._killed.is_set():
                if not poller.poll(50):
                    continue
                data = os.read(self._in, 1 << 16)
                if not data:  # the host closed our stdin: exit, as the driver does
                    self._exit()
                    return
                if skip:
                    taken = min(skip, len(data))
                    skip -= taken
                    data = data[taken:]
                pending += data
                while b"\n" in pending:
                    line, _, rest = bytes(pending).partition(b"\n")
                    pending = bytearray(rest)
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(message, dict) and message.get("type") == "execute":
                        self._executes.put(str(message.get("id")))
                    elif isinstance(message, dict) and message.get("type") == "shutdown":
                        self._exit()
                        return
        except OSError:
            return
        finally:
            os.close(self._in)

    def _exit(self) -> None:
        """End the way a driver asked to shut down does: stop playing, close the streams, exit 0."""
        self._killed.set()
        self._threads[1].join(5)
        self._end(0)

    def _write(self, data: bytes) -> bool:
        """Write ``data`` whole unless killed first; False when the host has gone."""
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._out, select.POLLOUT)
        while view and not self._killed.is_set():
            try:
                view = view[os.write(self._out, view):]
            except BlockingIOError:
                poller.poll(50)
            except OSError:
                return False
        return not view

    def _await_execute(self) -> None:
        """Take the next execute's id, waiting up to 2 s (less when killed meanwhile)."""
        for _ in range(40):
            try:
                self._exec_id = self._executes.get(timeout=0.05)
                return
            except queue.Empty:
                if self._killed.is_set():
                    return

    def _fill(self, value: Any) -> Any:
        if value == EXEC:
            if self._exec_id == "0" * 32:
                self._await_execute()
            return self._exec_id
        if isinstance(value, dict):
            return {key: self._fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._fill(item) for item in value]
        return value

    def _play(self, actions: list[tuple[str, Any, Any]], ending: str) -> None:
        try:
            for kind, payload, extra in actions:
                if self._killed.is_set():
                    return
                if kind == "await":
                    self._await_execute()
                    continue
                if kind == "message":
                    text = json.dumps(self._fill(payload))
                    data = text.replace(json.dumps(EXEC), json.dumps(self._exec_id)).encode("utf-8", "surrogatepass")
                    data += b"\n" if extra else b""
                elif kind == "template":  # raw text around the running execute's id
                    if self._exec_id == "0" * 32:
                        self._await_execute()
                    data = payload.replace(EXEC.encode(), self._exec_id.encode())
                else:
                    data = payload
                if not self._write(data):
                    return
            if ending == "silence":
                self._killed.wait()
        finally:
            for fd in (self._out, self._err):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if ending == "exit" or not self._killed.is_set():
                self._end(0 if ending != "exit" else 3)


class RogueBackend(Backend):
    name = "fuzz-rogue"
    poll_before_sleep = False

    def __init__(self, actions: Sequence[tuple[str, Any, Any]], ending: str) -> None:
        super().__init__(None)
        self.actions, self.ending = actions, ending
        self.processes: list[RogueProcess] = []

    def launch(self, argv: Sequence[str], env: Any) -> RogueProcess:
        process = RogueProcess(self.actions, self.ending)
        self.processes.append(process)
        return process


# -- what the rogue sends ---------------------------------------------------------------------------
HELLO = {"type": "hello", "protocol": 1, "python": "3.11.0", "pid": 4242}
RESULTS = [
    {"type": "result", "id": EXEC, "status": "ok", "value": 1, "has_value": True, "output": "", "dropped": 0},
    {"type": "result", "id": EXEC, "status": "final", "fields": {"answer": 1}, "output": "", "dropped": 0},
    {"type": "result", "id": EXEC, "status": "error", "ename": "ValueError", "evalue": "bad", "args": [123],
     "traceback": "Traceback", "output": "o", "dropped": 5},
    {"type": "result", "id": EXEC, "status": "syntax_error", "ename": "SyntaxError", "evalue": "x", "lineno": 1,
     "output": "", "dropped": 0},
    {"type": "result", "id": EXEC, "status": "timeout", "ename": "TimeoutError", "evalue": "t", "traceback": "",
     "output": "", "dropped": 0},
    {"type": "result", "id": EXEC, "status": "protocol_error", "ename": "ProtocolError", "evalue": "p",
     "output": "", "dropped": 0},
]
TOOL_CALL = {"type": "tool_call", "id": "call-1", "exec": EXEC, "name": "echo", "args": [1], "kwargs": {"b": 2}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
huge_values = st.sampled_from([
    "h" * (1 << 20),
    float("nan"),
    -1e308 * 10,
    [0] * 200_000,
    {str(number): number for number in range(50_000)},
])


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with a few fields dropped, retyped, made huge, or ids made wrong."""
    message = dict(base)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(message) + ["type", "id", "extra"]))
        change = draw(st.sampled_from(["drop", "retype", "huge", "wrong_id"]))
        if change == "drop":
            message.pop(key, None)
        elif change == "retype":
            message[key] = draw(json_values)
        elif change == "huge":
            message[key] = draw(huge_values)
        else:
            message[key] = draw(st.sampled_from(["0" * 32, "", "x" * 65, EXEC + EXEC, "f" * 32]))
    return message


def _deep(depth: int, opener: str, closer: str) -> bytes:
    return (opener * depth + "1" + closer * depth).encode()


raw_lines = st.one_of(
    st.binary(max_size=300).map(lambda data: data.replace(b"\n", b"") + b"\n"),
    st.integers(1, 300_000).map(lambda depth: b"[" * depth + b"\n"),
    st.integers(1, 300_000).map(lambda depth: _deep(depth, "[", "]") + b"\n"),
    st.integers(1, 300_000).map(lambda depth: _deep(depth, '{"a":', "}") + b"\n"),
    st.integers(1, 2_000_000).map(
        lambda count: b'{"type":"result","id":"$EXEC","status":"ok","value":[' + b"{}," * count + b'{}],'
                      b'"has_value":true,"output":"","dropped":0}\n'),
    st.just(b"x" * (MAX_MESSAGE_BYTES + 10) + b"\n"),
    st.just(b'{"type":"result","id":"$EXEC","status":"ok","value":1,"has_value":true,"output":"'
            + b"o" * (3 << 20) + b'","dropped":' + str(1 << 70).encode() + b"}\n"),
    st.just(b'{"type":"result","id":"$EXEC","status":"ok","value":' + b"9" * 5000
            + b',"has_value":true,"output":"","dropped":0}\n'),
    st.just(b"\n"),
)


@st.composite
def actions(draw: st.DrawFn) -> tuple[list[tuple[str, Any, Any]], str, float | None]:
    """(actions, ending, timeout) for one rogue."""
    script: list[tuple[str, Any, Any]] = []
    handshake = draw(st.sampled_from(["valid", "valid", "valid", "mutated", "raw", "none"]))
    if handshake == "valid":
        script.append(("message", HELLO, True))
    elif handshake == "mutated":
        script.append(("message", draw(mutated(HELLO)), True))
    elif handshake == "raw":
        script.append(("send", draw(raw_lines), None))
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["result", "result", "tool_call", "raw", "hello", "await"]))
        if kind == "await":
            script.append(("await", None, None))
        elif kind == "raw":
            line = draw(raw_lines)
            script.append(("template", line, None) if b"$EXEC" in line else ("send", line, None))
        else:
            base = {"result": None, "tool_call": TOOL_CALL, "hello": HELLO}[kind]
            if base is None:
                base = draw(st.sampled_from(RESULTS))
            message = draw(mutated(base)) if draw(st.booleans()) else base
            script.append(("message", message, draw(st.booleans() | st.just(True))))
    if draw(st.booleans()):
        script.append(("send", draw(st.binary(min_size=1, max_size=64)).replace(b"\n", b""), None))  # a partial line
    ending = draw(st.sampled_from(["eof", "exit", "silence"]))
    timeout = draw(st.sampled_from([0.25, 0.25, None]))
    if timeout is None and ending == "silence":
        ending = "eof"  # with no timeout, the host may rightly wait for a silent sandbox forever
    return script, ending, timeout


# -- the property ------------------------------------------------------------------------------------
def _call(fn: Any, limit: float) -> BaseException | None:
    """Run ``fn`` bounded by ``limit``; return the DSPy error it raised, fail on anything else."""
    try:
        bounded(fn, limit)
    except (CodeInterpreterError, SyntaxError) as exc:
        return exc
    except pytest.fail.Exception:
        raise
    except BaseException as exc:
        pytest.fail(f"{type(exc).__name__} escaped to the user instead of a CodeInterpreterError: {exc!r}"[:3000],
                    pytrace=False)
    return None


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(actions())
def test_host_raises_only_dspy_errors_and_never_hangs(scenario: tuple[list[tuple[str, Any, Any]], str, float | None]) -> None:
    script, ending, timeout = scenario
    backend = RogueBackend(script, ending)
    options = SessionOptions(timeout=timeout, grace=0.25, start_timeout=0.5, max_message_bytes=MAX_MESSAGE_BYTES)
    interp = SandboxInterpreter(backend, options, tools={"echo": lambda *args, **kwargs: [args, kwargs]})
    limit = options.start_timeout + 2 * ((timeout or 0) + options.grace) + HANG_SLACK
    try:
        for source in ("x = 1", "x"):
            if _call(lambda: interp.execute(source), limit) is not None:
                break
    finally:
        _call(interp.shutdown, HANG_SLACK)
    for process in backend.processes:
        assert process.poll() is not None, "shutdown() left the rogue sandbox running"


def test_the_rogue_harness_is_sound() -> None:
    """A rogue that plays a well-behaved driver gets ordinary answers, so failures above are real."""
    script = [("message", HELLO, True), ("message", RESULTS[0], True), ("await", None, None),
              ("message", RESULTS[1], True)]
    backend = RogueBackend(script, "silence")
    interp = SandboxInterpreter(backend, SessionOptions(timeout=5, start_timeout=5))
    try:
        assert interp.execute("x = 1") == 1
        assert interp.execute("x").output == {"answer": 1}
    finally:
        interp.shutdown()
    assert backend.processes[0].poll() is not None

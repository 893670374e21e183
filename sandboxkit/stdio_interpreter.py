"""The one interpreter class, implementing DSPy's ``CodeInterpreter`` protocol on any backend.

It behaves like DSPy's own ``PythonInterpreter``: lazy and idempotent ``start``, terminal
``shutdown``, persistent state, variables injected as globals, the value of a final expression or
else the captured output, ``FinalOutput`` on ``SUBMIT``, ``SyntaxError`` for bad syntax,
``CodeExecutionError`` for failing code and ``CodeInterpreterError`` for a dead or misbehaving
sandbox (which ends the session).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from typing import Any, Callable

from dspy.primitives.code_interpreter import FinalOutput

from sandboxkit import values
from sandboxkit.backend import Backend
from sandboxkit.callbacks import traced
from sandboxkit.errors import (
    CodeExecutionError,
    CodeInterpreterError,
    ExecutionTimeoutError,
    ProtocolError,
    SessionEndedError,
)
from sandboxkit.options import SessionOptions
from sandboxkit.session import DriverSession, new_request_id

__all__ = ["SandboxInterpreter"]


class SandboxInterpreter:
    """A DSPy ``CodeInterpreter`` whose code runs in a sandbox provided by ``backend``.

    Make one with :func:`sandboxkit.interpreter` or :func:`sandboxkit.factory`. One ``execute``
    runs at a time; separate interpreters run in parallel.
    """

    def __init__(
        self,
        backend: Backend,
        options: SessionOptions | None = None,
        *,
        tools: dict[str, Callable[..., Any]] | None = None,
        output_fields: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
    ) -> None:
        self.backend = backend
        self.options = options or SessionOptions()
        self._tools: dict[str, Callable[..., Any]] = dict(tools or {})
        self.output_fields = output_fields
        #: DSPy callbacks (``dspy.utils.callback.BaseCallback``) for this interpreter alone, fired
        #: like DSPy's own interpreters fire them, besides the global ones.
        self.callbacks: list[Any] = list(callbacks or [])
        #: The tools of the running execute, as it saw them when it began.
        self._active_tools: dict[str, Callable[..., Any]] = {}
        #: DSPy's RLM resets this to ask for tools to be registered again: the next execute then
        #: resends the tool list even if it looks unchanged.
        self._tools_registered = False
        self._session: DriverSession | None = None
        self._ended = False
        self._lifecycle_lock = threading.Lock()
        self._execute_lock = threading.Lock()
        self._cache = values.VariableCache()
        #: The tools the driver has stubs for (after the last successful execute).
        self._sent_tools: dict[str, Callable[..., Any]] | None = None
        self._tool_docs: dict[Callable[..., Any], str] = {}

    # -- the CodeInterpreter protocol -----------------------------------------------------
    @property
    def tools(self) -> dict[str, Callable[..., Any]]:
        """Host functions callable by name from sandbox code. Mutable; read on every execute."""
        return self._tools

    @tools.setter
    def tools(self, value: dict[str, Callable[..., Any]]) -> None:
        self._tools = dict(value)

    @property
    def execution_instructions(self) -> str:
        """How the runtime behaves, for RLM's prompt."""
        return self.backend.execution_instructions

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @traced
    def start(self) -> None:
        """Start the sandbox and the driver. Idempotent; refused after ``shutdown()``."""
        with self._lifecycle_lock:
            self._check_active()
            if self._session is not None:
                return
            session = DriverSession(self.backend, self.options, self.backend.name)
            try:
                session.start()
            except BaseException:
                session.close()
                self._ended = True
                raise
            self._session = session

    @traced
    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        """Run ``code`` in the session; see the module docstring for what it returns and raises."""
        session = self._session
        if session is not None and getattr(session.tool_context, "active", False):
            raise CodeInterpreterError(
                "a tool cannot call execute() on the interpreter that is running it (the caller is waiting "
                "for the tool); create another interpreter from the same factory for nested work"
            )
        if not self._execute_lock.acquire(blocking=False):
            raise CodeInterpreterError(
                "this interpreter is already running an execute; run one at a time, or create one "
                "interpreter per thread"
            )
        try:
            return self._execute(code, variables)
        finally:
            self._execute_lock.release()

    @traced
    def shutdown(self) -> None:
        """End the session for good and remove the sandbox. Idempotent."""
        with self._lifecycle_lock:
            self._ended = True
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> SandboxInterpreter:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.shutdown()

    def __call__(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        return self.execute(code, variables)

    def __repr__(self) -> str:
        state = "ended" if self._ended else ("running" if self._session else "not started")
        return f"<SandboxInterpreter backend={self.backend.name!r} {state}>"

    # -- internals ------------------------------------------------------------------------
    def _check_active(self) -> None:
        if self._ended:
            raise SessionEndedError(
                "this interpreter's session has ended (shut down, or its sandbox failed); "
                "create a new interpreter for a fresh session"
            )

    def _execute(self, code: str, variables: dict[str, Any] | None) -> Any:
        self._check_active()
        if not isinstance(code, str):
            raise CodeInterpreterError(f"code must be a string, not {type(code).__name__}")
        variables = {} if variables is None else variables
        if not isinstance(variables, dict):
            raise CodeInterpreterError("variables must be a dict mapping names to values")
        tools = dict(self._tools)
        if self._sent_tools is None or not _same_tools(tools, self._sent_tools):
            values.check_tool_names(tools)
        values.check_variable_names(variables, tools)
        output_names = self._output_names()
        variables_json, blobs = self._cache.encode(variables)
        if self._session is None:
            self.start()
        session = self._session
        assert session is not None
        exec_id = new_request_id()
        # Written out by hand: json.dumps builds an encoder per call, which costs more than the
        # rest of this message on a hot path (only the code and the rarely sent parts need it).
        tools_update = self._tools_update(tools)
        message = "".join((
            '{"type":"execute","id":"', exec_id, '","code":', _json_string(code),
            ',"tools":' + json.dumps(tools_update, ensure_ascii=False) if tools_update is not None else "",
            ',"output_fields":', "null" if output_names is None else json.dumps(output_names),
            ',"output_limit":', str(self.options.output_limit),
            ',"timeout":', json.dumps(self.options.timeout),
            ',"blobs":[', ",".join(str(len(blob)) for blob in blobs),
            '],"variables":', variables_json, "}",
        ))
        try:
            self._active_tools = tools
            result, interrupted = session.execute(message, blobs, exec_id, self._serve_tool)
        except CodeInterpreterError:
            self._end_after_failure()
            raise
        except BaseException:
            self._end_after_failure()
            raise
        self._cache.commit()
        self._sent_tools = tools
        self._tools_registered = True
        return self._interpret(result, interrupted)

    def _tools_update(self, tools: dict[str, Callable[..., Any]]) -> list[dict[str, str]] | None:
        """The execute message's ``tools`` entry, or None (left out) when the driver already has
        these tools."""
        if self._tools_registered and self._sent_tools is not None and _same_tools(tools, self._sent_tools):
            return None
        return [{"name": name, "doc": self._tool_doc(fn)} for name, fn in tools.items()]

    def _tool_doc(self, fn: Callable[..., Any]) -> str:
        try:
            return self._tool_docs[fn]
        except (KeyError, TypeError):
            pass
        doc = _tool_doc(fn)
        try:
            self._tool_docs[fn] = doc
        except TypeError:  # unhashable callable
            pass
        return doc

    def _end_after_failure(self) -> None:
        with self._lifecycle_lock:
            self._ended = True
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def _output_names(self) -> list[str] | None:
        fields = self.output_fields
        if not fields:
            return None
        names = []
        for field in fields:
            name = field.get("name") if isinstance(field, dict) else None
            if not isinstance(name, str) or not name.isidentifier():
                raise CodeInterpreterError(f"output_fields entries need a 'name' that is a Python identifier: {field!r}")
            names.append(name)
        if len(set(names)) != len(names):
            raise CodeInterpreterError(f"output field names must be unique: {names}")
        return names

    def _serve_tool(self, name: str, args: list, kwargs: dict) -> dict:
        """The reply fields for one tool call from the sandbox (a failing tool is a reply too)."""
        try:
            return {"ok": True, "value": values.tool_result_value(self.invoke_tool(name, args, kwargs))}
        except Exception as exc:
            return {"ok": False, "ename": type(exc).__name__, "evalue": str(exc)}

    @traced
    def invoke_tool(self, tool_name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run the host tool ``tool_name`` that sandbox code called, with DSPy's argument
        mapping; return its result (awaited if it is a coroutine) or raise what it raised."""
        tools = self._active_tools
        fn = tools.get(tool_name)
        if fn is None:
            raise CodeInterpreterError(
                f"Unknown tool: {tool_name}; available tools: {', '.join(sorted(tools)) or 'none'}")
        call_args, call_kwargs = values.bind_tool_call(fn, args, kwargs)
        result = fn(*call_args, **call_kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return result

    def _interpret(self, result: dict[str, Any], interrupted: bool) -> Any:
        """What execute returns or raises for a result message; every text the sandbox sent is
        cut to ``output_limit`` characters here, whatever it claims about itself."""
        limit = self.options.output_limit
        status = result["status"]
        output, cut = _cut(result["output"], limit)
        output = _with_truncation_note(output, min(result["dropped"], _MOST_DROPPED) + cut, limit)
        if status == "final":
            return FinalOutput(result["fields"])
        if status == "ok":
            if result["has_value"] and result["value"] is not None:
                return result["value"]
            return output or None
        evalue = _cut(result["evalue"], limit)[0]
        if status == "syntax_error":
            raise SyntaxError(f"Invalid Python syntax. message: {evalue}")
        if status == "timeout" or (interrupted and status == "error"):
            after = f"the {self.options.timeout:g}s execute timeout" if self.options.timeout is not None else "its timeout"
            raise ExecutionTimeoutError(
                f"TimeoutError: the code ran past {after} (time in host tools included) and was "
                "interrupted; the session and its variables are intact" + _output_note(output)
            )
        if status == "protocol_error":
            self._end_after_failure()
            raise ProtocolError(f"the sandbox driver rejected the request: {evalue}")
        ename = _cut(result["ename"], 200)[0]
        # DSPy's interpreters name the exception and its arguments: "ValueError: [123]".
        args = result.get("args")
        message = _cut(f"{ename}: {args if args else evalue}", limit)[0]
        trace = result.get("traceback")
        if isinstance(trace, str) and trace.strip():
            message += "\n" + _cut(trace, limit)[0].rstrip()
        raise CodeExecutionError(message + _output_note(output))


#: The most dropped bytes a result may claim (a petabyte; beyond, the count is not believed).
_MOST_DROPPED = 1 << 50
#: A str as a JSON string, non-ASCII kept (the C encoder where Python has it).
_json_string = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring


def _same_tools(a: dict[str, Callable[..., Any]], b: dict[str, Callable[..., Any]]) -> bool:
    return a.keys() == b.keys() and all(a[name] is b[name] for name in a)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _tool_doc(fn: Callable[..., Any]) -> str:
    try:
        signature = str(inspect.signature(fn))
    except (TypeError, ValueError):
        signature = "(*args, **kwargs)"
    doc = inspect.getdoc(fn) or ""
    name = getattr(fn, "__name__", "tool")
    return f"{name}{signature}\n\n{doc}"[:2000].strip()


def _cut(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to ``limit`` characters, and how many were cut."""
    if len(text) <= limit:
        return text, 0
    return text[:limit], len(text) - limit


def _with_truncation_note(output: str, dropped: int, limit: int) -> str:
    if not dropped:
        return output
    return output + f"\n[sandboxkit: output truncated: {dropped} more bytes not shown (output_limit={limit})]\n"


_NOTE_CHARS = 20_000


def _output_note(output: str) -> str:
    """The output printed before an error, for its message (the last part of it if long)."""
    if not output.strip():
        return ""
    if len(output) > _NOTE_CHARS:
        output = f"[... {len(output) - _NOTE_CHARS} earlier characters not shown ...]\n" + output[-_NOTE_CHARS:]
    return f"\n\nOutput before the error:\n{output}"

"""Benchmark: sandboxkit's ``modal`` backend against the tutorial's ModalInterpreter, on the local emulator.

Everything runs in one process against sandboxkit's local emulator of Modal's API
(``sandboxkit_modal.emulator``), which the benchmark starts on loopback and stops at the end; the
unmodified ``modal`` SDK talks to it. Both sides therefore go through the same SDK, the same gRPC
server and the same local sandbox processes: the figures compare the two protocols, not Modal's
network. Timed rows interleave the two sides in short blocks (sandboxkit, tutorial, tutorial,
sandboxkit, ...) so drift on a shared machine hits both alike; figures are medians and means of
``time.perf_counter`` samples in milliseconds.

The baseline (``tutorial``) is the reference tutorial's ModalInterpreter, re-created here from its
description: a driver function whose source runs in the sandbox with ``python -u -c``, reading
one JSON command per line (code, variables, tool names, output names), running the code in
persistent globals with stdout and stderr redirected, relaying each tool call as a JSON line on
the real stdout and reading the JSON reply from stdin, and answering ``{stdout, stderr, final}``.
Its host side creates ``modal.Sandbox.create(app=..., image=...)`` (no secrets: none are needed),
runs ``sandbox.exec("python", "-u", "-c", source, bufsize=1)``, writes each command as JSON and
drains, iterates the stdout lines, and sends every variable with every execute.

Rows:

* ``execute``: one ``x += 1`` execute round trip on a running interpreter;
* ``tool``: one execute whose code calls a trivial host tool once, ``print(f(1))``;
* ``document bytes``: the bytes written to the sandbox's stdin over 20 RLM-style executes that all
  pass the same variables, a 10 MB document among them (counted by wrapping each side's stdin
  writer after start: sandboxkit's ``DriverSession._write`` target and the tutorial's exec stdin).
  The tutorial re-sends the document every time; sandboxkit should send it once: the row PASSes
  when sandboxkit's total is below 1.5 times the document's size. The wall time of the 20
  executes is reported too, for information.

The timed rows' target: sandboxkit's round trip at most the tutorial's (ratio <= 1x), for the
median and for the mean, each printed as PASS/FAIL. The exit code is 0 unless the run itself fails; without the ``modal`` SDK or
the emulator, the benchmark says why and exits with status 2.

Usage::

    python bench/bench_modal.py            # the full run (well under 90 s on 2 cores)
    python bench/bench_modal.py --quick    # a few samples and 3 iterations, for smoke tests
    python bench/bench_modal.py --json results.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import sandboxkit  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from benchlib import Row, Side, echo, expect, timed  # noqa: E402

__all__ = ["ROWS", "TutorialInterpreter", "main", "run"]

MODAL = "modal"
TUTORIAL = "tutorial"
#: The baseline's Modal app (sandboxkit's backend uses its own default app name).
TUTORIAL_APP = "sandboxkit-bench-tutorial"

DOCUMENT_BYTES = 10_000_000
ITERATIONS = 20
QUICK_ITERATIONS = 3
#: sandboxkit passes the document row when it sent less than this many documents' worth of bytes.
DOCUMENT_LIMIT = 1.5

ROWS = (
    Row("execute_rt", "execute x += 1", "ratio", 1.0, 1000, 5, block=20, baseline=TUTORIAL, mean_limit=1.0),
    Row("tool_rt", "tool call print(f(1)), whole execute", "ratio", 1.0, 800, 5, block=20, baseline=TUTORIAL,
        mean_limit=1.0),
    Row("document_bytes", f"bytes sent: 10 MB document, {ITERATIONS} iterations", "documents", DOCUMENT_LIMIT,
        ITERATIONS, QUICK_ITERATIONS, baseline=TUTORIAL),
)
TIMED_ROWS = ("execute_rt", "tool_rt")

BASELINE_TEXT = {
    TUTORIAL: "the reference tutorial's ModalInterpreter, re-created in this file: one JSON command per "
              "line, every variable re-sent on every execute, tool calls relayed as JSON lines",
}


# -- the baseline: the tutorial's driver and interpreter, in our own words ---------------------
def tutorial_driver() -> None:
    """The in-sandbox half of the baseline. Its source is shipped with ``python -u -c``.

    Reads one JSON command per line on stdin: ``{code, variables, tool_names, output_names}``.
    Merges ``variables`` into globals that persist across commands, installs a stub per tool name,
    and runs ``code`` with stdout/stderr captured. A stub writes ``{"tool_call": {name, args,
    kwargs}}`` on the real stdout and blocks for one reply line (``tool_result`` or
    ``tool_error``). ``SUBMIT(...)`` ends the code with a final value. After each command one line
    ``{stdout, stderr, final}`` goes out.
    """
    import io
    import json
    import sys
    from contextlib import redirect_stderr, redirect_stdout

    real_out = sys.__stdout__
    env: dict = {}
    wanted_outputs: list = []

    class Submitted(BaseException):
        pass

    def emit(message: dict) -> None:
        real_out.write(json.dumps(message) + "\n")
        real_out.flush()

    def relay(tool: str, args: tuple, kwargs: dict):
        emit({"tool_call": {"name": tool, "args": list(args), "kwargs": kwargs}})
        answer = json.loads(sys.stdin.readline())
        if answer.get("tool_error"):
            raise RuntimeError(answer["tool_error"])
        return answer.get("tool_result")

    def install(names: list) -> None:
        for tool in names:
            if tool.isidentifier() and tool != "SUBMIT" and tool not in env:
                env[tool] = (lambda bound: lambda *a, **k: relay(bound, a, k))(tool)

    def submit(*args, **kwargs):
        if kwargs:
            raise Submitted(kwargs)
        if not wanted_outputs:
            raise Submitted({"output": args[0] if len(args) == 1 else list(args)})
        if len(args) != len(wanted_outputs):
            raise Submitted({"error": f"SUBMIT takes {len(wanted_outputs)} values ({wanted_outputs}), got {len(args)}"})
        raise Submitted(dict(zip(wanted_outputs, args)))

    env["SUBMIT"] = submit
    for line in sys.stdin:
        try:
            command = json.loads(line)
        except ValueError as exc:
            emit({"stdout": "", "stderr": f"[Error] bad JSON: {exc}", "final": None})
            continue
        code = command.get("code")
        if code is None:
            emit({"stdout": "", "stderr": "[Error] no code", "final": None})
            continue
        env.update(command.get("variables") or {})
        install(list(command.get("tool_names") or []))
        wanted_outputs[:] = list(command.get("output_names") or [])
        out, err = io.StringIO(), io.StringIO()
        final = None
        with redirect_stdout(out), redirect_stderr(err):
            try:
                exec(code, env)
            except Submitted as done:
                final = done.args[0] if done.args else None
            except Exception as exc:
                print(f"[Error] {type(exc).__name__}: {exc}", file=sys.stderr)
        emit({"stdout": out.getvalue(), "stderr": err.getvalue(), "final": final})


class TutorialInterpreter:
    """The tutorial's host half (the baseline): start/execute/shutdown plus ``tools``.

    ``execute`` returns the captured stdout (and stderr after a newline), or ``("final", value)``
    on SUBMIT. ``bytes_sent`` counts the UTF-8 bytes written to the exec's stdin after start.
    """

    def __init__(self, app_name: str = TUTORIAL_APP, timeout: int = 600) -> None:
        self.app_name = app_name
        self.timeout = timeout
        self.tools: dict[str, Callable[..., Any]] = {}
        self.output_fields: list[dict] | None = None
        self._sandbox: Any = None
        self._stdin: Any = None
        self._lines: Any = None

    def start(self) -> None:
        if self._sandbox is not None:
            return
        import inspect

        import modal

        source = inspect.getsource(tutorial_driver) + "\n\ntutorial_driver()\n"
        app = modal.App.lookup(self.app_name, create_if_missing=True)
        self._sandbox = modal.Sandbox.create(app=app, image=modal.Image.debian_slim(python_version="3.12"))
        process = self._sandbox.exec("python", "-u", "-c", source, bufsize=1, timeout=self.timeout)
        self._stdin = process.stdin
        self._lines = iter(process.stdout)

    def _send(self, message: dict) -> None:
        self._stdin.write(json.dumps(message) + "\n")
        self._stdin.drain()

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        if self._sandbox is None:
            self.start()
        plain = (str, int, float, bool, list, dict, type(None))
        sent = {k: v if isinstance(v, plain) else str(v) for k, v in (variables or {}).items()}
        outputs = [f["name"] for f in self.output_fields or [] if isinstance(f, dict) and f.get("name")]
        self._send({"code": code, "variables": sent, "tool_names": list(self.tools), "output_names": outputs})
        for line in self._lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "tool_call" in message:
                call = message["tool_call"] or {}
                try:
                    value = self.tools[call.get("name")](*call.get("args") or [], **call.get("kwargs") or {})
                    try:
                        json.dumps(value)
                        reply = {"tool_result": value}
                    except TypeError:
                        reply = {"tool_result": str(value)}
                except Exception as exc:
                    reply = {"tool_error": f"{type(exc).__name__}: {exc}"}
                self._send(reply)
                continue
            if message.get("final") is not None:
                return ("final", message["final"])
            out, err = message.get("stdout") or "", message.get("stderr") or ""
            return out + ("\n" if out and err else "") + err
        raise RuntimeError("the tutorial driver's stdout ended")

    def shutdown(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        self._stdin = self._lines = None
        if sandbox is not None:
            try:
                sandbox.terminate()
            except Exception:
                pass


# -- byte counting -------------------------------------------------------------------------------
class ByteCounter:
    """Wraps ``target.write`` on the instance to add each written chunk's size (UTF-8 for str)."""

    def __init__(self, target: Any) -> None:
        self.total = 0
        original = target.write

        def write(data: Any) -> Any:
            self.total += len(data.encode("utf-8")) if isinstance(data, str) else len(data)
            return original(data)

        target.write = write


def stdin_of(side_name: str, interp: Any) -> Any:
    """The object whose ``write`` carries everything sent to the sandbox, for a started interpreter."""
    if side_name == MODAL:
        return interp._session._process.exec_stdin  # the SDK writer the stdin pump sends through
    return interp._stdin


# -- the sides and samplers ----------------------------------------------------------------------
def make_interpreter(side_name: str) -> Any:
    interp = sandboxkit.interpreter(MODAL) if side_name == MODAL else TutorialInterpreter()
    interp.tools = {"f": echo}
    return interp


#: Every this many timed samples, an untimed check that the state is what the samples made it.
CHECK_EVERY = 25


def sample_execute(side: Side, state: dict[str, Any]) -> float:
    interp = state.get("session")
    if interp is None:
        interp = state["session"] = side.running()
        interp.execute("x = 0")
        state["count"] = 0
    ms, _ = timed(lambda: interp.execute("x += 1"))
    state["count"] += 1
    if state["count"] % CHECK_EVERY == 1:
        expect(interp.execute("print(x)"), f"{state['count']}\n", f"{side.name}: x after the increments")
    return ms


def sample_tool(side: Side, state: dict[str, Any]) -> float:
    interp = state.get("session") or state.setdefault("session", side.running())
    ms, value = timed(lambda: interp.execute("print(f(1))"))
    expect(value, "1\n", f"{side.name}: print(f(1))")
    return ms


SAMPLERS = {"execute_rt": sample_execute, "tool_rt": sample_tool}
WARMUP = {"execute_rt": 40, "tool_rt": 40}


def make_document() -> str:
    """A deterministic ASCII text of exactly DOCUMENT_BYTES bytes, in lines like a log or docs dump."""
    line = "section {:07d}: the quick brown fox reads the manual and files an issue about it\n"
    lines = []
    size = 0
    n = 0
    while size < DOCUMENT_BYTES:
        text = line.format(n)
        lines.append(text)
        size += len(text)
        n += 1
    return "".join(lines)[:DOCUMENT_BYTES]


#: RLM-style snippets, cycled: look at the document, search it, keep notes between iterations.
RLM_STEPS = (
    ("print(len(context))", lambda doc: f"{len(doc)}\n"),
    ("print(context[:60])", lambda doc: doc[:60] + "\n"),
    ("notes = [i for i in range(0, len(context), 1_000_000) if 'fox' in context[i:i + 200]]\nprint(len(notes))",
     lambda doc: f"{sum(1 for i in range(0, len(doc), 1_000_000) if 'fox' in doc[i:i + 200])}\n"),
    ("print(context.count('section 00001'))", lambda doc: f"{doc.count('section 00001')}\n"),
    ("print(query.upper())", lambda doc: "WHERE DOES THE FOX FILE ISSUES?\n"),
)


def document_run(side_name: str, iterations: int, document: str) -> dict[str, Any]:
    """Start one interpreter, count its stdin bytes over ``iterations`` executes with the same
    variables (the document among them), check each output, shut it down."""
    variables = {"context": document, "query": "where does the fox file issues?"}
    interp = make_interpreter(side_name)
    try:
        interp.start()
        counter = ByteCounter(stdin_of(side_name, interp))
        begin = time.perf_counter()
        for i in range(iterations):
            code, wanted = RLM_STEPS[i % len(RLM_STEPS)]
            expect(interp.execute(code, variables), wanted(document), f"{side_name}: iteration {i + 1}")
        elapsed_ms = (time.perf_counter() - begin) * 1000.0
    finally:
        interp.shutdown()
    return {"bytes": counter.total, "iterations": iterations, "total_ms": elapsed_ms}


def document_entry(row: Row, quick: bool) -> dict[str, Any]:
    iterations = row.quick_samples if quick else row.samples
    document = make_document()
    doc_bytes = len(document.encode("utf-8"))
    ours = document_run(MODAL, iterations, document)
    theirs = document_run(TUTORIAL, iterations, document)
    documents = ours["bytes"] / doc_bytes
    return {
        "label": row.label.replace(str(ITERATIONS), str(iterations)),
        "baseline": TUTORIAL,
        "document_bytes": doc_bytes,
        "target": f"< {DOCUMENT_LIMIT:g} documents",
        "ratio": ours["bytes"] / theirs["bytes"],
        "result": "PASS" if documents < DOCUMENT_LIMIT else "FAIL",
        MODAL: ours,
        "vs": theirs,
    }


# -- the emulator ------------------------------------------------------------------------------
def modal_problem() -> str | None:
    """Why the benchmark cannot run here (no SDK, no plugin or emulator), or None."""
    try:
        import modal  # noqa: F401
    except ImportError as exc:
        return f"the modal SDK is not installed ({exc}); install sandboxkit[modal]"
    try:
        sandboxkit.factory(MODAL)
        from sandboxkit_modal.emulator import testing  # noqa: F401
    except Exception as exc:
        return f"the {MODAL!r} backend or its emulator cannot be loaded: {type(exc).__name__}: {exc}"
    return None


class Emulator:
    """The local Modal emulator, with its environment exported into this process while open."""

    def __enter__(self) -> Any:
        from sandboxkit_modal.emulator.testing import sdk_pointed_at, start_emulator

        self.running = start_emulator("--sandboxes", "process")
        self._pointed = sdk_pointed_at(self.running.env)
        self._pointed.__enter__()
        return self.running

    def __exit__(self, *exc: Any) -> None:
        try:
            self._pointed.__exit__(*exc)
        finally:
            self.running.stop()


# -- the run and the report ------------------------------------------------------------------
def environment() -> dict[str, Any]:
    return {
        **benchlib.base_environment(),
        "sandboxkit": benchlib.sandboxkit_version(),
        "commit": benchlib.git_commit(),
        "modal_sdk": benchlib.distribution_version("modal"),
    }


def run(quick: bool = False, only: list[str] | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start the emulator, measure every row (or those named in ``only``), stop it; return the results."""
    results: dict[str, Any] = {"environment": environment(), "quick": quick, "baselines": BASELINE_TEXT, "rows": {}}

    def entry(row: Row) -> dict[str, Any]:
        if row.key == "document_bytes":
            return document_entry(row, quick)
        sides = {name: Side(name, lambda name=name: make_interpreter(name)) for name in (MODAL, TUTORIAL)}
        stats = benchlib.measure(row, quick, sides, SAMPLERS[row.key], WARMUP[row.key])
        return {"label": row.label, "baseline": TUTORIAL, **benchlib.compare(row, stats[MODAL], stats[TUTORIAL]),
                MODAL: stats[MODAL], "vs": stats[TUTORIAL]}

    with Emulator():
        return benchlib.run_rows(results, ROWS, only, progress, entry)


def format_table(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = benchlib.header_lines(results, ", modal backend on the local emulator, vs the tutorial's ModalInterpreter", [
        f"modal SDK {env['modal_sdk']}; sandboxkit's Modal emulator on 127.0.0.1 (sandboxes are local processes)",
    ])
    rows = results["rows"]
    timed_entries = [rows[key] for key in TIMED_ROWS if key in rows]
    if timed_entries:
        lines += benchlib.table_lines(
            ("measurement", "sandboxkit ms", "tutorial ms", "ratio", "target", "result"),
            (cells for entry in timed_entries for cells in benchlib.comparison_cells(entry, MODAL, "vs")),
        )
    doc = rows.get("document_bytes")
    if doc is not None:
        ours, theirs, size = doc[MODAL], doc["vs"], doc["document_bytes"]
        lines += [
            "",
            f"{doc['label']} (document {size:,} B):",
            f"  sandboxkit  {ours['bytes']:>13,} B  ({ours['bytes'] / size:.2f} documents; {ours['total_ms']:.0f} ms in all)",
            f"  tutorial    {theirs['bytes']:>13,} B  ({theirs['bytes'] / size:.2f} documents; {theirs['total_ms']:.0f} ms in all)",
            f"  ratio sandboxkit/tutorial {doc['ratio']:.3f}x; target {doc['target']}: {doc['result']}",
        ]
    lines += ["", "baseline:", f"  {TUTORIAL}: {results['baselines'][TUTORIAL]}"]
    if timed_entries:
        lines += ["", "spread (p10 .. p90 ms, samples per side):"]
        for entry in timed_entries:
            ours, vs = entry[MODAL], entry["vs"]
            lines.append(f"  {entry['label']}: sandboxkit {ours['p10_ms']:.3f} .. {ours['p90_ms']:.3f}; "
                         f"tutorial {vs['p10_ms']:.3f} .. {vs['p90_ms']:.3f}; n={ours['n']}")
    return "\n".join(lines + benchlib.summary_lines(results))


def _precheck() -> str | None:
    problem = modal_problem()
    return None if problem is None else f"cannot run the modal benchmark: {problem}"


def main(argv: list[str] | None = None) -> int:
    return benchlib.main(__doc__, ROWS, run, format_table, argv, precheck=_precheck)


if __name__ == "__main__":
    sys.exit(main())

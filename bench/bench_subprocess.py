"""Benchmark: sandboxkit's ``subprocess`` backend against ``dspy.LocalInterpreter``.

Both run in this process on this machine, measured in one run with their samples interleaved
in short blocks (sandboxkit, LocalInterpreter, LocalInterpreter, sandboxkit, ...; one sample a
block for the costly rows) so that drift on a shared machine hits both sides alike. Figures are
medians of ``time.perf_counter`` samples in milliseconds; the round-trip rows also report the
mean, on a line of their own.

What is measured (see docs/performance.md for what each number means):

* ``start``: construct an interpreter and ``start()`` it until it is ready (shut down after
  each sample, untimed);
* ``execute``: one ``x += 1`` execute round trip on a running interpreter (after ``x = 0``);
* ``execute after idle``: the same after a 20 ms pause, as between LLM calls in RLM;
* ``tool``: one execute whose code calls a trivial host tool once, ``f(1)``: the whole execute;
* ``tool after idle``: the same after a 20 ms pause;
* ``tool per call``: one execute that calls the tool 100 times, divided by 100;
* ``10 MB first``: ``len(doc)`` with a 10 MB string passed as ``variables={"doc": s}`` on the
  first execute of a fresh interpreter;
* ``10 MB repeated``: the same execute again on the same interpreter with the same string.

Targets (printed as PASS/FAIL; the exit code is 0 either way, this is a measurement):
execute and tool round trips at most 0.5x LocalInterpreter's, both median and mean; after 20 ms
idle, their means at most 0.8x (medians reported only); the 10 MB variable at most 0.5x
LocalInterpreter's on the first execute and at most 1 ms on a repeated one.

Usage::

    python bench/bench_subprocess.py            # the full run (about 25 s on 2 cores)
    python bench/bench_subprocess.py --quick    # a few samples each, for smoke tests
    python bench/bench_subprocess.py --json results.json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402

import sandboxkit  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from benchlib import IDLE_MS, TOOL_LOOP_CALLS, Row, Side, echo, expect, timed  # noqa: E402

__all__ = ["ROWS", "main", "run"]

SANDBOXKIT = "sandboxkit"
LOCAL = "LocalInterpreter"
DOC_CHARS = 10_000_000


ROWS = (
    Row("start", "start (construct + start)", None, None, 40, 3),
    Row("execute", "execute x += 1", "ratio", 0.5, 400, 5, block=20, mean_limit=0.5),
    Row("execute_idle", f"execute x += 1 after {IDLE_MS} ms idle", None, None, 100, 3, mean_limit=0.8),
    Row("tool", "tool call f(1), whole execute", "ratio", 0.5, 300, 5, block=20, mean_limit=0.5),
    Row("tool_idle", f"tool call f(1) after {IDLE_MS} ms idle", None, None, 100, 3, mean_limit=0.8),
    Row("tool_per_call", f"tool per call ({TOOL_LOOP_CALLS} in one execute)", "ratio", 0.5, 40, 3, block=5),
    Row("doc_first", "10 MB variable, first execute", "ratio", 0.5, 20, 2),
    Row("doc_repeated", "10 MB variable, repeated execute", "absolute", 1.0, 40, 3, block=5),
)


def make_sandboxkit() -> Any:
    interp = sandboxkit.interpreter("subprocess")
    interp.tools = {"f": echo}
    return interp


def make_local() -> Any:
    return dspy.LocalInterpreter(tools={"f": echo})


MAKERS: dict[str, Callable[[], Any]] = {SANDBOXKIT: make_sandboxkit, LOCAL: make_local}


def make_document(chars: int) -> str:
    """A deterministic ASCII text of ``chars`` characters: words, punctuation, quotes and newlines."""
    words = ("the", "sandbox", "runs", "code", "\"quoted\"", "model's", "value,", "tool", "42", "data.")
    line: list[str] = []
    lines: list[str] = []
    size = 0
    i = 0
    while size < chars:
        line.append(words[(i * 7 + i // 3) % len(words)])
        i += 1
        if i % 12 == 0:
            text = " ".join(line) + "\n"
            lines.append(text)
            size += len(text)
            line = []
    return "".join(lines)[:chars]


# -- the samples only this benchmark takes (the others are in benchlib) ------------------------
def sample_start(side: Side, _state: dict[str, Any]) -> float:
    return benchlib.time_start(side)


def sample_doc_first(side: Side, state: dict[str, Any]) -> float:
    doc = state["doc"]
    interp = side.make()
    interp.start()
    try:
        ms, value = timed(lambda: interp.execute("len(doc)", {"doc": doc}))
    finally:
        interp.shutdown()
    expect(value, len(doc), "len(doc) on the first execute")
    return ms


def sample_doc_repeated(side: Side, state: dict[str, Any]) -> float:
    doc = state["doc"]
    interp = state.get("interp")
    if interp is None:
        interp = state["interp"] = side.running()
        expect(interp.execute("len(doc)", {"doc": doc}), len(doc), "len(doc) on the untimed first execute")
    ms, value = timed(lambda: interp.execute("len(doc)", {"doc": doc}))
    expect(value, len(doc), "len(doc) on a repeated execute")
    return ms


SAMPLERS: dict[str, Callable[[Side, dict[str, Any]], float]] = {
    "start": sample_start,
    "execute": benchlib.sample_execute,
    "execute_idle": benchlib.sample_execute_idle,
    "tool": benchlib.sample_tool,
    "tool_idle": benchlib.sample_tool_idle,
    "tool_per_call": benchlib.sample_tool_per_call,
    "doc_first": sample_doc_first,
    "doc_repeated": sample_doc_repeated,
}
WARMUP = {"start": 2, "execute": 10, "execute_idle": 2, "tool": 10, "tool_idle": 2, "tool_per_call": 2, "doc_first": 1, "doc_repeated": 2}


# -- the run and the report -----------------------------------------------------------------
def measure(row: Row, quick: bool, doc: str) -> dict[str, dict[str, Any]]:
    """Both sides' samples of one row, interleaved (see :func:`benchlib.measure`)."""
    sides = {name: Side(name, MAKERS[name]) for name in (SANDBOXKIT, LOCAL)}
    return benchlib.measure(row, quick, sides, SAMPLERS[row.key], WARMUP[row.key], lambda: {"doc": doc})


def environment() -> dict[str, Any]:
    return {
        **benchlib.base_environment(),
        "dspy": getattr(dspy, "__version__", "unknown"),
        "sandboxkit": benchlib.sandboxkit_version(),
        "commit": benchlib.git_commit(),
    }


def run(quick: bool = False, only: list[str] | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every row (or the rows named in ``only``); return the results as a dict."""
    doc = make_document(DOC_CHARS)
    results: dict[str, Any] = {"environment": environment(), "quick": quick, "doc_chars": len(doc), "rows": {}}

    def entry(row: Row) -> dict[str, Any]:
        stats = measure(row, quick, doc)
        return {
            "label": row.label,
            **benchlib.compare(row, stats[SANDBOXKIT], stats[LOCAL]),
            SANDBOXKIT: stats[SANDBOXKIT],
            LOCAL: stats[LOCAL],
        }

    return benchlib.run_rows(results, ROWS, only, progress, entry)


def format_table(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = benchlib.header_lines(results, f", subprocess backend, vs dspy.LocalInterpreter (DSPy {env['dspy']})")
    lines += benchlib.table_lines(
        ("measurement", "sandboxkit ms", "Local ms", "ratio", "target", "result"),
        (cells for entry in results["rows"].values() for cells in benchlib.comparison_cells(entry, SANDBOXKIT, LOCAL)),
    )
    lines += benchlib.spread_lines(results, lambda entry: (("sandboxkit", entry[SANDBOXKIT]), ("Local", entry[LOCAL])))
    return "\n".join(lines + benchlib.summary_lines(results))


def main(argv: list[str] | None = None) -> int:
    return benchlib.main(__doc__, ROWS, run, format_table, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: sandboxkit's ``subprocess`` backend against ``dspy.LocalInterpreter``.

Both run in this process on this machine, measured in one run with their samples interleaved
in short blocks (sandboxkit, LocalInterpreter, LocalInterpreter, sandboxkit, ...; one sample a
block for the costly rows) so that drift on a shared machine hits both sides alike. Every figure is a median of ``time.perf_counter`` samples in milliseconds.

What is measured (see docs/performance.md for what each number means):

* ``start``: construct an interpreter and ``start()`` it until it is ready (shut down after
  each sample, untimed);
* ``execute``: one ``x += 1`` execute round trip on a running interpreter (after ``x = 0``);
* ``execute after idle`` (reported only): the same after a 20 ms pause, as between LLM calls;
* ``tool``: one execute whose code calls a trivial host tool once, ``f(1)``: the whole execute;
* ``tool per call``: one execute that calls the tool 100 times, divided by 100;
* ``10 MB first``: ``len(doc)`` with a 10 MB string passed as ``variables={"doc": s}`` on the
  first execute of a fresh interpreter;
* ``10 MB repeated``: the same execute again on the same interpreter with the same string.

Targets (printed as PASS/FAIL; the exit code is 0 either way, this is a measurement):
execute and tool round trips at most 0.5x LocalInterpreter's; the 10 MB variable at most 0.5x
LocalInterpreter's on the first execute and at most 1 ms on a repeated one.

Usage::

    python bench/bench_subprocess.py            # the full run (about 15 s on 2 cores)
    python bench/bench_subprocess.py --quick    # a few samples each, for smoke tests
    python bench/bench_subprocess.py --json results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402

import sandboxkit  # noqa: E402

__all__ = ["ROWS", "main", "run"]

SANDBOXKIT = "sandboxkit"
LOCAL = "LocalInterpreter"
DOC_CHARS = 10_000_000
TOOL_LOOP_CALLS = 100
#: The pause before each sample of the "after idle" row (executes in RLM come between LLM calls).
IDLE_MS = 20


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table."""

    key: str
    label: str
    #: "ratio": sandboxkit/LocalInterpreter must be <= limit; "absolute": sandboxkit's ms <= limit;
    #: None: reported only.
    target_kind: str | None
    limit: float | None
    #: Samples per side in a full run and in a --quick run.
    samples: int
    quick_samples: int
    #: Samples taken in a row on one side before switching (blocks alternate A B B A ...).
    block: int = 1

    @property
    def target_text(self) -> str:
        if self.target_kind == "ratio":
            return f"<= {self.limit:g}x"
        if self.target_kind == "absolute":
            return f"<= {self.limit:g} ms"
        return "-"


ROWS = (
    Row("start", "start (construct + start)", None, None, 40, 3),
    Row("execute", "execute x += 1", "ratio", 0.5, 400, 5, block=20),
    Row("execute_idle", f"execute x += 1 after {IDLE_MS} ms idle", None, None, 60, 3),
    Row("tool", "tool call f(1), whole execute", "ratio", 0.5, 300, 5, block=20),
    Row("tool_per_call", f"tool per call ({TOOL_LOOP_CALLS} in one execute)", "ratio", 0.5, 40, 3, block=5),
    Row("doc_first", "10 MB variable, first execute", "ratio", 0.5, 20, 2),
    Row("doc_repeated", "10 MB variable, repeated execute", "absolute", 1.0, 40, 3, block=5),
)


def echo(x: Any) -> Any:
    """The trivial host tool: returns its argument."""
    return x


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


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    begin = time.perf_counter()
    result = fn()
    return (time.perf_counter() - begin) * 1000.0, result


def expect(actual: Any, wanted: Any, what: str) -> None:
    if actual != wanted:
        raise AssertionError(f"{what}: expected {wanted!r}, got {actual!r}")


# -- one sample of each measurement, given a side ----------------------------------------------
class Side:
    """One implementation under test, with the long-lived interpreters its samples reuse."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.make = MAKERS[name]
        self.live: list[Any] = []

    def running(self) -> Any:
        interp = self.make()
        interp.start()
        self.live.append(interp)
        return interp

    def close(self) -> None:
        for interp in self.live:
            interp.shutdown()
        self.live.clear()


def sample_start(side: Side, _state: dict[str, Any]) -> float:
    def start() -> Any:
        interp = side.make()
        interp.start()
        return interp

    ms, interp = timed(start)
    interp.shutdown()
    return ms


def sample_execute(side: Side, state: dict[str, Any]) -> float:
    interp = state.get("interp")
    if interp is None:
        interp = state["interp"] = side.running()
        interp.execute("x = 0")
        state["count"] = 0
    ms, _ = timed(lambda: interp.execute("x += 1"))
    state["count"] += 1
    return ms


def sample_execute_idle(side: Side, state: dict[str, Any]) -> float:
    time.sleep(IDLE_MS / 1000.0)
    return sample_execute(side, state)


def check_execute(state: dict[str, Any]) -> None:
    expect(state["interp"].execute("x"), state["count"], "x after the increments")


def sample_tool(side: Side, state: dict[str, Any]) -> float:
    interp = state.get("interp") or state.setdefault("interp", side.running())
    ms, value = timed(lambda: interp.execute("f(1)"))
    expect(value, 1, "f(1)")
    return ms


def sample_tool_per_call(side: Side, state: dict[str, Any]) -> float:
    interp = state.get("interp") or state.setdefault("interp", side.running())
    code = f"n = 0\nfor _ in range({TOOL_LOOP_CALLS}):\n    n += f(1)\nn"
    ms, value = timed(lambda: interp.execute(code))
    expect(value, TOOL_LOOP_CALLS, "the tool loop's sum")
    return ms / TOOL_LOOP_CALLS


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
    "execute": sample_execute,
    "execute_idle": sample_execute_idle,
    "tool": sample_tool,
    "tool_per_call": sample_tool_per_call,
    "doc_first": sample_doc_first,
    "doc_repeated": sample_doc_repeated,
}
CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"execute": check_execute, "execute_idle": check_execute}
WARMUP = {"start": 2, "execute": 10, "execute_idle": 2, "tool": 10, "tool_per_call": 2, "doc_first": 1, "doc_repeated": 2}


# -- statistics and the run -----------------------------------------------------------------
def summarize(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))]

    return {
        "median_ms": statistics.median(ordered),
        "p10_ms": pct(0.10),
        "p90_ms": pct(0.90),
        "min_ms": ordered[0],
        "mean_ms": statistics.fmean(ordered),
        "n": len(ordered),
        "samples_ms": samples,
    }


def measure(row: Row, quick: bool, doc: str) -> dict[str, dict[str, Any]]:
    """Interleave the two sides' samples of one row in blocks of ``row.block``: A B B A A B ...

    Short blocks cancel drift the way single alternation does, while each round trip is measured
    warm, as it runs in a loop, rather than just after the other side disturbed the caches.
    """
    sides = {name: Side(name) for name in (SANDBOXKIT, LOCAL)}
    states: dict[str, dict[str, Any]] = {name: {"doc": doc} for name in sides}
    sampler = SAMPLERS[row.key]
    count = row.quick_samples if quick else row.samples
    warmup = 1 if quick else WARMUP[row.key]
    samples: dict[str, list[float]] = {name: [] for name in sides}
    gc.collect()
    try:
        block = 1 if quick else row.block
        order = list(sides)
        for _ in range(warmup):
            for name in order:
                sampler(sides[name], states[name])
        for block_index in range(-(-count // block)):
            for name in order if block_index % 2 == 0 else reversed(order):
                for _ in range(min(block, count - block_index * block)):
                    samples[name].append(sampler(sides[name], states[name]))
        check = CHECKS.get(row.key)
        if check is not None:
            for name in sides:
                check(states[name])
    finally:
        for side in sides.values():
            side.close()
    return {name: summarize(values) for name, values in samples.items()}


def verdict(row: Row, sk_ms: float, local_ms: float) -> tuple[float, str]:
    ratio = sk_ms / local_ms if local_ms > 0 else float("inf")
    if row.target_kind == "ratio":
        return ratio, "PASS" if ratio <= row.limit else "FAIL"
    if row.target_kind == "absolute":
        return ratio, "PASS" if sk_ms <= row.limit else "FAIL"
    return ratio, "info"


def environment() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "dspy": getattr(dspy, "__version__", "unknown"),
        "sandboxkit": getattr(sandboxkit, "__version__", None) or _distribution_version("sandboxkit"),
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The short commit of the sandboxkit checkout being measured, if it is a git checkout."""
    root = Path(sandboxkit.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _distribution_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def run(quick: bool = False, only: list[str] | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every row (or the rows named in ``only``); return the results as a dict."""
    doc = make_document(DOC_CHARS)
    results: dict[str, Any] = {"environment": environment(), "quick": quick, "doc_chars": len(doc), "rows": {}}
    began = time.perf_counter()
    for row in ROWS:
        if only and row.key not in only:
            continue
        if progress:
            progress(f"measuring {row.label} ...")
        stats = measure(row, quick, doc)
        sk_ms, local_ms = stats[SANDBOXKIT]["median_ms"], stats[LOCAL]["median_ms"]
        ratio, result = verdict(row, sk_ms, local_ms)
        results["rows"][row.key] = {
            "label": row.label,
            "target": row.target_text,
            "ratio": ratio,
            "result": result,
            SANDBOXKIT: stats[SANDBOXKIT],
            LOCAL: stats[LOCAL],
        }
    results["elapsed_s"] = time.perf_counter() - began
    return results


def format_table(results: dict[str, Any]) -> str:
    env = results["environment"]
    header = ("measurement", "sandboxkit ms", "Local ms", "ratio", "target", "result")
    lines = [
        f"sandboxkit {env['sandboxkit']}" + (f" ({env['commit']})" if env.get("commit") else "")
        + f", subprocess backend, vs dspy.LocalInterpreter (DSPy {env['dspy']})",
        f"{env['date']}; Python {env['python']}; {env['cpus']} CPUs; {env['platform']}",
        "medians of samples interleaved in short blocks" + (" (QUICK RUN: too few samples to rely on)" if results["quick"] else ""),
        "",
    ]
    rows = [header]
    for row in results["rows"].values():
        sk, local = row[SANDBOXKIT], row[LOCAL]
        rows.append((
            row["label"],
            f"{sk['median_ms']:.3f}",
            f"{local['median_ms']:.3f}",
            f"{row['ratio']:.3f}x",
            row["target"],
            row["result"],
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:5], widths[1:5])] + [r[5]]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    spread = ["", "spread (p10 .. p90 ms, samples per side):"]
    for row in results["rows"].values():
        sk, local = row[SANDBOXKIT], row[LOCAL]
        spread.append(
            f"  {row['label']}: sandboxkit {sk['p10_ms']:.3f} .. {sk['p90_ms']:.3f}; "
            f"Local {local['p10_ms']:.3f} .. {local['p90_ms']:.3f}; n={sk['n']}"
        )
    failed = [row["label"] for row in results["rows"].values() if row["result"] == "FAIL"]
    checked = [row for row in results["rows"].values() if row["result"] in ("PASS", "FAIL")]
    summary = (
        f"targets: {len(checked) - len(failed)} of {len(checked)} met"
        + (f"; MISSED: {', '.join(failed)}" if failed else "")
    )
    return "\n".join(lines + spread + ["", summary, f"run took {results['elapsed_s']:.1f} s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few samples each (smoke test; numbers unreliable)")
    parser.add_argument("--json", metavar="PATH", help="also write the results (with every sample) as JSON")
    parser.add_argument("--only", metavar="KEY", action="append", choices=[row.key for row in ROWS],
                        help="measure only this row (repeatable)")
    args = parser.parse_args(argv)
    results = run(args.quick, args.only, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(results), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared parts of sandboxkit's benchmarks (``bench/bench_*.py``).

Each benchmark compares "our" side (a sandboxkit backend) with one baseline side per row. This
module holds what they have in common:

* :class:`Row`, one line of a results table, with its target and sample counts;
* :class:`Side`, an implementation under test with the interpreters its samples keep running;
* the samplers every benchmark shares (``execute``, ``execute after idle``, ``tool``,
  ``tool after idle``, ``tool per call``) and :func:`time_start`;
* :func:`measure`, the block-interleaved measuring loop, :func:`summarize`, :func:`verdict` and
  :func:`compare` (the verdicts on the median and, for rows with a mean target, the mean);
* :func:`run_rows`, which fills a results dict row by row;
* the pieces of the printed report (:func:`header_lines`, :func:`table_lines`,
  :func:`spread_lines`, :func:`summary_lines`) and the environment helpers;
* :func:`main`, the command line (``--quick``, ``--json PATH``, ``--only KEY``).

It is imported by the scripts from their own directory (they are run as
``python bench/bench_X.py``); it is not part of the installed sandboxkit package.
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
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "CHECKS",
    "IDLE_MS",
    "TOOL_LOOP_CALLS",
    "Row",
    "Side",
    "base_environment",
    "check_execute",
    "compare",
    "comparison_cells",
    "distribution_version",
    "echo",
    "expect",
    "git_commit",
    "header_lines",
    "main",
    "measure",
    "median_cells",
    "run_rows",
    "sample_execute",
    "sample_execute_idle",
    "sample_tool",
    "sample_tool_idle",
    "sample_tool_per_call",
    "sandboxkit_version",
    "spread_lines",
    "summarize",
    "summary_lines",
    "table_lines",
    "time_start",
    "timed",
    "verdict",
]

TOOL_LOOP_CALLS = 100
#: The pause before each sample of the "after idle" row (executes in RLM come between LLM calls).
IDLE_MS = 20

Sampler = Callable[["Side", dict[str, Any]], float]


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table."""

    key: str
    label: str
    #: "ratio": ours/baseline must be <= limit; "absolute": our median ms must be <= limit;
    #: None: reported only.
    target_kind: str | None
    limit: float | None
    #: Samples per side in a full run and in a --quick run.
    samples: int
    quick_samples: int
    #: Samples taken in a row on one side before switching (blocks alternate A B B A ...).
    block: int = 1
    #: The name of the side ours is compared with, for benchmarks whose baseline varies by row.
    baseline: str | None = None
    #: A target on the means as well: ours' mean / baseline's mean must be <= this. Rows with one
    #: are reported with a second line for the means.
    mean_limit: float | None = None

    @property
    def target_text(self) -> str:
        if self.target_kind == "ratio":
            return f"<= {self.limit:g}x"
        if self.target_kind == "absolute":
            return f"<= {self.limit:g} ms"
        return "-"


def echo(x: Any) -> Any:
    """The trivial host tool: returns its argument."""
    return x


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Call ``fn``; return the milliseconds it took and its result."""
    begin = time.perf_counter()
    result = fn()
    return (time.perf_counter() - begin) * 1000.0, result


def expect(actual: Any, wanted: Any, what: str) -> None:
    """Raise AssertionError naming ``what`` unless ``actual == wanted``."""
    if actual != wanted:
        raise AssertionError(f"{what}: expected {wanted!r}, got {actual!r}")


# -- one sample of each shared measurement, given a side -----------------------------------------
class Side:
    """One implementation under test, with the long-lived interpreters its samples reuse.

    ``make`` builds a new (unstarted) interpreter. Anything appended to ``live`` must have a
    ``shutdown()``; :meth:`close` calls it on each.
    """

    def __init__(self, name: str, make: Callable[[], Any]) -> None:
        self.name = name
        self.make = make
        self.live: list[Any] = []

    def running(self) -> Any:
        """A new, started interpreter that :meth:`close` will shut down."""
        interp = self.make()
        self.live.append(interp)
        interp.start()
        return interp

    def close(self) -> None:
        for interp in self.live:
            interp.shutdown()
        self.live.clear()


def time_start(side: Side) -> float:
    """Milliseconds to construct an interpreter of ``side`` and start it (its shutdown is untimed)."""
    made: list[Any] = []

    def start() -> None:
        made.append(side.make())
        made[0].start()

    try:
        ms, _ = timed(start)
    finally:
        for interp in made:
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


def sample_tool_idle(side: Side, state: dict[str, Any]) -> float:
    time.sleep(IDLE_MS / 1000.0)
    return sample_tool(side, state)


def sample_tool_per_call(side: Side, state: dict[str, Any]) -> float:
    interp = state.get("interp") or state.setdefault("interp", side.running())
    code = f"n = 0\nfor _ in range({TOOL_LOOP_CALLS}):\n    n += f(1)\nn"
    ms, value = timed(lambda: interp.execute(code))
    expect(value, TOOL_LOOP_CALLS, "the tool loop's sum")
    return ms / TOOL_LOOP_CALLS


#: Checks run on each side's state after a row's samples, by row key.
CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"execute": check_execute, "execute_idle": check_execute}


# -- statistics and the run -----------------------------------------------------------------
def summarize(samples: list[float]) -> dict[str, Any]:
    """Median, p10, p90, min, mean and count of ``samples`` (ms), with the samples themselves."""
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


def measure(
    row: Row,
    quick: bool,
    sides: dict[str, Side],
    sampler: Sampler,
    warmup: int,
    initial_state: Callable[[], dict[str, Any]] = dict,
) -> dict[str, dict[str, Any]]:
    """Interleave the two sides' samples of one row in blocks of ``row.block``: A B B A A B ...

    Short blocks cancel drift the way single alternation does, while each round trip is measured
    warm, as it runs in a loop, rather than just after the other side disturbed the caches.

    ``sides`` are in order (ours first); each gets its own state dict from ``initial_state``,
    passed to every ``sampler`` call. ``warmup`` untimed samples per side come first (one in a
    quick run, where blocks are also one sample long). After the samples, the row's check in
    :data:`CHECKS` (if any) runs on each state; every side is closed in the end, come what may.
    Returns :func:`summarize` of each side's samples, by side name.
    """
    states: dict[str, dict[str, Any]] = {name: initial_state() for name in sides}
    count = row.quick_samples if quick else row.samples
    warmup = 1 if quick else warmup
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


def verdict(row: Row, ours_ms: float, baseline_ms: float) -> tuple[float, str]:
    """The ratio ours/baseline and "PASS", "FAIL" or (for rows without a target) "info"."""
    ratio = ours_ms / baseline_ms if baseline_ms > 0 else float("inf")
    if row.target_kind == "ratio":
        return ratio, "PASS" if ratio <= row.limit else "FAIL"
    if row.target_kind == "absolute":
        return ratio, "PASS" if ours_ms <= row.limit else "FAIL"
    return ratio, "info"


def compare(row: Row, ours: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The verdict fields of a results entry for two sides' :func:`summarize` statistics:
    ``ratio``, ``target`` and ``result`` on the medians (see :func:`verdict`) and, when the row
    has a ``mean_limit``, ``mean`` with the same three fields on the means."""
    ratio, result = verdict(row, ours["median_ms"], baseline["median_ms"])
    fields: dict[str, Any] = {"ratio": ratio, "target": row.target_text, "result": result}
    if row.mean_limit is not None:
        mean_ratio = ours["mean_ms"] / baseline["mean_ms"] if baseline["mean_ms"] > 0 else float("inf")
        fields["mean"] = {"ratio": mean_ratio, "target": f"<= {row.mean_limit:g}x",
                          "result": "PASS" if mean_ratio <= row.mean_limit else "FAIL"}
    return fields


def run_rows(
    results: dict[str, Any],
    rows: Iterable[Row],
    only: list[str] | None,
    progress: Callable[[str], None] | None,
    entry: Callable[[Row], dict[str, Any]],
) -> dict[str, Any]:
    """Fill ``results["rows"]`` with ``entry(row)`` for each row (or each named in ``only``),
    reporting each through ``progress``; then set ``results["elapsed_s"]``. Returns ``results``."""
    rows_out = results.setdefault("rows", {})
    began = time.perf_counter()
    for row in rows:
        if only and row.key not in only:
            continue
        if progress:
            progress(f"measuring {row.label} ...")
        rows_out[row.key] = entry(row)
    results["elapsed_s"] = time.perf_counter() - began
    return results


# -- the environment --------------------------------------------------------------------------
def base_environment() -> dict[str, Any]:
    """Date (UTC), Python version and implementation, platform and CPU count."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def sandboxkit_version() -> str:
    """The version of the sandboxkit being measured (its ``__version__`` or distribution's)."""
    import sandboxkit

    return getattr(sandboxkit, "__version__", None) or distribution_version("sandboxkit")


def git_commit() -> str | None:
    """The short commit of the sandboxkit checkout being measured, if it is a git checkout."""
    import sandboxkit

    root = Path(sandboxkit.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def distribution_version(name: str) -> str:
    """The installed version of distribution ``name``, or "unknown"."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


# -- the report -------------------------------------------------------------------------------
def header_lines(results: dict[str, Any], what: str, details: Sequence[str] = ()) -> list[str]:
    """The report's opening lines: the sandboxkit version and commit followed by ``what``, then
    ``details`` lines, the environment, the sampling note and a blank line."""
    env = results["environment"]
    return [
        f"sandboxkit {env['sandboxkit']}" + (f" ({env['commit']})" if env.get("commit") else "") + what,
        *details,
        f"{env['date']}; Python {env['python']}; {env['cpus']} CPUs; {env['platform']}",
        "medians (and means, on the lines marked so) of samples interleaved in short blocks" + (" (QUICK RUN: too few samples to rely on)" if results["quick"] else ""),
        "",
    ]


def comparison_cells(entry: dict[str, Any], ours: str, vs: str) -> list[tuple[str, ...]]:
    """The table lines of a results entry: :func:`median_cells`, then, for an entry with a
    ``mean`` verdict (see :func:`compare`), the means' line, labelled "<label>, mean"."""
    lines = [median_cells(entry, ours, vs)]
    mean = entry.get("mean")
    if mean is not None:
        lines.append((
            entry["label"] + ", mean",
            f"{entry[ours]['mean_ms']:.3f}",
            f"{entry[vs]['mean_ms']:.3f}",
            f"{mean['ratio']:.3f}x",
            mean["target"],
            mean["result"],
        ))
    return lines


def median_cells(entry: dict[str, Any], ours: str, vs: str) -> tuple[str, ...]:
    """A table row's cells: label, both medians, ratio, target and result of a results entry
    whose sides' statistics are under the keys ``ours`` and ``vs``."""
    return (
        entry["label"],
        f"{entry[ours]['median_ms']:.3f}",
        f"{entry[vs]['median_ms']:.3f}",
        f"{entry['ratio']:.3f}x",
        entry["target"],
        entry["result"],
    )


def table_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """An aligned table with a rule under ``header``: the first column left-aligned, the next
    four (figures, ratio, target) right-aligned, later ones left-aligned (the last one unpadded)."""
    table = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for n, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:5], widths[1:5])]
        cells += [c.ljust(w) for c, w in zip(r[5:-1], widths[5:-1])] + [r[-1]]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def spread_lines(
    results: dict[str, Any],
    sides: Callable[[dict[str, Any]], tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]],
) -> list[str]:
    """The p10 .. p90 spread of each row; ``sides(entry)`` gives ((name, stats), (name, stats))."""
    lines = ["", "spread (p10 .. p90 ms, samples per side):"]
    for entry in results["rows"].values():
        (ours_name, ours), (vs_name, vs) = sides(entry)
        lines.append(
            f"  {entry['label']}: {ours_name} {ours['p10_ms']:.3f} .. {ours['p90_ms']:.3f}; "
            f"{vs_name} {vs['p10_ms']:.3f} .. {vs['p90_ms']:.3f}; n={ours['n']}"
        )
    return lines


def summary_lines(results: dict[str, Any]) -> list[str]:
    """How many targets were met (naming those missed; a mean's as "<label>, mean") and how long
    the run took."""
    verdicts = []
    for entry in results["rows"].values():
        verdicts.append((entry["label"], entry["result"]))
        if entry.get("mean") is not None:
            verdicts.append((entry["label"] + ", mean", entry["mean"]["result"]))
    failed = [label for label, result in verdicts if result == "FAIL"]
    checked = [label for label, result in verdicts if result in ("PASS", "FAIL")]
    summary = (
        f"targets: {len(checked) - len(failed)} of {len(checked)} met"
        + (f"; MISSED: {', '.join(failed)}" if failed else "")
    )
    return ["", summary, f"run took {results['elapsed_s']:.1f} s"]


# -- the command line -------------------------------------------------------------------------
def main(
    doc: str,
    rows: Sequence[Row],
    run: Callable[..., dict[str, Any]],
    format_table: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
    precheck: Callable[[], str | None] | None = None,
) -> int:
    """Parse ``--quick``, ``--json PATH`` and ``--only KEY`` (the description is the first
    paragraph of ``doc``); if ``precheck`` returns a message, print it to stderr and return 2;
    else call ``run(quick, only, progress=...)`` (progress to stderr), print
    ``format_table(results)`` and write the results as JSON if asked. Returns 0."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few samples each (smoke test; numbers unreliable)")
    parser.add_argument("--json", metavar="PATH", help="also write the results (with every sample) as JSON")
    parser.add_argument("--only", metavar="KEY", action="append", choices=[row.key for row in rows],
                        help="measure only this row (repeatable)")
    args = parser.parse_args(argv)
    if precheck is not None:
        problem = precheck()
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
    results = run(args.quick, args.only, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(results), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
    return 0

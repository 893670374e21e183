"""Benchmark: sandboxkit's ``docker`` backend against a plain ``docker run`` and the ``subprocess`` backend.

Everything is measured in one run on this machine and this Docker engine, each row's two sides
interleaved in short blocks (docker, baseline, baseline, docker, ...; one sample a block for the
costly rows) so that drift on a shared machine hits both sides alike. Every figure is a median of
``time.perf_counter`` samples in milliseconds.

What is measured, and against what:

* ``start``: construct a ``docker`` interpreter and ``start()`` it until the driver in its
  container is ready (its shutdown, which removes the container, is not timed), against a plain
  ``docker run --rm --network none IMAGE true`` of the same image, run with the docker CLI;
* ``execute``: one ``x += 1`` execute round trip on a running interpreter (after ``x = 0``),
  against the same on the ``subprocess`` backend;
* ``execute after idle`` (reported only): the same after a 20 ms pause, as between LLM calls;
* ``tool``: one execute whose code calls a trivial host tool once, ``f(1)``: the whole execute;
* ``tool per call``: one execute that calls the tool 100 times, divided by 100;
* ``echo floor`` (reported only, no sandboxkit protocol): one JSON line, the size of an execute
  request, written to a bare echo loop and read back with a blocking poll, in a container started
  by the docker backend (so through the engine's attach relay, as the driver's messages go)
  against the same loop in a local process over pipes: what the engine's relay costs by itself.

Targets (printed as PASS/FAIL; the exit code is 0 either way, this is a measurement): start at
most 2x the plain ``docker run``; execute and tool round trips at most 3x the ``subprocess``
backend's. The image is the docker backend's default: ``$SANDBOXKIT_DOCKER_IMAGE``, else its
built-in default; it must be present on the engine. With no engine answering, the benchmark
says why and exits with status 2.

Usage::

    python bench/bench_docker.py            # the full run (well under 2 minutes on 2 cores)
    python bench/bench_docker.py --quick    # a few samples each, for smoke tests
    python bench/bench_docker.py --json results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import sandboxkit  # noqa: E402

__all__ = ["ROWS", "main", "run"]

DOCKER = "docker"
DOCKER_RUN = "docker-run"
SUBPROCESS = "subprocess"
PIPE = "pipe"
TOOL_LOOP_CALLS = 100
#: The pause before each sample of the "after idle" row (executes in RLM come between LLM calls).
IDLE_MS = 20


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table."""

    key: str
    label: str
    #: The side the docker backend is compared with: DOCKER_RUN, SUBPROCESS or PIPE.
    baseline: str
    #: "ratio": docker/baseline must be <= limit; None: reported only.
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
        return "-"


ROWS = (
    Row("start", "start (construct + start)", DOCKER_RUN, "ratio", 2.0, 50, 3),
    Row("execute", "execute x += 1", SUBPROCESS, "ratio", 3.0, 400, 5, block=20),
    Row("execute_idle", f"execute x += 1 after {IDLE_MS} ms idle", SUBPROCESS, None, None, 60, 3),
    Row("tool", "tool call f(1), whole execute", SUBPROCESS, "ratio", 3.0, 300, 5, block=20),
    Row("tool_per_call", f"tool per call ({TOOL_LOOP_CALLS} in one execute)", SUBPROCESS, "ratio", 3.0, 40, 3, block=5),
    Row("echo", "echo floor: a JSON line, no sandboxkit", PIPE, None, None, 400, 5, block=20),
)

BASELINE_TEXT = {
    DOCKER_RUN: "a plain 'docker run --rm --network none IMAGE true' of the same image (the docker CLI, "
                "run as a subprocess: create, start, wait, remove)",
    SUBPROCESS: "sandboxkit.interpreter('subprocess'), the same code on a local Python process",
    PIPE: "the same echo loop in a local Python process, over pipes",
}

#: The bare echo loop of the "echo floor" row: each line read on fd 0 is written back on fd 1.
ECHO_LOOP = (
    "import os\n"
    "rest = b''\n"
    "while True:\n"
    "    data = os.read(0, 65536)\n"
    "    if not data:\n"
    "        break\n"
    "    *lines, rest = (rest + data).split(b'\\n')\n"
    "    for line in lines:\n"
    "        os.write(1, line + b'\\n')\n"
)
#: A line the size and shape of an execute request.
ECHO_LINE = json.dumps({"type": "execute", "id": "0123456789abcdef0123456789abcdef", "code": "x += 1",
                        "variables": {}, "tools": [], "output_limit": 1000000}).encode() + b"\n"


def echo(x: Any) -> Any:
    """The trivial host tool: returns its argument."""
    return x


def docker_image() -> str:
    """The image the docker backend uses with its default options."""
    return sandboxkit.factory(DOCKER).backend_options.image


def make_interpreter(backend: str) -> Any:
    interp = sandboxkit.interpreter(backend)
    interp.tools = {"f": echo}
    return interp


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    begin = time.perf_counter()
    result = fn()
    return (time.perf_counter() - begin) * 1000.0, result


def expect(actual: Any, wanted: Any, what: str) -> None:
    if actual != wanted:
        raise AssertionError(f"{what}: expected {wanted!r}, got {actual!r}")


class EchoPeer:
    """The echo loop, reached without sandboxkit's protocol: in a container launched by the
    docker backend (its attach connection, demultiplexed), or in a local process over pipes."""

    def __init__(self, in_docker: bool) -> None:
        if in_docker:
            made = sandboxkit.factory(DOCKER)
            self.process: Any = made.backend_cls(made.backend_options).launch(["python3", "-I", "-c", ECHO_LOOP], {})
            split = self.process.split_output
        else:
            self.process = subprocess.Popen([sys.executable, "-I", "-c", ECHO_LOOP], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, bufsize=0)
            split = None
        self._split: Callable[[bytes], bytes] = split or (lambda chunk: chunk)
        self._fd = self.process.stdout.fileno()
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._buffer = bytearray()

    def round_trip(self, line: bytes) -> bytes:
        """Write ``line`` and block until a whole line comes back; return it."""
        self.process.stdin.write(line)
        self.process.stdin.flush()
        while b"\n" not in self._buffer:
            self._poll.poll()
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise RuntimeError("the echo loop ended")
            self._buffer += self._split(chunk)
        end = self._buffer.index(b"\n") + 1
        reply = bytes(self._buffer[:end])
        del self._buffer[:end]
        return reply

    def shutdown(self) -> None:
        if isinstance(self.process, subprocess.Popen):
            self.process.stdin.close()
            self.process.wait(10)
            self.process.stdout.close()
        else:
            self.process.kill()  # removes the container


# -- one sample of each measurement, given a side ----------------------------------------------
class Side:
    """One implementation under test, with the long-lived interpreters its samples reuse."""

    def __init__(self, name: str, image: str) -> None:
        self.name = name
        self.image = image
        self.live: list[Any] = []

    def make(self) -> Any:
        return make_interpreter(self.name)

    def running(self) -> Any:
        interp = self.make()
        self.live.append(interp)
        interp.start()
        return interp

    def close(self) -> None:
        for interp in self.live:
            interp.shutdown()
        self.live.clear()


def sample_start(side: Side, _state: dict[str, Any]) -> float:
    if side.name == DOCKER_RUN:
        argv = ["docker", "run", "--rm", "--network", "none", side.image, "true"]
        ms, done = timed(lambda: subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120))
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
        return ms
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


def sample_tool_per_call(side: Side, state: dict[str, Any]) -> float:
    interp = state.get("interp") or state.setdefault("interp", side.running())
    code = f"n = 0\nfor _ in range({TOOL_LOOP_CALLS}):\n    n += f(1)\nn"
    ms, value = timed(lambda: interp.execute(code))
    expect(value, TOOL_LOOP_CALLS, "the tool loop's sum")
    return ms / TOOL_LOOP_CALLS


def sample_echo(side: Side, state: dict[str, Any]) -> float:
    peer = state.get("peer")
    if peer is None:
        peer = state["peer"] = EchoPeer(side.name == DOCKER)
        side.live.append(peer)
    ms, reply = timed(lambda: peer.round_trip(ECHO_LINE))
    expect(reply, ECHO_LINE, "the echoed line")
    return ms


SAMPLERS: dict[str, Callable[[Side, dict[str, Any]], float]] = {
    "start": sample_start,
    "execute": sample_execute,
    "execute_idle": sample_execute_idle,
    "tool": sample_tool,
    "tool_per_call": sample_tool_per_call,
    "echo": sample_echo,
}
CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"execute": check_execute, "execute_idle": check_execute}
WARMUP = {"start": 2, "execute": 20, "execute_idle": 2, "tool": 20, "tool_per_call": 2, "echo": 20}


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


def measure(row: Row, quick: bool, image: str) -> dict[str, dict[str, Any]]:
    """Interleave the two sides' samples of one row in blocks of ``row.block``: A B B A A B ...

    Short blocks cancel drift the way single alternation does, while each round trip is measured
    warm, as it runs in a loop, rather than just after the other side disturbed the caches.
    """
    sides = {name: Side(name, image) for name in (DOCKER, row.baseline)}
    states: dict[str, dict[str, Any]] = {name: {} for name in sides}
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


def verdict(row: Row, docker_ms: float, baseline_ms: float) -> tuple[float, str]:
    ratio = docker_ms / baseline_ms if baseline_ms > 0 else float("inf")
    if row.target_kind == "ratio":
        return ratio, "PASS" if ratio <= row.limit else "FAIL"
    return ratio, "info"


def engine_problem() -> str | None:
    """Why the benchmark cannot run here (no SDK, no engine, no docker CLI, no image), or None."""
    try:
        availability = sandboxkit.factory(DOCKER).backend_cls.check()
    except Exception as exc:  # not installed, disabled, or a broken plugin
        return f"the {DOCKER!r} backend cannot be loaded: {type(exc).__name__}: {exc}"
    if not availability.usable:
        hint = f" ({availability.hint})" if availability.hint else ""
        return f"backend {DOCKER!r} is not usable here: {availability.reason}{hint}"
    if shutil.which("docker") is None:
        return "the docker CLI is not on PATH (the start row's baseline is a plain 'docker run')"
    import docker

    image = docker_image()
    client = docker.from_env(timeout=60)
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return (f"the Docker image {image!r} is not on the engine (pull or build it, or select another with "
                "$SANDBOXKIT_DOCKER_IMAGE; scripts/docker-engine.sh builds the test image)")
    finally:
        client.close()
    return None


def environment(image: str) -> dict[str, Any]:
    import docker

    client = docker.from_env(timeout=60)
    try:
        version = client.version()
        info = client.info()
        try:
            found = client.images.get(image)
            image_id, image_bytes = found.short_id, found.attrs.get("Size")
        except docker.errors.ImageNotFound:
            image_id = image_bytes = None
    finally:
        client.close()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sandboxkit": getattr(sandboxkit, "__version__", None) or _distribution_version("sandboxkit"),
        "docker_sdk": docker.__version__,
        "commit": _git_commit(),
        "engine": version.get("Version"),
        "engine_api": version.get("ApiVersion"),
        "engine_os": f"{version.get('Os')}/{version.get('Arch')}",
        "storage_driver": info.get("Driver"),
        "cgroup": f"{info.get('CgroupDriver')} v{info.get('CgroupVersion')}",
        "kernel": info.get("KernelVersion"),
        "image": image,
        "image_id": image_id,
        "image_mb": round(image_bytes / 1e6) if image_bytes else None,
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
    """Measure every row (or the rows named in ``only``); return the results as a dict.

    Needs a Docker engine (see :func:`engine_problem`)."""
    image = docker_image()
    results: dict[str, Any] = {"environment": environment(image), "quick": quick, "baselines": BASELINE_TEXT, "rows": {}}
    began = time.perf_counter()
    for row in ROWS:
        if only and row.key not in only:
            continue
        if progress:
            progress(f"measuring {row.label} ...")
        stats = measure(row, quick, image)
        docker_ms, baseline_ms = stats[DOCKER]["median_ms"], stats[row.baseline]["median_ms"]
        ratio, result = verdict(row, docker_ms, baseline_ms)
        results["rows"][row.key] = {
            "label": row.label,
            "baseline": row.baseline,
            "target": row.target_text,
            "ratio": ratio,
            "result": result,
            DOCKER: stats[DOCKER],
            "vs": stats[row.baseline],
        }
    results["elapsed_s"] = time.perf_counter() - began
    return results


def format_table(results: dict[str, Any]) -> str:
    env = results["environment"]
    header = ("measurement", "docker ms", "baseline ms", "ratio", "target", "result", "baseline")
    image = env["image"] + (f" ({env['image_id']}, {env['image_mb']} MB)" if env.get("image_id") else "")
    lines = [
        f"sandboxkit {env['sandboxkit']}" + (f" ({env['commit']})" if env.get("commit") else "")
        + ", docker backend, vs a plain docker run and the subprocess backend",
        f"Docker engine {env['engine']} (API {env['engine_api']}, {env['engine_os']}, {env['storage_driver']}, "
        f"cgroup {env['cgroup']}); Docker SDK {env['docker_sdk']}; image {image}",
        f"{env['date']}; Python {env['python']}; {env['cpus']} CPUs; {env['platform']}",
        "medians of samples interleaved in short blocks" + (" (QUICK RUN: too few samples to rely on)" if results["quick"] else ""),
        "",
    ]
    rows = [header]
    for row in results["rows"].values():
        rows.append((
            row["label"],
            f"{row[DOCKER]['median_ms']:.3f}",
            f"{row['vs']['median_ms']:.3f}",
            f"{row['ratio']:.3f}x",
            row["target"],
            row["result"],
            row["baseline"],
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:5], widths[1:5])] + [r[5].ljust(widths[5]), r[6]]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    used = dict.fromkeys(row["baseline"] for row in results["rows"].values())
    legend = ["", "baselines:"] + [f"  {name}: {results['baselines'][name]}" for name in used]
    spread = ["", "spread (p10 .. p90 ms, samples per side):"]
    for row in results["rows"].values():
        ours, vs = row[DOCKER], row["vs"]
        spread.append(
            f"  {row['label']}: docker {ours['p10_ms']:.3f} .. {ours['p90_ms']:.3f}; "
            f"{row['baseline']} {vs['p10_ms']:.3f} .. {vs['p90_ms']:.3f}; n={ours['n']}"
        )
    failed = [row["label"] for row in results["rows"].values() if row["result"] == "FAIL"]
    checked = [row for row in results["rows"].values() if row["result"] in ("PASS", "FAIL")]
    summary = (
        f"targets: {len(checked) - len(failed)} of {len(checked)} met"
        + (f"; MISSED: {', '.join(failed)}" if failed else "")
    )
    return "\n".join(lines + legend + spread + ["", summary, f"run took {results['elapsed_s']:.1f} s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few samples each (smoke test; numbers unreliable)")
    parser.add_argument("--json", metavar="PATH", help="also write the results (with every sample) as JSON")
    parser.add_argument("--only", metavar="KEY", action="append", choices=[row.key for row in ROWS],
                        help="measure only this row (repeatable)")
    args = parser.parse_args(argv)
    problem = engine_problem()
    if problem is not None:
        print(f"cannot run the docker benchmark: {problem}", file=sys.stderr)
        return 2
    results = run(args.quick, args.only, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(results), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

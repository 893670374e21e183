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
* ``... over attach`` (reported only): the execute and tool rows again with ``channel="attach"``,
  the engine's attach relay that remote and virtualised engines use (the rows above use the
  default, which on a local engine is the socket channel);
* ``echo floor`` (reported only, no sandboxkit protocol): one JSON line, the size of an execute
  request, written to a bare echo loop and read back with a blocking poll, in a container started
  by the docker backend with ``channel="attach"`` (so through the engine's attach relay) against
  the same loop in a local process over pipes: what the engine's relay costs by itself.

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

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import sandboxkit  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from benchlib import IDLE_MS, TOOL_LOOP_CALLS, Row, Side, echo, expect, timed  # noqa: E402

__all__ = ["ROWS", "main", "run"]

DOCKER = "docker"
DOCKER_ATTACH = "docker-attach"
DOCKER_RUN = "docker-run"
SUBPROCESS = "subprocess"
PIPE = "pipe"

#: Each row's ``baseline`` is the side the docker backend is compared with: DOCKER_RUN, SUBPROCESS
#: or PIPE; the only target kind is "ratio" (docker/baseline must be <= limit).
ROWS = (
    Row("start", "start (construct + start)", "ratio", 2.0, 50, 3, baseline=DOCKER_RUN),
    Row("execute", "execute x += 1", "ratio", 3.0, 400, 5, block=20, baseline=SUBPROCESS),
    Row("execute_idle", f"execute x += 1 after {IDLE_MS} ms idle", None, None, 60, 3, baseline=SUBPROCESS),
    Row("tool", "tool call f(1), whole execute", "ratio", 3.0, 300, 5, block=20, baseline=SUBPROCESS),
    Row("tool_per_call", f"tool per call ({TOOL_LOOP_CALLS} in one execute)", "ratio", 3.0, 40, 3, block=5,
        baseline=SUBPROCESS),
    Row("execute_attach", "execute x += 1, over attach", None, None, 400, 5, block=20, baseline=SUBPROCESS),
    Row("tool_attach", "tool call f(1), over attach", None, None, 300, 5, block=20, baseline=SUBPROCESS),
    Row("echo", "echo floor over attach: a JSON line, no sandboxkit", None, None, 400, 5, block=20,
        baseline=PIPE),
)
#: The docker side each row measures, where it is not the default options' DOCKER.
MEASURED = {"execute_attach": DOCKER_ATTACH, "tool_attach": DOCKER_ATTACH, "echo": DOCKER_ATTACH}

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


def docker_image() -> str:
    """The image the docker backend uses with its default options."""
    return sandboxkit.factory(DOCKER).backend_options.image


def make_interpreter(side: str) -> Any:
    interp = sandboxkit.interpreter(DOCKER, channel="attach") if side == DOCKER_ATTACH else sandboxkit.interpreter(side)
    interp.tools = {"f": echo}
    return interp


class EchoPeer:
    """The echo loop, reached without sandboxkit's protocol: in a container launched by the
    docker backend (its attach connection, demultiplexed), or in a local process over pipes."""

    def __init__(self, in_docker: bool) -> None:
        if in_docker:
            made = sandboxkit.factory(DOCKER, channel="attach")
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


# -- the samples only this benchmark takes (the others are in benchlib) ------------------------
class DockerSide(Side):
    """A side whose interpreters are made by :func:`make_interpreter` (DOCKER_ATTACH: the docker backend
    over attach); ``image`` is the docker image."""

    def __init__(self, name: str, image: str) -> None:
        super().__init__(name, lambda: make_interpreter(name))
        self.image = image


def sample_start(side: DockerSide, _state: dict[str, Any]) -> float:
    if side.name == DOCKER_RUN:
        argv = ["docker", "run", "--rm", "--network", "none", side.image, "true"]
        ms, done = timed(lambda: subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120))
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
        return ms
    return benchlib.time_start(side)


def sample_echo(side: Side, state: dict[str, Any]) -> float:
    peer = state.get("peer")
    if peer is None:
        peer = state["peer"] = EchoPeer(side.name == DOCKER_ATTACH)
        side.live.append(peer)
    ms, reply = timed(lambda: peer.round_trip(ECHO_LINE))
    expect(reply, ECHO_LINE, "the echoed line")
    return ms


SAMPLERS: dict[str, Callable[[Any, dict[str, Any]], float]] = {
    "start": sample_start,
    "execute": benchlib.sample_execute,
    "execute_idle": benchlib.sample_execute_idle,
    "tool": benchlib.sample_tool,
    "tool_per_call": benchlib.sample_tool_per_call,
    "execute_attach": benchlib.sample_execute,
    "tool_attach": benchlib.sample_tool,
    "echo": sample_echo,
}
WARMUP = {"start": 2, "execute": 20, "execute_idle": 2, "tool": 20, "tool_per_call": 2, "execute_attach": 20,
          "tool_attach": 20, "echo": 20}


# -- the run and the report -----------------------------------------------------------------
def measure(row: Row, quick: bool, image: str) -> dict[str, dict[str, Any]]:
    """The docker side's and the row's baseline's samples, interleaved (see :func:`benchlib.measure`),
    by side name; the docker side (whichever channel the row measures) under DOCKER."""
    measured = MEASURED.get(row.key, DOCKER)
    sides: dict[str, Side] = {name: DockerSide(name, image) for name in (measured, row.baseline)}
    stats = benchlib.measure(row, quick, sides, SAMPLERS[row.key], WARMUP[row.key])
    stats[DOCKER] = stats.pop(measured)
    return stats


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
        **benchlib.base_environment(),
        "sandboxkit": benchlib.sandboxkit_version(),
        "docker_sdk": docker.__version__,
        "commit": benchlib.git_commit(),
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


def run(quick: bool = False, only: list[str] | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every row (or the rows named in ``only``); return the results as a dict.

    Needs a Docker engine (see :func:`engine_problem`)."""
    image = docker_image()
    results: dict[str, Any] = {"environment": environment(image), "quick": quick, "baselines": BASELINE_TEXT, "rows": {}}

    def entry(row: Row) -> dict[str, Any]:
        stats = measure(row, quick, image)
        ratio, result = benchlib.verdict(row, stats[DOCKER]["median_ms"], stats[row.baseline]["median_ms"])
        return {
            "label": row.label,
            "baseline": row.baseline,
            "target": row.target_text,
            "ratio": ratio,
            "result": result,
            DOCKER: stats[DOCKER],
            "vs": stats[row.baseline],
        }

    return benchlib.run_rows(results, ROWS, only, progress, entry)


def format_table(results: dict[str, Any]) -> str:
    env = results["environment"]
    image = env["image"] + (f" ({env['image_id']}, {env['image_mb']} MB)" if env.get("image_id") else "")
    lines = benchlib.header_lines(results, ", docker backend, vs a plain docker run and the subprocess backend", [
        f"Docker engine {env['engine']} (API {env['engine_api']}, {env['engine_os']}, {env['storage_driver']}, "
        f"cgroup {env['cgroup']}); Docker SDK {env['docker_sdk']}; image {image}",
    ])
    lines += benchlib.table_lines(
        ("measurement", "docker ms", "baseline ms", "ratio", "target", "result", "baseline"),
        (benchlib.median_cells(entry, DOCKER, "vs") + (entry["baseline"],) for entry in results["rows"].values()),
    )
    used = dict.fromkeys(entry["baseline"] for entry in results["rows"].values())
    lines += ["", "baselines:"] + [f"  {name}: {results['baselines'][name]}" for name in used]
    lines += benchlib.spread_lines(results, lambda entry: (("docker", entry[DOCKER]), (entry["baseline"], entry["vs"])))
    return "\n".join(lines + benchlib.summary_lines(results))


def _precheck() -> str | None:
    problem = engine_problem()
    return None if problem is None else f"cannot run the docker benchmark: {problem}"


def main(argv: list[str] | None = None) -> int:
    return benchlib.main(__doc__, ROWS, run, format_table, argv, precheck=_precheck)


if __name__ == "__main__":
    sys.exit(main())

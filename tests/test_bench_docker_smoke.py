"""Smoke test of the docker benchmark: ``bench/bench_docker.py --quick`` runs to the end.

It checks that every measurement ran and was reported, and that the run left no container
behind, never how fast anything was (timings on a shared machine are not something a test can
assert). Needs a Docker engine, the backend's image and the docker CLI: without them the test
is skipped with the reason, except in CI (``CI=true``), where it fails (see docker_support).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from docker_support import docker_required, owned_containers
from sandboxkit.conformance.plugin import in_ci

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_docker.py"

ROWS = {
    # key: (label, baseline)
    "start": ("start (construct + start)", "docker-run"),
    "execute": ("execute x += 1", "subprocess"),
    "execute_idle": ("execute x += 1 after 20 ms idle", "subprocess"),
    "tool": ("tool call f(1), whole execute", "subprocess"),
    "tool_per_call": ("tool per call (100 in one execute)", "subprocess"),
    "execute_attach": ("execute x += 1, over attach", "subprocess"),
    "tool_attach": ("tool call f(1), over attach", "subprocess"),
    "echo": ("echo floor over attach: a JSON line, no sandboxkit", "pipe"),
}
CHECKED = {"start", "execute", "tool", "tool_per_call"}


def _skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI is set, and a docker test that skips in CI did not run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    client = docker_required()  # skips (or fails in CI) when no engine answers
    try:
        import docker

        import sandboxkit

        image = sandboxkit.factory("docker").backend_options.image
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            _skip_or_fail(f"the Docker image {image!r} is missing (set SANDBOXKIT_DOCKER_IMAGE or run "
                          "scripts/docker-engine.sh)")
        if shutil.which("docker") is None:
            _skip_or_fail("the docker CLI is not on PATH (the benchmark's baseline is a plain 'docker run')")

        results_path = tmp_path_factory.mktemp("bench") / "results.json"
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
        proc = subprocess.Popen(
            [sys.executable, str(BENCH), "--quick", "--json", str(results_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        assert proc.returncode == 0, f"benchmark failed ({proc.returncode}):\n{stdout}\n{stderr}"
        left = owned_containers(client, pid=proc.pid)
        for container in left:
            container.remove(force=True)
        assert not left, f"the benchmark left containers behind: {[c.name for c in left]}"
    finally:
        client.close()
    return stdout, json.loads(results_path.read_text(encoding="utf-8"))


def test_quick_run_prints_every_row_with_medians_ratio_target_and_verdict(quick_run) -> None:
    stdout, results = quick_run
    lines = stdout.splitlines()
    for key, (label, baseline) in ROWS.items():
        matching = [line for line in lines if line.startswith(label + "  ")]
        assert len(matching) == 1, f"row {label!r} missing from:\n{stdout}"
        cells = matching[0][len(label):].split()
        row = results["rows"][key]
        # The printed figures are the measured ones (the JSON holds them unrounded).
        assert cells[:3] == [f"{row['docker']['median_ms']:.3f}", f"{row['vs']['median_ms']:.3f}", f"{row['ratio']:.3f}x"]
        assert float(cells[0]) > 0 and float(cells[1]) > 0
        assert cells[-1] == baseline
        if key in CHECKED:
            assert cells[3:5] == ["<=", "2x" if key == "start" else "3x"], matching[0]
            assert cells[5] in {"PASS", "FAIL"}, matching[0]
        else:
            assert cells[3:5] == ["-", "info"], matching[0]
        spread = [line for line in lines if line.startswith(f"  {label}: docker ")]
        assert len(spread) == 1 and f"; {baseline} " in spread[0], f"no spread line for {label!r}"
    assert "QUICK RUN" in stdout
    assert "Docker engine " in stdout and "image " in stdout
    assert any(line.startswith("targets: ") and " of 4 met" in line for line in lines), stdout


def test_quick_run_writes_json_with_every_sample(quick_run) -> None:
    _, results = quick_run
    assert results["quick"] is True
    env = results["environment"]
    assert env["engine"] and env["image"] and env["image_id"]
    assert set(results["rows"]) == set(ROWS)
    for key, row in results["rows"].items():
        assert row["baseline"] == ROWS[key][1]
        for side in ("docker", "vs"):
            stats = row[side]
            assert stats["n"] == len(stats["samples_ms"]) >= 1, key
            assert stats["median_ms"] > 0 and all(ms > 0 for ms in stats["samples_ms"]), key
            assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"], key
        assert row["result"] in ({"PASS", "FAIL"} if key in CHECKED else {"info"})
        assert row["ratio"] == pytest.approx(row["docker"]["median_ms"] / row["vs"]["median_ms"])
        if row["result"] != "info":
            limit = 2.0 if key == "start" else 3.0
            assert row["result"] == ("PASS" if row["ratio"] <= limit else "FAIL"), key

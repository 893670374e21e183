"""Smoke test of the modal benchmark: ``bench/bench_modal.py --quick`` runs to the end.

It checks that every measurement ran and was reported with figures that agree with the JSON
results, and that sandboxkit sent the 10 MB document once while the tutorial's baseline sent it
on every iteration (a byte count, not a timing). It never asserts how fast anything was. Needs
the ``modal`` SDK (the benchmark starts its own emulator): without it the test is skipped, except
in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxkit.conformance.plugin import in_ci

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_modal.py"
TIMED = {"execute_rt": "execute x += 1", "tool_rt": "tool call print(f(1)), whole execute"}
QUICK_ITERATIONS = 3
DOCUMENT = 10_000_000


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    if importlib.util.find_spec("modal") is None:
        if in_ci():
            pytest.fail("the modal SDK is not importable; CI is set, and the modal benchmark must run there",
                        pytrace=False)
        pytest.skip("the modal SDK is not importable (install sandboxkit[modal])")
    results_path = tmp_path_factory.mktemp("bench") / "results.json"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--json", str(results_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, f"benchmark failed ({proc.returncode}):\n{stdout}\n{stderr}"
    return stdout, json.loads(results_path.read_text(encoding="utf-8"))


def test_quick_run_prints_each_timed_row_with_medians_and_ratio(quick_run) -> None:
    stdout, results = quick_run
    lines = stdout.splitlines()
    for key, label in TIMED.items():
        matching = [line for line in lines if line.startswith(label + "  ")]
        assert len(matching) == 1, f"row {label!r} missing from:\n{stdout}"
        cells = matching[0][len(label):].split()
        row = results["rows"][key]
        assert cells == [f"{row['modal']['median_ms']:.3f}", f"{row['vs']['median_ms']:.3f}",
                         f"{row['ratio']:.3f}x", "<=", "1x", row["result"]], matching[0]
        assert row["ratio"] == pytest.approx(row["modal"]["median_ms"] / row["vs"]["median_ms"])
        assert row["result"] == ("PASS" if row["ratio"] <= 1.0 else "FAIL")
        # The means: a line of their own, against the same target.
        mean = row["mean"]
        assert mean["ratio"] == pytest.approx(row["modal"]["mean_ms"] / row["vs"]["mean_ms"])
        assert mean["result"] == ("PASS" if mean["ratio"] <= 1.0 else "FAIL")
        mean_lines = [line for line in lines if line.startswith(label + ", mean  ")]
        assert len(mean_lines) == 1, f"no mean line for {label!r}"
        assert mean_lines[0][len(label + ", mean"):].split() == [
            f"{row['modal']['mean_ms']:.3f}", f"{row['vs']['mean_ms']:.3f}", f"{mean['ratio']:.3f}x", "<=", "1x",
            mean["result"]]
        for side in ("modal", "vs"):
            stats = row[side]
            assert stats["n"] == len(stats["samples_ms"]) >= 1, key
            assert all(ms > 0 for ms in stats["samples_ms"]), key
            assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"], key
        spread = [line for line in lines if line.startswith(f"  {label}: sandboxkit ")]
        assert len(spread) == 1 and "; tutorial " in spread[0], f"no spread line for {label!r}"
    assert "QUICK RUN" in stdout and "modal SDK " in stdout


def test_quick_run_reports_document_bytes_sent_once_against_every_time(quick_run) -> None:
    stdout, results = quick_run
    row = results["rows"]["document_bytes"]
    ours, theirs = row["modal"]["bytes"], row["vs"]["bytes"]
    assert row["document_bytes"] == DOCUMENT
    assert row["modal"]["iterations"] == row["vs"]["iterations"] == QUICK_ITERATIONS
    # sandboxkit sends the document once; the baseline re-sends it with every execute.
    assert DOCUMENT <= ours < 1.5 * DOCUMENT
    assert theirs >= QUICK_ITERATIONS * DOCUMENT
    assert row["result"] == "PASS"
    assert row["ratio"] == pytest.approx(ours / theirs)
    assert f"bytes sent: 10 MB document, {QUICK_ITERATIONS} iterations (document {DOCUMENT:,} B):" in stdout
    assert f"  sandboxkit  {ours:>13,} B  ({ours / DOCUMENT:.2f} documents;" in stdout
    assert f"  tutorial    {theirs:>13,} B  ({theirs / DOCUMENT:.2f} documents;" in stdout
    assert f"  ratio sandboxkit/tutorial {row['ratio']:.3f}x; target < 1.5 documents: PASS" in stdout
    # The document target, plus a median and a mean target for each timed row.
    assert any(line.startswith("targets: ") and " of 5 met" in line for line in stdout.splitlines())
